"""Loupe's view of a vector store: ids, schemas, payload merging, filters, search modes.

Everything Loupe-specific lives here, above the thin `VectorStore`, so the embedded (Edge)
and server (Qdrant) backends behave identically.

Search modes (`Index.search(mode=...)`) and what their scores mean:

    "dense"    CLIP vector, cosine similarity in -1..1. `score_threshold` is a minimum cosine.
    "keyword"  keyword (sparse) vector only: BM25 score, the sum over query terms found in the
               item of IDF x the item's saturated term frequency (`encoders.text.keywords`); > 0,
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

Filters, modalities and exclude_ids restrict every ranking in every mode. Equal scores are
ordered by public id, so pages never overlap or skip items (`indexing.ranking`).

A collection may hold a dense vector per model while it is re-embedded (`indexing.vectors`):
searches use the active vector unless told another, and writes go to the vector of the
writer's model, keeping the others.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from encoders.common.errors import BatchInvalid, InvalidInput, NotFound
from encoders.text.keywords import SparseVector, keyword_vector, with_terms
from indexing import user_filter
from indexing.ids import item_key, point_id
from indexing.payloads import NewItem, build_payload, check_item, meta_types
from indexing.privacy import Privacy
from indexing.query import SearchQuery
from indexing.ranking import check_keyword_query, check_mode, check_query_vector, page
from indexing.reembed import ReembedMethods
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
from indexing.vectors import NAME, VectorRegistry, check_vector_name, versions_kept

__all__ = ["HYBRID_CANDIDATES", "Index", "NewItem", "SearchMode"]

# Info-blob key prefix under which user metadata field types are recorded, one key per
# field so concurrent writers recording different fields cannot overwrite each other.
_FIELD_PREFIX = "field:"
# Collection info key that changes with every write (`Index.write_token`).
WRITE_TOKEN = "write_token"
_MAX_LISTED = 10
# Items each ranking contributes to a hybrid search (at least offset + limit).
HYBRID_CANDIDATES = 100


class Index(ReembedMethods):
    """Collections of Loupe items over any `VectorStore`. Thread-safe."""

    def __init__(
        self, store: VectorStore, *, clock: Callable[[], float] = time.time, privacy: Privacy | None = None
    ) -> None:
        self._store = store
        # What is masked in stored text (cards, by default); the one place every write passes.
        self.privacy = privacy or Privacy()
        self._clock = clock
        self._vectors = VectorRegistry(store)
        self._fields: dict[str, dict[str, frozenset[str]]] = {}
        # Upserts read, merge and write back; deletes check then delete. Serialising writes
        # keeps both correct within this process (the Edge store's only process).
        self._write_lock = threading.RLock()

    def _masked(self, name: str, item: NewItem) -> NewItem:
        """The item as the collection's privacy rule lets it be stored: its text with the
        `stored_masked` kinds masked; no thumbnail when that masked something (the picture
        would show what the text no longer holds); keywords from the text with the
        `shown_masked` kinds masked too, so no fragment of a value ("alice", "example", a phone
        number's digit groups) finds the item, plus a keyed term per whole value
        (`Privacy.personal_terms`), which only a query by a caller with the right holds."""
        text = self.privacy.stored(name, item.text)
        removed = text is not item.text and text != item.text
        searchable = self.privacy.shown(name, text) if text else text
        keywords = item.keywords
        if item.keywords is not None and (removed or searchable != text):
            keywords = with_terms(keyword_vector(searchable or ""), self.privacy.personal_terms(name, text)) or None
        thumbnail = None if removed else item.thumbnail
        if text is item.text and keywords is item.keywords and thumbnail is item.thumbnail:
            return item
        return replace(item, text=text, keywords=keywords, thumbnail=thumbnail)

    @property
    def store(self) -> VectorStore:
        return self._store

    def close(self) -> None:
        self._store.close()

    # -- collections -----------------------------------------------------------------------

    def ensure_collection(self, name: str, schema: CollectionSchema) -> None:
        """Create `name` for `schema` if missing; ModelMismatch if none of its vectors was
        built by `schema`'s model."""
        _check_name(name)
        if schema.dim <= 0 or not schema.vector_name or not schema.model_id:
            raise InvalidInput(f"invalid collection schema {schema}", field="schema")
        if self._vectors.active(name) is None:
            check_vector_name(schema.vector_name, schema.keyword_vector)
            self._store.create_collection(name, schema)
            # Re-read: another process may have created it first with another model.
            if self._vectors.specs(name, refresh=True) is None:
                raise NotFound(f"collection {name!r} vanished right after being created", field="collection")
        self.schema_for(name, schema)

    def require_collection(self, name: str, schema: CollectionSchema) -> None:
        """NotFound if `name` is missing; ModelMismatch if none of its vectors was built by
        `schema`'s model."""
        self.schema_for(name, schema)

    def schema(self, name: str) -> CollectionSchema:
        """The schema of `name`'s active vector; NotFound (listing existing ones) if missing."""
        _check_name(name)
        stored = self._vectors.active(name)
        if stored is None:
            raise self._no_collection(name)
        return stored

    def schema_for(self, name: str, wanted: CollectionSchema) -> CollectionSchema:
        """The schema to serve requests made with `wanted`'s model: the active vector's if
        that model built it, else the schema of the other vector it built (whatever
        `wanted.vector_name` says). ModelMismatch, listing the vectors, if there is none."""
        _check_name(name)
        found = self._vectors.schema_for(name, wanted)
        if found is None:
            raise self._no_collection(name)
        return found

    def collections(self) -> list[tuple[str, CollectionSchema, int]]:
        """(name, schema of the active vector, point count) of every collection, by name."""
        out = []
        for name in sorted(self._store.list_collections()):
            schema = self._vectors.active(name)
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

        The items' vectors go to the collection's vector of `schema`'s model
        (`schema_for`); a point's other dense vectors are kept. Existing points keep
        created_at, get sources unioned and metadata merged (new keys win); the keyword
        vector is replaced (an item given without keywords loses them). Nothing is stored
        if any item is invalid. In a collection created without a keyword vector
        (`schema(name).keyword_vector is None`) keywords are not stored.
        """
        # Items first, so a rejected request leaves no trace, not even a new collection.
        problems = [p for i, item in enumerate(items) for p in check_item(item, i, schema)]
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise BatchInvalid(problems)
        self.ensure_collection(name, schema)
        target = self.schema_for(name, schema)
        if not items:
            return []
        items = [self._masked(name, item) for item in items]
        keys = [item_key(item.public_id, item.sha256) for item in items]
        pids = [point_id(name, key) for key in keys]
        with self._write_lock:
            specs = self._vectors.specs(name) or []
            others = [s.vector_name for s in specs if s.vector_name != target.vector_name]
            # The store writes whole points: the other vectors are read to be written back.
            stored = {p.point_id: p for p in self._store.retrieve(name, list(dict.fromkeys(pids)), with_vectors=others)}
            now = self._clock()
            merged: dict[str, Point] = {}
            results: list[tuple[str, bool]] = []
            for item, key, pid in zip(items, keys, pids, strict=True):
                # A second item with the same key in one batch merges into the first.
                before = merged.get(pid) or stored.get(pid)
                kept = {n: v for n, v in before.vectors.items() if n in others} if before else {}
                previous = before.payload if before else None
                versions = versions_kept(previous, set(kept), specs)
                merged[pid] = Point(
                    point_id=pid,
                    vectors={**kept, target.vector_name: np.asarray(item.vector, np.float32)},
                    payload=build_payload(item, key, target, previous, now, versions),
                    keywords=item.keywords if item.keywords else None,
                )
                results.append((key, before is None))
            # Fields first: a crash in between leaves a known field without values, which
            # is harmless, rather than values no filter may name.
            self._record_fields(name, [item.metadata for item in items])
            self._store.upsert(name, list(merged.values()))
            self.mark_changed(name)
            if any(created for _, created in results):
                stale = [s.vector_name for s in specs if s.complete and s.vector_name in others]
                if stale:
                    self._vectors.mark_incomplete(name, stale)
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
            self.mark_changed(name)
        return len(wanted) + n_children

    def delete_children(self, name: str, parent_id: str) -> int:
        """Delete every item whose parent_id is `parent_id` (a recording's segments, before
        re-indexing changed content); return how many. The parent itself is kept, and need
        not exist (orphans are deleted too)."""
        self.schema(name)
        if not isinstance(parent_id, str) or not parent_id:
            raise InvalidInput("parent_id must be a non-empty string", field="parent_id")
        with self._write_lock:
            deleted = self._store.delete_by_filter(name, Filter(must=(Condition(key="parent_id", equals=parent_id),)))
            self.mark_changed(name)
            return deleted

    def delete_where(self, name: str, filter: Filter) -> int:
        """Delete every item matching `filter` (a resolved one); return how many."""
        self.schema(name)
        if filter is None or filter.is_empty():
            # Almost always a client bug; deleting a whole collection deserves its own call.
            raise InvalidInput("refusing to delete with an empty filter (it matches everything)", field="filter")
        with self._write_lock:
            deleted = self._store.delete_by_filter(name, filter)
            self.mark_changed(name)
            return deleted

    def write_token(self, name: str) -> str:
        """Changes with every write to `name` (upsert, delete, re-embedding), from any process
        that writes through an Index (the service, `loupe index --batch`): what cached answers
        that read the collection are tied to. "" for a missing collection."""
        if self._store.get_schema(name) is None:
            return ""
        return str(self._store.get_info(name).get(WRITE_TOKEN, ""))

    def mark_changed(self, name: str) -> None:
        """A new write token for `name` (every write calls it; so does a new calibration)."""
        self._store.update_info(name, {WRITE_TOKEN: uuid.uuid4().hex})

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
        vector_name: str | None = None,
        exact: bool = False,
    ) -> list[tuple[dict[str, Any], float]]:
        """(payload, score) of the best items, best first; see the module docstring for
        what score and score_threshold mean in each mode. `exact`: dense mode compares with
        every point instead of the approximate index (slow; evals measure the index with it).

        `vector` (CLIP) is needed in "dense" and "hybrid" mode, ignored (may be None) in
        "keyword" mode; `keyword_query` (`encoders.text.keywords.query_vector`) is needed in
        "keyword" and "hybrid" mode. Keyword and hybrid search on a collection created
        without a keyword vector raise KeywordsUnavailable (a ModelMismatch).
        `vector_name`: the dense vector to search (default: the active one); points
        without it are not found.
        """
        schema = self._vector_schema(name, vector_name)
        mode = check_mode(mode)
        _check_page(limit, offset, score_threshold)
        if mode != SearchMode.KEYWORD:
            vector = check_query_vector(vector, schema, name)
        if mode != SearchMode.DENSE:
            if not schema.keyword_vector:
                raise keywords_unavailable(name)
            keyword_query = check_keyword_query(keyword_query, mode)
        scoped = _scoped(filter, modalities)
        if exclude_ids:
            scoped = (scoped or Filter()).and_not(Condition(key="id", any_of=tuple(exclude_ids)))
        # Hybrid: the candidate count is fixed by the page asked for, not by how much `page`
        # reads, so both rankings are the same for every read of one page.
        candidates = max(offset + limit, HYBRID_CANDIDATES)
        store, vname = self._store, schema.vector_name

        def fetch(n: int, skip: int) -> list[ScoredPoint]:
            common = {"limit": n, "offset": skip, "filter": scoped}
            if mode == SearchMode.DENSE:
                return store.search(
                    name, vector, vector_name=vname, score_threshold=score_threshold, exact=exact, **common
                )
            if mode == SearchMode.KEYWORD:
                return store.search_keywords(name, keyword_query, score_threshold=score_threshold, **common)
            return store.search_hybrid(
                name,
                vector,
                keyword_query,
                vector_name=vname,
                dense_threshold=score_threshold,
                candidates=candidates,
                rrf_k=RRF_K,
                **common,
            )

        return [(hit.payload, hit.score) for hit in page(fetch, offset, limit)]

    def run_query(self, query: SearchQuery, *, vector_name: str | None = None) -> list[tuple[dict[str, Any], float]]:
        """`search` for a `SearchQuery`: its conditions resolved against the collection, and with
        `like_id` the stored item's vector searched (the item itself left out)."""
        name, vector, exclude = query.collection, query.vector, query.exclude_ids
        if query.like_id is not None:
            _, vector = self.get_vector(name, query.like_id, vector_name)
            exclude = (*exclude, query.like_id)
        flt = self.resolve_filter(name, query.conditions) if query.conditions else None
        return self.search(
            name,
            vector,
            limit=query.limit,
            offset=query.offset,
            modalities=query.modalities,
            filter=flt,
            score_threshold=query.score_threshold,
            exclude_ids=exclude,
            mode=query.mode,
            keyword_query=query.keywords,
            vector_name=vector_name,
            exact=query.exact,
        )

    def get(self, name: str, public_id: str) -> dict[str, Any]:
        return self._get(name, public_id).payload

    def get_vector(
        self, name: str, public_id: str, vector_name: str | None = None
    ) -> tuple[dict[str, Any], np.ndarray]:
        """Payload and dense vector `vector_name` (default: the active one) of an item."""
        wanted = self._vector_schema(name, vector_name).vector_name
        point = self._get(name, public_id, with_vectors=[wanted])
        vector = point.vectors.get(wanted)
        if vector is None:
            raise NotFound(f"item {public_id!r} in collection {name!r} has no vector {wanted!r}", field="id")
        return point.payload, vector

    def points_with_vectors(self, name: str, public_ids: Sequence[str], vector_name: str) -> dict[str, np.ndarray]:
        """Public id -> dense vector `vector_name` of those items that exist and have one."""
        points = self._store.retrieve(name, [point_id(name, i) for i in public_ids], with_vectors=[vector_name])
        return {p.payload["id"]: p.vectors[vector_name] for p in points if p.vectors.get(vector_name) is not None}

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

    def _no_collection(self, name: str) -> NotFound:
        existing = tuple(self._store.list_collections())
        return NotFound(f"collection {name!r} does not exist", field="collection", existing=existing)

    def _vector_schema(self, name: str, vector_name: str | None) -> CollectionSchema:
        active = self.schema(name)
        if vector_name is None or vector_name == active.vector_name:
            return active
        return self._vectors.spec(name, vector_name).schema(active.keyword_vector)

    def _get(self, name: str, public_id: str, *, with_vectors: Sequence[str] = ()) -> Point:
        self.schema(name)
        if not isinstance(public_id, str) or not public_id:
            raise InvalidInput("id must be a non-empty string", field="id")
        points = self._store.retrieve(name, [point_id(name, public_id)], with_vectors=list(with_vectors))
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

    def _record_fields(self, name: str, metadata: Sequence[dict[str, Any]]) -> None:
        known = self._meta_fields(name)
        seen: dict[str, set[str]] = {}
        for meta in metadata:
            for field_name, types in meta_types(meta).items():
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
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidInput(
            f"collection name {name!r} must be 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit",
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


def _check_page(limit: int, offset: int, score_threshold: float | None) -> None:
    if limit < 1 or offset < 0:
        raise InvalidInput(f"limit must be >= 1 and offset >= 0 (got {limit}, {offset})", field="limit")
    if score_threshold is not None and not (
        isinstance(score_threshold, (int, float, np.number)) and np.isfinite(score_threshold)
    ):
        raise InvalidInput(f"score_threshold must be a finite number, got {score_threshold!r}", field="score_threshold")
