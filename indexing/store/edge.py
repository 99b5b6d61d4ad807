"""Embedded backend: one Qdrant Edge shard per collection, in this process.

Layout of the data folder:

    <data_dir>/.loupe.lock             flock held while a process owns the folder
    <data_dir>/<collection>/collection.json   schema, vector registry, info blob (written atomically)
    <data_dir>/<collection>/shard/     the EdgeShard (segments, WAL, edge_config.json)

A collection exists once its collection.json exists; the shard is created first, so a crash
in between leaves a shard without a sidecar, which the next create replaces.

Keyword vectors: a collection created with `schema.keyword_vector` has a sparse vector of
that name with the IDF modifier. A shard's sparse vectors are fixed once created (loading
it with a sparse vector it lacks fails: "config is incompatible with existing segments"),
so older collections stay dense-only; their sidecar has no "keyword_vector".

Dense vectors can be added and removed in place (`create_dense_vector`,
`delete_vector_name`); the shard records them in its own edge_config.json, so they survive
reopening. Which model fills each is in the sidecar (`indexing.store.edge_folder`).

Durability: the shard's WAL is on (the default), so every `update()` survives a crash and is
replayed by `EdgeShard.load`; `close()` also flushes segments so reopening is fast.

qdrant-edge raises plain `Exception` with a message for everything (no exception types), so
errors are translated by message here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
import qdrant_edge as qe

from encoders.common.errors import InvalidInput, LoupeError, NotFound, StoreUnavailable
from encoders.text.keywords import SparseVector
from indexing.store.edge_folder import lock_folder, schema_from_json, specs_of, write_json_atomic
from indexing.store.shared import as_list, dense_of, scored, sparse_of, sparse_parts, translate
from indexing.types import (
    INDEXED_KEYWORD_FIELDS,
    RRF_K,
    CollectionSchema,
    Filter,
    Point,
    ScoredPoint,
    VectorSpec,
    keywords_unavailable,
)

_SIDECAR = "collection.json"
_SHARD = "shard"
_FORMAT = 1
# Messages of qdrant-edge errors that mean "the request is wrong", not "the store is broken".
_BAD_INPUT_PREFIXES = ("Wrong input", "Vector dimension error", "Not existing vector name")
# Errors raised while serving a request reach the client: they name the collection, never a
# path in the data folder (the log keeps that). Errors of opening the store are the operator's.
log = logging.getLogger("loupe.store")


class EdgeStore:
    """VectorStore over Qdrant Edge shards in `data_dir`, owned by this process only."""

    def __init__(self, data_dir: str) -> None:
        self._root = os.path.abspath(data_dir)
        try:
            os.makedirs(self._root, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(f"cannot create data folder {self._root}: {e}") from e
        self._lock_file = lock_folder(self._root)
        self._mu = threading.RLock()
        self._shards: dict[str, qe.EdgeShard] = {}
        self._sidecars: dict[str, dict[str, Any]] = {}
        self._closed = False

    # -- collections -----------------------------------------------------------------------

    def create_collection(self, name: str, schema: CollectionSchema) -> None:
        with self._mu:
            self._check_open()
            if self._sidecar(name) is not None:
                return
            shard_dir = os.path.join(self._dir(name), _SHARD)
            sidecar = {
                "format": _FORMAT,
                "schema": asdict(schema),
                "vectors": [asdict(VectorSpec.of(schema, complete=True))],
                "info": {},
            }
            with self._errors("create", name):
                # Leftover of a create that crashed before writing the sidecar.
                shutil.rmtree(shard_dir, ignore_errors=True)
                shard = _new_shard(shard_dir, schema)
                try:
                    write_json_atomic(os.path.join(self._dir(name), _SIDECAR), sidecar)
                except BaseException:
                    shard.close()  # release its WAL so a retry can replace the folder
                    raise
            self._shards[name] = shard
            self._sidecars[name] = sidecar

    def get_schema(self, name: str) -> CollectionSchema | None:
        with self._mu:
            self._check_open()
            sidecar = self._sidecar(name)
        return None if sidecar is None else schema_from_json(sidecar["schema"])

    def get_vectors(self, name: str) -> list[VectorSpec] | None:
        with self._mu:
            self._check_open()
            sidecar = self._sidecar(name)
        return None if sidecar is None else specs_of(sidecar)

    def set_vectors(self, name: str, specs: list[VectorSpec]) -> None:
        with self._mu:
            sidecar = self._require_sidecar(name)
            keyword_vector = schema_from_json(sidecar["schema"]).keyword_vector
            updated = {
                **sidecar,
                "schema": asdict(specs[0].schema(keyword_vector)),
                "vectors": [asdict(spec) for spec in specs],
            }
            with self._errors("update vectors of", name):
                write_json_atomic(os.path.join(self._dir(name), _SIDECAR), updated)
            self._sidecars[name] = updated

    def create_vector(self, name: str, vector_name: str, dim: int) -> None:
        shard = self._shard(name)
        with self._errors("add a vector to", name):
            # Creating over a same-sized leftover would silently keep its values.
            shard.update(qe.UpdateOperation.delete_vector_name(vector_name))
            shard.update(qe.UpdateOperation.create_dense_vector(vector_name, dim, qe.Distance.Cosine))

    def delete_vector(self, name: str, vector_name: str) -> None:
        shard = self._shard(name)
        with self._errors("drop a vector of", name):
            shard.update(qe.UpdateOperation.delete_vector_name(vector_name))

    def list_collections(self) -> list[str]:
        with self._mu:
            self._check_open()
            with self._errors("list the collections", ""):
                entries = sorted(os.listdir(self._root))
        return [e for e in entries if os.path.isfile(os.path.join(self._root, e, _SIDECAR))]

    def get_info(self, name: str) -> dict[str, Any]:
        with self._mu:
            return dict(self._require_sidecar(name)["info"])

    def update_info(self, name: str, patch: dict[str, Any]) -> None:
        with self._mu:
            sidecar = self._require_sidecar(name)
            updated = {**sidecar, "info": {**sidecar["info"], **patch}}
            with self._errors("update info of", name):
                write_json_atomic(os.path.join(self._dir(name), _SIDECAR), updated)
            self._sidecars[name] = updated

    def optimize(self, name: str) -> bool:
        # Edge runs no background optimizer: until this is called, new points sit in plain
        # (brute-force) segments. It blocks (~30 s for 30k x 512 on 2 cores) but reads and
        # writes from other threads keep working meanwhile.
        shard = self._shard(name)
        with self._errors("optimize", name):
            return bool(shard.optimize())

    # -- points ----------------------------------------------------------------------------

    def upsert(self, name: str, points: list[Point]) -> None:
        shard, schema = self._shard(name), self._schema(name)
        edge_points = []
        for p in points:
            vectors: dict[str, Any] = {n: as_list(v) for n, v in p.vectors.items()}
            if schema.keyword_vector and p.keywords:
                # Empty sparse vectors are left out: stored, they would count in IDF statistics.
                vectors[schema.keyword_vector] = _as_sparse(p.keywords)
            edge_points.append(qe.Point(p.point_id, vectors, p.payload))
        with self._errors("write to", name):
            shard.update(qe.UpdateOperation.upsert_points(edge_points))

    def retrieve(self, name: str, point_ids: list[str], *, with_vectors: bool | Sequence[str] = False) -> list[Point]:
        shard, keyword_vector = self._shard(name), self._schema(name).keyword_vector
        selector = with_vectors if isinstance(with_vectors, bool) else list(with_vectors)
        with self._errors("read from", name):
            # The stub marks with_payload/with_vector optional; the binary requires both.
            records = shard.retrieve(list(point_ids), True, selector or False)
        return [
            Point(
                point_id=str(r.id),
                vectors=dense_of(r.vector, keyword_vector),
                payload=dict(r.payload or {}),
                keywords=sparse_of(r.vector, keyword_vector),
            )
            for r in records
        ]

    def overwrite_payloads(self, name: str, payloads: dict[str, dict[str, Any]]) -> None:
        shard = self._shard(name)
        with self._errors("write to", name):
            # One operation carries one payload; each is its own WAL entry.
            for point_id, payload in payloads.items():
                shard.update(qe.UpdateOperation.overwrite_payload([point_id], payload))

    def scroll(
        self, name: str, *, filter: Filter | None, limit: int, after: str | None = None
    ) -> tuple[list[Point], str | None]:
        shard = self._shard(name)
        request = qe.ScrollRequest(
            offset=after, limit=limit, filter=to_edge_filter(filter), with_payload=True, with_vector=False
        )
        with self._errors("read from", name):
            records, next_id = shard.scroll(request)
        points = [Point(point_id=str(r.id), payload=dict(r.payload or {})) for r in records]
        return points, None if next_id is None else str(next_id)

    def search(
        self,
        name: str,
        vector: np.ndarray,
        *,
        vector_name: str,
        limit: int,
        offset: int = 0,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
    ) -> list[ScoredPoint]:
        shard = self._shard(name)
        request = qe.SearchRequest(
            query=qe.Query.Nearest(as_list(vector), using=vector_name),
            limit=limit,
            offset=offset,
            filter=to_edge_filter(filter),
            params=qe.SearchParams(exact=True) if exact else None,
            with_payload=True,
            with_vector=False,
            score_threshold=score_threshold,
        )
        with self._errors("search", name):
            hits = shard.search(request)
        return scored(hits)

    def search_keywords(
        self,
        name: str,
        query: SparseVector,
        *,
        limit: int,
        offset: int = 0,
        filter: Filter | None = None,
        score_threshold: float | None = None,
    ) -> list[ScoredPoint]:
        shard, keyword_vector = self._shard(name), self._keyword_vector(name)
        request = qe.SearchRequest(
            query=qe.Query.Nearest(_as_sparse(query), using=keyword_vector),
            limit=limit,
            offset=offset,
            filter=to_edge_filter(filter),
            with_payload=True,
            with_vector=False,
            score_threshold=score_threshold,
        )
        with self._errors("search", name):
            hits = shard.search(request)
        return scored(hits)

    def search_hybrid(
        self,
        name: str,
        vector: np.ndarray,
        query: SparseVector,
        *,
        vector_name: str,
        limit: int,
        offset: int = 0,
        filter: Filter | None = None,
        dense_threshold: float | None = None,
        candidates: int,
        rrf_k: int = RRF_K,
    ) -> list[ScoredPoint]:
        shard, keyword_vector = self._shard(name), self._keyword_vector(name)
        edge_filter = to_edge_filter(filter)
        # The filter goes on every stage: each ranking is cut to `candidates` after filtering,
        # so a selective filter still gets full candidate lists.
        request = qe.QueryRequest(
            limit=limit,
            offset=offset,
            query=qe.Fusion.Rrf(k=rrf_k),
            prefetches=[
                qe.Prefetch(
                    limit=candidates,
                    query=qe.Query.Nearest(as_list(vector), using=vector_name),
                    filter=edge_filter,
                    score_threshold=dense_threshold,
                ),
                qe.Prefetch(
                    limit=candidates,
                    query=qe.Query.Nearest(_as_sparse(query), using=keyword_vector),
                    filter=edge_filter,
                ),
            ],
            filter=edge_filter,
            with_payload=True,
            with_vector=False,
        )
        with self._errors("search", name):
            hits = shard.query(request)
        return scored(hits)

    def delete(self, name: str, point_ids: list[str]) -> None:
        shard = self._shard(name)
        with self._errors("delete from", name):
            shard.update(qe.UpdateOperation.delete_points(list(point_ids)))

    def delete_by_filter(self, name: str, filter: Filter) -> int:
        shard = self._shard(name)
        edge_filter = to_edge_filter(filter) or qe.Filter()
        with self._errors("delete from", name):
            # Deletes report no count; counting first is exact because this process alone
            # writes the shard and Index serialises its writes.
            n = shard.count(qe.CountRequest(exact=True, filter=edge_filter))
            if n:
                shard.update(qe.UpdateOperation.delete_points_by_filter(edge_filter))
        return int(n)

    def count(self, name: str, filter: Filter | None = None) -> int:
        shard = self._shard(name)
        with self._errors("count", name):
            return int(shard.count(qe.CountRequest(exact=True, filter=to_edge_filter(filter))))

    def close(self) -> None:
        with self._mu:
            if self._closed:
                return
            self._closed = True
            shards, self._shards = self._shards, {}
            failures: list[StoreUnavailable] = []
            for name, shard in shards.items():
                try:
                    with self._errors("close", name):
                        # Not needed for durability (the WAL is), but reopening then has no
                        # WAL to replay.
                        shard.flush()
                        shard.close()
                except LoupeError as e:  # close the others all the same
                    failures.append(StoreUnavailable(e.reason))
            self._lock_file.close()  # releases the flock
            if failures:
                raise failures[0]

    # -- internals -------------------------------------------------------------------------

    def _dir(self, name: str) -> str:
        # Index validates names; this guards the filesystem against anything that slips by.
        if not name or not name.isprintable() or "/" in name or "\\" in name or name.startswith("."):
            raise InvalidInput(f"invalid collection name {name!r}", field="collection")
        return os.path.join(self._root, name)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the embedded store is closed")

    def _sidecar(self, name: str) -> dict[str, Any] | None:
        if name in self._sidecars:
            return self._sidecars[name]
        path = os.path.join(self._dir(name), _SIDECAR)
        if not os.path.isfile(path):
            return None
        with self._errors("read", name):
            with open(path, encoding="utf-8") as f:
                sidecar = json.load(f)
        self._sidecars[name] = sidecar
        return sidecar

    def _require_sidecar(self, name: str) -> dict[str, Any]:
        self._check_open()
        sidecar = self._sidecar(name)
        if sidecar is None:
            raise NotFound(f"collection {name!r} does not exist", field="collection")
        return sidecar

    def _schema(self, name: str) -> CollectionSchema:
        with self._mu:
            return schema_from_json(self._require_sidecar(name)["schema"])

    def _keyword_vector(self, name: str) -> str:
        keyword_vector = self._schema(name).keyword_vector
        if not keyword_vector:
            raise keywords_unavailable(name)
        return keyword_vector

    def _shard(self, name: str) -> qe.EdgeShard:
        with self._mu:
            self._require_sidecar(name)
            shard = self._shards.get(name)
            if shard is None:
                with self._errors("open", name):
                    shard = qe.EdgeShard.load(os.path.join(self._dir(name), _SHARD))
                    try:
                        _ensure_field_indexes(shard)  # shards made before a field was indexed
                    except BaseException:
                        shard.close()
                        raise
                self._shards[name] = shard
            return shard

    @contextmanager
    def _errors(self, action: str, name: str) -> Iterator[None]:
        target = f" {name!r}" if name else ""
        try:
            yield
        except LoupeError:
            raise
        except (TypeError, AttributeError):
            raise  # our bug (e.g. an argument the binding cannot convert), not the store's
        except Exception as e:  # qdrant-edge raises bare Exception; OSError from files
            message = self._without_paths(e)
            if message.startswith(_BAD_INPUT_PREFIXES):
                raise InvalidInput(f"embedded store rejected the request on {name!r}: {message}") from e
            log.warning("embedded store at %s failed to %s%s: %s", self._root, action, target, e)
            raise StoreUnavailable(f"embedded store failed to {action}{target}: {message}") from e

    def _without_paths(self, e: Exception) -> str:
        """What went wrong, for the client: an OSError's text names its file, and qdrant-edge's
        may name a shard's folder."""
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        message = str(e)
        for root in {self._root, os.path.realpath(self._root)}:
            message = message.replace(root, "<data folder>")
        return message


# -- filters ---------------------------------------------------------------------------------


class _EdgeFilters:
    """qdrant-edge's spelling of a filter (see `indexing.store.shared.translate`)."""

    def group(self, *, must=None, must_not=None, should=None) -> qe.Filter:
        return qe.Filter(should=should) if should is not None else qe.Filter(must=must, must_not=must_not)

    def has_vector(self, vector_name: str):
        return qe.HasVectorCondition(vector_name)

    def range(self, key: str, *, gte=None, gt=None, lte=None, lt=None):
        return qe.FieldCondition(key, range=qe.RangeFloat(gte=gte, gt=gt, lte=lte, lt=lt))

    def match_any(self, key: str, values: list):
        return qe.FieldCondition(key, match=qe.MatchAny(values))

    def match_value(self, key: str, value: Any):
        if isinstance(value, bool):
            # The binding tries int before bool, and Python's True *is* an int, so MatchValue(True)
            # becomes MatchValue(1) and never matches a stored boolean. numpy.bool_ is not an int
            # and is extracted as a real bool.
            value = np.bool_(value)
        return qe.FieldCondition(key, match=qe.MatchValue(value))


_DIALECT = _EdgeFilters()


def to_edge_filter(filter: Filter | None) -> qe.Filter | None:
    return translate(filter, _DIALECT)


# -- helpers ---------------------------------------------------------------------------------


def _new_shard(shard_dir: str, schema: CollectionSchema) -> qe.EdgeShard:
    vectors = {schema.vector_name: qe.EdgeVectorParams(size=schema.dim, distance=qe.Distance.Cosine)}
    sparse = (
        {schema.keyword_vector: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if schema.keyword_vector else None
    )
    shard = qe.EdgeShard.create(shard_dir, qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse))
    try:
        # Indexes on an empty shard cost nothing to build and keep filtered search and id
        # lookups fast as the collection grows.
        _ensure_field_indexes(shard)
        shard.flush()
    except BaseException:
        shard.close()
        raise
    return shard


def _ensure_field_indexes(shard: qe.EdgeShard) -> None:
    existing = set(shard.info().payload_schema)
    for field in INDEXED_KEYWORD_FIELDS:
        if field not in existing:
            shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))


def _as_sparse(keywords: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(*sparse_parts(keywords))
