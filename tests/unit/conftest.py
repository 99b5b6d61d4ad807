"""Shared by the store suites: every backend, deterministic time, reopening an Index.

With QDRANT_URL set (a throwaway Qdrant server: the suite deletes every collection on it
before each test), the same suites also run against that server as backend "qdrant-server";
without it the run's header and one skipped test (test_store_congruence) say so.
"""

from __future__ import annotations

import itertools
import os

import pytest

from indexing.index import Index
from indexing.store.edge import EdgeStore
from indexing.store.qdrant import QdrantStore

QDRANT_URL = os.environ.get("QDRANT_URL")
NO_SERVER = "QDRANT_URL is not set: the store suites ran on Qdrant Edge and qdrant-client local mode, not a real server"


_WIPED: set[str] = set()


def _server_store(path) -> QdrantStore:
    store = QdrantStore(url=QDRANT_URL, api_key=os.environ.get("QDRANT_API_KEY"))
    if str(path) not in _WIPED:  # a test starts from an empty server; reopening keeps its data
        _WIPED.add(str(path))
        for name in store.list_collections():
            store._client.delete_collection(name)
    return store


BACKENDS = {
    "edge": lambda path: EdgeStore(str(path / "edge")),
    "qdrant-local": lambda path: QdrantStore(path=str(path / "qdrant")),
}
if QDRANT_URL:
    BACKENDS["qdrant-server"] = _server_store


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
    if opened:  # a skipped backend opened nothing
        opened[-1].close()
