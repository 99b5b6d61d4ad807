"""Loupe's view of a vector store: ids, schemas, payload merging, filters.

Everything Loupe-specific lives here, above the thin `VectorStore`, so the embedded (Edge)
and server (Qdrant) backends behave identically.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from encoders.errors import BatchInvalid, InvalidInput, ModelMismatch, NotFound
from indexing import user_filter
from indexing.ids import item_key, point_id
from indexing.payloads import NewItem, build_payload, check_item, meta_types
from indexing.types import CollectionSchema, Condition, Filter, Modality, Point, VectorStore

__all__ = ["Index", "NewItem"]

# Also a folder name in the Edge backend and part of point ids: no "/", nothing hidden.
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Info-blob key prefix under which user metadata field types are recorded, one key per
# field so concurrent writers recording different fields cannot overwrite each other.
_FIELD_PREFIX = "field:"
_MAX_LISTED = 10


class Index:
    """Collections of Loupe items over any `VectorStore`. Thread-safe."""

    def __init__(self, store: VectorStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._schemas: dict[str, CollectionSchema] = {}
        self._fields: dict[str, dict[str, frozenset[str]]] = {}
        # Upserts read, merge and write back; deletes check then delete. Serialising writes
        # keeps both correct within this process (the Edge store's only process).
        self._write_lock = threading.RLock()

    @property
    def store(self) -> VectorStore:
        return self._store

    def close(self) -> None:
        self._store.close()

    # -- collections -----------------------------------------------------------------------

    def ensure_collection(self, name: str, schema: CollectionSchema) -> None:
        """Create `name` for `schema` if missing; ModelMismatch if it was built otherwise."""
        _check_name(name)
        if schema.dim <= 0 or not schema.vector_name or not schema.model_id:
            raise InvalidInput(f"invalid collection schema {schema}", field="schema")
        stored = self._lookup(name)
        if stored is None:
            self._store.create_collection(name, schema)
            # Re-read: another process may have created it first with another model.
            stored = self._store.get_schema(name)
            if stored is None:
                raise NotFound(f"collection {name!r} vanished right after being created", field="collection")
            self._schemas[name] = stored
        _compare(name, stored, schema)

    def require_collection(self, name: str, schema: CollectionSchema) -> None:
        """NotFound if `name` is missing; ModelMismatch if it was built by another model."""
        _compare(name, self.schema(name), schema)

    def schema(self, name: str) -> CollectionSchema:
        """The schema `name` was built with; NotFound (listing existing ones) if missing."""
        _check_name(name)
        stored = self._lookup(name)
        if stored is None:
            existing = ", ".join(repr(n) for n in self._store.list_collections()) or "none"
            raise NotFound(f"collection {name!r} does not exist; existing collections: {existing}", field="collection")
        return stored

    def collections(self) -> list[tuple[str, CollectionSchema, int]]:
        """(name, schema, point count) of every collection, by name."""
        out = []
        for name in sorted(self._store.list_collections()):
            schema = self._lookup(name)
            if schema is not None:
                out.append((name, schema, self._store.count(name)))
        return out

    def optimize(self, name: str) -> bool:
        """Build vector indexes now (Edge needs this after bulk loads; a server does it alone)."""
        self.schema(name)
        return self._store.optimize(name)

    # -- writing ---------------------------------------------------------------------------

    def upsert(self, name: str, items: Sequence[NewItem], schema: CollectionSchema) -> list[tuple[str, bool]]:
        """Store items; return (public id, created) per item, in order.

        Existing points keep created_at, get sources unioned and metadata merged (new keys
        win); vectors are replaced. Nothing is stored if any item is invalid.
        """
        # Items first, so a rejected request leaves no trace, not even a new collection.
        problems = [p for i, item in enumerate(items) for p in check_item(item, i, schema)]
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise BatchInvalid(problems)
        self.ensure_collection(name, schema)
        if not items:
            return []
        keys = [item_key(item.public_id, item.sha256) for item in items]
        pids = [point_id(name, key) for key in keys]
        with self._write_lock:
            existing = {p.point_id: p.payload for p in self._store.retrieve(name, list(dict.fromkeys(pids)))}
            now = self._clock()
            merged: dict[str, Point] = {}
            results: list[tuple[str, bool]] = []
            for item, key, pid in zip(items, keys, pids, strict=True):
                # A second item with the same key in one batch merges into the first.
                previous = merged[pid].payload if pid in merged else existing.get(pid)
                payload = build_payload(item, key, schema, previous, now)
                merged[pid] = Point(point_id=pid, vector=np.asarray(item.vector, np.float32), payload=payload)
                results.append((key, previous is None))
            # Fields first: a crash in between leaves a known field without values, which
            # is harmless, rather than values no filter may name.
            self._record_fields(name, items)
            self._store.upsert(name, list(merged.values()))
        return results

    def delete_ids(self, name: str, ids: Iterable[str]) -> int:
        """Delete items by public id; if any is missing, NotFound naming them and nothing deleted."""
        self.schema(name)
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        pids = {point_id(name, public_id): public_id for public_id in wanted}
        with self._write_lock:
            found = {p.point_id for p in self._store.retrieve(name, list(pids))}
            missing = [public_id for pid, public_id in pids.items() if pid not in found]
            if missing:
                raise NotFound(
                    f"{len(missing)} of {len(wanted)} id(s) not in collection {name!r}, nothing deleted: "
                    + _listing(missing),
                    field="ids",
                )
            self._store.delete(name, list(pids))
        return len(wanted)

    def delete_where(self, name: str, filter: Filter) -> int:
        """Delete every item matching `filter` (a resolved one); return how many."""
        self.schema(name)
        if filter is None or filter.is_empty():
            # Almost always a client bug; deleting a whole collection deserves its own call.
            raise InvalidInput("refusing to delete with an empty filter (it matches everything)", field="filter")
        with self._write_lock:
            return self._store.delete_by_filter(name, filter)

    # -- reading ---------------------------------------------------------------------------

    def search(
        self,
        name: str,
        vector: np.ndarray,
        *,
        limit: int,
        offset: int = 0,
        modalities: tuple[Modality, ...] = (),
        filter: Filter | None = None,
        score_threshold: float | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[tuple[dict[str, Any], float]]:
        """(payload, cosine score) of the nearest items, best first."""
        schema = self.schema(name)
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (schema.dim,) or not np.all(np.isfinite(vector)):
            raise InvalidInput(
                f"query vector must be {schema.dim} finite numbers for collection {name!r}, got shape {vector.shape}",
                field="vector",
            )
        if limit < 1 or offset < 0:
            raise InvalidInput(f"limit must be >= 1 and offset >= 0 (got {limit}, {offset})", field="limit")
        scoped = _scoped(filter, modalities)
        if exclude_ids:
            scoped = (scoped or Filter()).and_not(Condition(key="id", any_of=tuple(exclude_ids)))
        hits = self._store.search(
            name, vector, limit=limit, offset=offset, filter=scoped, score_threshold=score_threshold
        )
        return [(hit.payload, hit.score) for hit in hits]

    def get(self, name: str, public_id: str) -> dict[str, Any]:
        return self._get(name, public_id, with_vector=False).payload

    def get_vector(self, name: str, public_id: str) -> tuple[dict[str, Any], np.ndarray]:
        point = self._get(name, public_id, with_vector=True)
        if point.vector is None:
            raise NotFound(f"item {public_id!r} in collection {name!r} has no vector", field="id")
        return point.payload, point.vector

    def count(self, name: str, filter: Filter | None = None, modalities: tuple[Modality, ...] = ()) -> int:
        self.schema(name)
        return self._store.count(name, _scoped(filter, modalities))

    def resolve_filter(self, name: str, user_conditions: Sequence[Condition]) -> Filter:
        """Map user-facing field names ("colour", "source") to payload keys and check values.

        Raises InvalidInput for an unknown field (listing the known ones), a range on a
        non-numeric field, a list given to equals, or a value of the wrong type.
        """
        self.schema(name)
        resolved, unknown = user_filter.resolve(user_conditions, self._meta_fields(name))
        if unknown:
            # Another process may have recorded the field since we cached; look once more.
            fields = self._meta_fields(name, refresh=True)
            resolved, unknown = user_filter.resolve(user_conditions, fields)
            if unknown:
                field_name, at = unknown[0]
                raise user_filter.unknown_field(field_name, fields, at)
        return resolved

    def meta_fields(self, name: str) -> dict[str, frozenset[str]]:
        """User metadata fields seen in `name` and their value types ("str", "int", ...)."""
        self.schema(name)
        return dict(self._meta_fields(name))

    # -- internals -------------------------------------------------------------------------

    def _lookup(self, name: str) -> CollectionSchema | None:
        # Schemas never change for a name (a different model needs another collection), so
        # one read per process is enough.
        if name not in self._schemas:
            stored = self._store.get_schema(name)
            if stored is None:
                return None
            self._schemas[name] = stored
        return self._schemas[name]

    def _get(self, name: str, public_id: str, *, with_vector: bool) -> Point:
        self.schema(name)
        if not isinstance(public_id, str) or not public_id:
            raise InvalidInput("id must be a non-empty string", field="id")
        points = self._store.retrieve(name, [point_id(name, public_id)], with_vectors=with_vector)
        if not points:
            raise NotFound(f"no item with id {public_id!r} in collection {name!r}", field="id")
        return points[0]

    def _meta_fields(self, name: str, *, refresh: bool = False) -> dict[str, frozenset[str]]:
        if refresh or name not in self._fields:
            info = self._store.get_info(name)
            self._fields[name] = {
                k[len(_FIELD_PREFIX) :]: frozenset(v) for k, v in info.items() if k.startswith(_FIELD_PREFIX)
            }
        return self._fields[name]

    def _record_fields(self, name: str, items: Sequence[NewItem]) -> None:
        known = self._meta_fields(name)
        seen: dict[str, set[str]] = {}
        for item in items:
            for field_name, types in meta_types(item.metadata).items():
                seen.setdefault(field_name, set()).update(types)
        patch = {
            _FIELD_PREFIX + f: sorted(types | known.get(f, frozenset()))
            for f, types in seen.items()
            if f not in known or not types <= known[f]
        }
        if patch:
            self._store.update_info(name, patch)
            self._fields[name] = {**known, **{k[len(_FIELD_PREFIX) :]: frozenset(v) for k, v in patch.items()}}


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _COLLECTION_NAME.match(name):
        raise InvalidInput(
            f"collection name {name!r} must be 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit",
            field="collection",
        )


def _compare(name: str, stored: CollectionSchema, wanted: CollectionSchema) -> None:
    if (stored.model_id, stored.model_version, stored.dim, stored.vector_name) == (
        wanted.model_id,
        wanted.model_version,
        wanted.dim,
        wanted.vector_name,
    ):
        return
    built_by = (
        f"{stored.model_id} (version {stored.model_version}, dim {stored.dim})"
        if stored.model_id
        else ("an unknown model (the collection was not created by Loupe)")
    )
    raise ModelMismatch(
        f"collection {name!r} was built by {built_by}, but this request uses {wanted.model_id} "
        f"(version {wanted.model_version}, dim {wanted.dim}); vectors of different models are not comparable: "
        "use another collection for this model, or re-index the collection's content with it",
        field="collection",
    )


def _scoped(filter: Filter | None, modalities: tuple[Modality, ...]) -> Filter | None:
    if modalities:
        try:
            values = tuple(dict.fromkeys(Modality(m).value for m in modalities))
        except ValueError as e:
            known = ", ".join(m.value for m in Modality)
            raise InvalidInput(f"unknown modality in {modalities!r}; known: {known}", field="modalities") from e
        filter = (filter or Filter()).and_(Condition(key="modality", any_of=values))
    return None if filter is None or filter.is_empty() else filter


def _listing(values: list[str]) -> str:
    shown = ", ".join(repr(v) for v in values[:_MAX_LISTED])
    return shown + (f" and {len(values) - _MAX_LISTED} more" if len(values) > _MAX_LISTED else "")
