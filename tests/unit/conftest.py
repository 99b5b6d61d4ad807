"""Shared by the store suites: both backends, deterministic time, reopening an Index."""

from __future__ import annotations

import itertools

import pytest

from indexing.index import Index
from indexing.store.edge import EdgeStore
from indexing.store.qdrant import QdrantStore

BACKENDS = {
    "edge": lambda path: EdgeStore(str(path / "edge")),
    "qdrant-local": lambda path: QdrantStore(path=str(path / "qdrant")),
}


class Clock:
    """Deterministic time: each call is one second later."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1_700_000_000)

    def __call__(self) -> float:
        return float(next(self._ticks))


@pytest.fixture(params=sorted(BACKENDS))
def reopen(request, tmp_path):
    """Returns a function giving a fresh Index over the same data (closing the previous)."""
    opened: list[Index] = []

    def _open() -> Index:
        if opened:
            opened[-1].close()
        opened.append(Index(BACKENDS[request.param](tmp_path), clock=Clock()))
        return opened[-1]

    yield _open
    opened[-1].close()
