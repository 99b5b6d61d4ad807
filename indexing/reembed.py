"""The `Index` methods a re-embedding batch job uses: managing a collection's vectors
(adding, completing, switching, dropping; see `indexing.vectors`), finding the points a
vector still lacks, and telling which items need encoding at all.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from encoders.common.errors import BatchInvalid, InvalidInput, NotFound
from indexing.ids import point_id
from indexing.payloads import check_update, merge_update
from indexing.types import CollectionSchema, Condition, Filter, HasVector, VectorSpec, VectorStore
from indexing.vectors import VectorRegistry, missing, versions_kept

# Keys per id-filtered read, so one request stays a modest size.
_KEYS_PER_READ = 1000
_MAX_LISTED = 10


class ReembedMethods:
    """Mixed into `Index`, whose state and checks these methods use."""

    _store: VectorStore
    _vectors: VectorRegistry
    _write_lock: threading.RLock
    _clock: Callable[[], float]
    schema: Callable[[str], CollectionSchema]
    schema_for: Callable[[str, CollectionSchema], CollectionSchema]
    _record_fields: Callable[[str, Sequence[dict[str, Any]]], None]

    # -- vectors ---------------------------------------------------------------------------

    def vectors(self, name: str) -> list[VectorSpec]:
        """Every dense vector of `name` and the model that built it, active first."""
        self.schema(name)
        return list(self._vectors.specs(name, refresh=True) or [])

    def add_vector(self, name: str, schema: CollectionSchema) -> VectorSpec:
        """Add an empty, incomplete vector `schema.vector_name` for `schema`'s model; the
        existing one if it is already there for that model. ModelMismatch if the name is
        taken by another model, VectorStateConflict if another vector has this model."""
        self.schema(name)
        with self._write_lock:
            return self._vectors.add(name, schema)

    def mark_complete(self, name: str, vector_name: str) -> None:
        """Record that every point has `vector_name`; VectorStateConflict if some lack it."""
        self.schema(name)
        with self._write_lock:
            self._vectors.mark_complete(name, vector_name)

    def switch_vector(self, name: str, vector_name: str) -> None:
        """Make a complete vector the active one; the previous one stays as it is."""
        self.schema(name)
        with self._write_lock:
            self._vectors.switch(name, vector_name)
            self.mark_changed(name)

    def drop_vector(self, name: str, vector_name: str) -> None:
        """Delete a vector that is not the active one, values included."""
        self.schema(name)
        with self._write_lock:
            self._vectors.drop(name, vector_name)
            self.mark_changed(name)

    def missing_vector(
        self, name: str, vector_name: str, limit: int, after: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Payloads of up to `limit` points without `vector_name`, from cursor `after`;
        with the cursor of the next page, or None after the last. Points filled meanwhile
        drop out of later pages; none is skipped."""
        self.schema(name)
        self._vectors.spec(name, vector_name)
        if not isinstance(limit, int) or limit < 1:
            raise InvalidInput(f"limit must be >= 1, got {limit!r}", field="limit")
        if after is not None:
            _check_cursor(after)
        points, cursor = self._store.scroll(name, filter=missing(vector_name), limit=limit, after=after)
        return [p.payload for p in points], cursor

    def count_missing_vector(self, name: str, vector_name: str) -> int:
        self.schema(name)
        self._vectors.spec(name, vector_name)
        return self._vectors.count_missing(name, vector_name)

    # -- what a batch job asks -----------------------------------------------------------

    def existing(self, name: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Public id -> payload of those of `keys` that are stored."""
        self.schema(name)
        wanted = _check_keys(keys)
        points = self._store.retrieve(name, [point_id(name, key) for key in wanted]) if wanted else []
        return {p.payload["id"]: p.payload for p in points}

    def encoded(self, name: str, keys: Sequence[str], schema: CollectionSchema) -> dict[str, dict[str, Any]]:
        """Public id -> payload of those of `keys` that are stored with a vector from
        `schema`'s model version (in the vector `schema_for` picks): the ones a batch job
        need not encode again."""
        target = self.schema_for(name, schema)
        specs = self._vectors.specs(name) or []
        wanted = _check_keys(keys)
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), _KEYS_PER_READ):
            chunk = tuple(wanted[start : start + _KEYS_PER_READ])
            # The vector itself must be there: a `vectors` entry outlives a vector that was
            # dropped and added again under the same name.
            having = Filter(must=(Condition(key="id", any_of=chunk), HasVector(target.vector_name)))
            points, _ = self._store.scroll(name, filter=having, limit=len(chunk))
            for p in points:
                versions = versions_kept(p.payload, {target.vector_name}, specs)
                if versions.get(target.vector_name) == target.model_version:
                    found[p.payload["id"]] = p.payload
        return found

    def merge_payload(self, name: str, key: str, source: str | None, metadata: dict[str, Any]) -> bool:
        """Add `source` to a stored item's sources and merge `metadata` into its own (new
        keys win), vectors untouched; True if that changed anything (nothing is written
        otherwise). NotFound if there is no item `key`."""
        return self.merge_payloads(name, [(key, source, metadata)])[0]

    def merge_payloads(self, name: str, updates: Sequence[tuple[str, str | None, dict[str, Any]]]) -> list[bool]:
        """`merge_payload` for many items, with one read and one write; nothing is written
        if any key is missing (NotFound naming them) or any update is invalid."""
        self.schema(name)
        problems = []
        for i, (key, source, metadata) in enumerate(updates):
            if not isinstance(key, str) or not key:
                problems.append(InvalidInput("key must be a non-empty string", field=f"updates[{i}].key"))
            problems += check_update(source, metadata, f"updates[{i}]")
        _raise_all(problems)
        if not updates:
            return []
        pids = [point_id(name, key) for key, _, _ in updates]
        with self._write_lock:
            stored = {p.point_id: p.payload for p in self._store.retrieve(name, list(dict.fromkeys(pids)))}
            absent = list(dict.fromkeys(key for (key, _, _), pid in zip(updates, pids) if pid not in stored))
            if absent:
                raise NotFound(
                    f"{len(absent)} key(s) not in collection {name!r}, nothing updated: " + _listing(absent),
                    field="updates",
                )
            now = self._clock()
            changed: dict[str, dict[str, Any]] = {}
            results = []
            for (_, source, metadata), pid in zip(updates, pids):
                merged = merge_update(changed.get(pid) or stored[pid], source, metadata, now)
                results.append(merged is not None)
                if merged is not None:
                    changed[pid] = merged
            if changed:
                self._record_fields(name, [metadata for (_, _, metadata), done in zip(updates, results) if done])
                self._store.overwrite_payloads(name, changed)
                self.mark_changed(name)
        return results


def _check_keys(keys: Sequence[str]) -> list[str]:
    if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
        raise InvalidInput("keys must be a list of non-empty strings", field="keys")
    return list(dict.fromkeys(keys))


def _check_cursor(after: Any) -> None:
    # Cursors are point ids; anything else would reach the store as a bad request.
    try:
        uuid.UUID(after)
    except (TypeError, ValueError, AttributeError):
        raise InvalidInput(f"cursor {after!r} is not one a page returned", field="after") from None


def _raise_all(problems: list[InvalidInput]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise BatchInvalid(problems)


def _listing(values: list[str]) -> str:
    shown = ", ".join(repr(v) for v in values[:_MAX_LISTED])
    return shown + (f" and {len(values) - _MAX_LISTED} more" if len(values) > _MAX_LISTED else "")
