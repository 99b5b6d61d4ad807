"""Loupe's view of a vector store: ids, schemas, payload merging, filters, search modes.

Everything Loupe-specific lives here, above the thin `VectorStore`, so the embedded (Edge)
and server (Qdrant) backends behave identically.

Search modes (`Index.search(mode=...)`) and what their scores mean:

    "dense"    CLIP vector, cosine similarity in -1..1. `score_threshold` is a minimum cosine.
    "keyword"  keyword (sparse) vector only: BM25 score, the sum over query terms found in the
               item of IDF x the item's saturated term frequency (`encoders.keywords`); > 0,
               unbounded, comparable only within one collection. Items sharing no term with
               the query (and items without keywords) are never returned.
               `score_threshold` is a minimum BM25 score.
    "hybrid"   both rankings fused by reciprocal rank fusion: each item scores
               sum over the two rankings of 1 / (RRF_K + rank), rank from 0, RRF_K = 60.
               Top of both rankings: 2/60 = 0.0333; top of one and absent from the other:
               1/60 = 0.0167. The score says where an item ranked, not how similar it is.
               Each ranking is the top `max(offset + limit, HYBRID_CANDIDATES)` items after
               filters, so pages stay consistent while offset + limit <= HYBRID_CANDIDATES.
               `score_threshold` is the minimum *cosine* an item needs to enter through the
               dense ranking (the same scale as in dense mode); keyword matches enter
               regardless. There is no threshold on the fused score.

Filters, modalities and exclude_ids restrict every ranking in every mode.

Equal scores (common in keyword search over similar texts, and in RRF) are ordered by
public id, so pages never overlap or skip items: a store returns tied items in arbitrary,
limit-dependent order (Qdrant Edge repeats one tied item on every page), so when a tie
crosses a page boundary the ranking is re-read from the top, up to `_TIE_WINDOW` items.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from encoders.errors import BatchInvalid, InvalidInput, ModelMismatch, NotFound
from encoders.keywords import SparseVector
from indexing import user_filter
from indexing.ids import item_key, point_id
from indexing.payloads import NewItem, build_payload, check_item, meta_types
from indexing.types import (
    RRF_K,
    CollectionSchema,
    Condition,
    Filter,
    Modality,
    Point,
    ScoredPoint,
    SearchMode,
    VectorStore,
    keywords_unavailable,
)

__all__ = ["HYBRID_CANDIDATES", "Index", "NewItem", "SearchMode"]

# Also a folder name in the Edge backend and part of point ids: no "/", nothing hidden.
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Info-blob key prefix under which user metadata field types are recorded, one key per
# field so concurrent writers recording different fields cannot overwrite each other.
_FIELD_PREFIX = "field:"
_MAX_LISTED = 10
# Items each ranking contributes to a hybrid search (at least offset + limit).
HYBRID_CANDIDATES = 100
_MODES = tuple(m.value for m in SearchMode)
# Most items read to order a group of equal scores that crosses a page boundary; beyond it,
# which members of a larger tie group make the page is up to the store.
_TIE_WINDOW = 2000


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
        win); vectors are replaced, the keyword vector too (an item given without keywords
        loses them). Nothing is stored if any item is invalid. In a collection created
        without a keyword vector (`schema(name).keyword_vector is None`) keywords are not
        stored.
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
                merged[pid] = Point(
                    point_id=pid,
                    vector=np.asarray(item.vector, np.float32),
                    payload=payload,
                    keywords=item.keywords if item.keywords else None,
                )
                results.append((key, previous is None))
            # Fields first: a crash in between leaves a known field without values, which
            # is harmless, rather than values no filter may name.
            self._record_fields(name, items)
            self._store.upsert(name, list(merged.values()))
        return results

    def delete_ids(self, name: str, ids: Iterable[str]) -> int:
        """Delete items by public id, and every item whose parent_id is one of them (a
        recording's segments); return how many were deleted, children included.

        If any id is missing: NotFound naming them, and nothing deleted. Children go first,
        so a crash in between leaves the parent, and deleting it again finishes the job.
        One level only: children of children are not followed.
        """
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
            # Children that are themselves being deleted are counted once, as parents.
            children = Filter(
                must=(Condition(key="parent_id", any_of=tuple(wanted)),),
                must_not=(Condition(key="id", any_of=tuple(wanted)),),
            )
            n_children = self._store.delete_by_filter(name, children)
            self._store.delete(name, list(pids))
        return len(wanted) + n_children

    def delete_children(self, name: str, parent_id: str) -> int:
        """Delete every item whose parent_id is `parent_id` (a recording's segments, before
        re-indexing changed content); return how many. The parent itself is kept, and need
        not exist (orphans are deleted too)."""
        self.schema(name)
        if not isinstance(parent_id, str) or not parent_id:
            raise InvalidInput("parent_id must be a non-empty string", field="parent_id")
        with self._write_lock:
            return self._store.delete_by_filter(name, Filter(must=(Condition(key="parent_id", equals=parent_id),)))

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
        vector: np.ndarray | None,
        *,
        limit: int,
        offset: int = 0,
        modalities: tuple[Modality, ...] = (),
        filter: Filter | None = None,
        score_threshold: float | None = None,
        exclude_ids: Sequence[str] = (),
        mode: str = SearchMode.DENSE.value,
        keyword_query: SparseVector | None = None,
    ) -> list[tuple[dict[str, Any], float]]:
        """(payload, score) of the best items, best first; see the module docstring for
        what score and score_threshold mean in each mode.

        `vector` (CLIP) is needed in "dense" and "hybrid" mode, ignored (may be None) in
        "keyword" mode; `keyword_query` (`encoders.keywords.query_vector`) is needed in
        "keyword" and "hybrid" mode. Keyword and hybrid search on a collection created
        without a keyword vector raise KeywordsUnavailable (a ModelMismatch).
        """
        schema = self.schema(name)
        mode = _check_mode(mode)
        if limit < 1 or offset < 0:
            raise InvalidInput(f"limit must be >= 1 and offset >= 0 (got {limit}, {offset})", field="limit")
        if score_threshold is not None and not (
            isinstance(score_threshold, (int, float, np.number)) and np.isfinite(score_threshold)
        ):
            raise InvalidInput(
                f"score_threshold must be a finite number, got {score_threshold!r}", field="score_threshold"
            )
        if mode != SearchMode.KEYWORD:
            vector = _check_query_vector(vector, schema, name)
        if mode != SearchMode.DENSE:
            if not schema.keyword_vector:
                raise keywords_unavailable(name)
            keyword_query = _check_keyword_query(keyword_query, mode)
        scoped = _scoped(filter, modalities)
        if exclude_ids:
            scoped = (scoped or Filter()).and_not(Condition(key="id", any_of=tuple(exclude_ids)))
        if mode == SearchMode.DENSE:

            def fetch(n: int, skip: int) -> list[ScoredPoint]:
                return self._store.search(
                    name, vector, limit=n, offset=skip, filter=scoped, score_threshold=score_threshold
                )

        elif mode == SearchMode.KEYWORD:

            def fetch(n: int, skip: int) -> list[ScoredPoint]:
                return self._store.search_keywords(
                    name, keyword_query, limit=n, offset=skip, filter=scoped, score_threshold=score_threshold
                )

        else:
            # Fixed by the page asked for, not by how much `_page` reads, so both rankings
            # are the same for every read of one page.
            candidates = max(offset + limit, HYBRID_CANDIDATES)

            def fetch(n: int, skip: int) -> list[ScoredPoint]:
                return self._store.search_hybrid(
                    name,
                    vector,
                    keyword_query,
                    limit=n,
                    offset=skip,
                    filter=scoped,
                    dense_threshold=score_threshold,
                    candidates=candidates,
                    rrf_k=RRF_K,
                )

        return [(hit.payload, hit.score) for hit in _page(fetch, offset, limit)]

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


def _page(fetch: Callable[[int, int], list[ScoredPoint]], offset: int, limit: int) -> list[ScoredPoint]:
    """Hits offset..offset+limit of the ranking by score, then public id.

    One read normally: from one before the page to one after it, which shows whether a
    group of equal scores crosses either end. Only then is the ranking read from the top,
    far enough to hold the whole group, and sorted.
    """
    end = offset + limit
    start = max(offset - 1, 0)
    hits = fetch(end + 1 - start, start)
    lead = offset - start  # 1 if hits[0] is the item before the page
    tie_at_start = lead == 1 and len(hits) > 1 and hits[0].score == hits[1].score
    tie_at_end = len(hits) == end + 1 - start and hits[-1].score == hits[-2].score
    if not (tie_at_start or tie_at_end):
        return sorted(hits[lead:], key=_rank_key)[:limit]
    n = end + 1
    while True:
        hits = fetch(n, 0)
        if len(hits) < n or hits[-1].score != hits[end - 1].score or n >= _TIE_WINDOW:
            break
        n = min(n * 4, _TIE_WINDOW)
    return sorted(hits, key=_rank_key)[offset:end]


def _rank_key(hit: ScoredPoint) -> tuple[float, str]:
    return (-hit.score, str(hit.payload.get("id", hit.point_id)))


def _check_mode(mode: Any) -> SearchMode:
    try:
        return SearchMode(mode)
    except ValueError:
        raise InvalidInput(f"unknown search mode {mode!r}; valid modes: {', '.join(_MODES)}", field="mode") from None


def _check_query_vector(vector: Any, schema: CollectionSchema, name: str) -> np.ndarray:
    if vector is None:
        raise InvalidInput("a query vector is needed for dense and hybrid search", field="vector")
    vector = np.asarray(vector, dtype=np.float32)
    if vector.shape != (schema.dim,) or not np.all(np.isfinite(vector)):
        raise InvalidInput(
            f"query vector must be {schema.dim} finite numbers for collection {name!r}, got shape {vector.shape}",
            field="vector",
        )
    return vector


def _check_keyword_query(query: Any, mode: SearchMode) -> SparseVector:
    if query is None:
        raise InvalidInput(f"{mode.value} search needs a keyword query", field="keyword_query")
    if not isinstance(query, SparseVector) or len(query.indices) != len(query.values):
        raise InvalidInput(
            "keyword query must be a SparseVector (encoders.keywords.query_vector)", field="keyword_query"
        )
    if not all(isinstance(i, (int, np.integer)) and 0 <= i < 2**32 for i in query.indices) or len(
        set(query.indices)
    ) != len(query.indices):
        raise InvalidInput("keyword query indices must be unique integers in 0..2^32-1", field="keyword_query")
    if not all(isinstance(v, (int, float, np.number)) and np.isfinite(v) for v in query.values):
        raise InvalidInput("keyword query values must be finite numbers", field="keyword_query")
    if mode == SearchMode.KEYWORD and not query.indices:
        # Nothing can match; almost certainly a query of only punctuation or spaces.
        raise InvalidInput("the keyword query has no words to search for", field="keyword_query")
    return query


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
