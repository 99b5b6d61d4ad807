"""Server backend: qdrant-client against a Qdrant server, or its local mode for tests.

The schema and the info blob live in the collection's own metadata (Qdrant >= 1.16), so a
collection carries what it was built with wherever it is copied or snapshotted:

    metadata = {"loupe_schema": {...}, "loupe_vectors": [{...}, ...], "loupe_info.<key>": <value>, ...}

"loupe_schema" is the active vector (what older Loupe versions read); "loupe_vectors" lists
every dense vector with its model, active first (absent from collections made when there was
one). Both change in one metadata update, so a reader never sees them disagree. Dense
vectors are added and removed in place (`create_vector_name`, `delete_vector_name`: server
>= 1.18).

Info keys are separate top-level entries because the server merges metadata updates per
top-level key: two replicas recording different fields at once then cannot overwrite each
other.

Keyword vectors: collections are created with a sparse vector `schema.keyword_vector`
("keywords") with `Modifier.IDF`; whether a collection has one is read from its vector
config, not from the metadata, so collections created before keyword search report
`keyword_vector=None`. Hybrid search is one `query_points` call: two prefetches fused by
`RrfQuery` (server >= 1.16; local mode implements the same formula).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import httpx
import numpy as np
from pydantic import ValidationError
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from encoders.common.errors import InvalidInput, LoupeError, NotFound, StoreUnavailable
from encoders.common.urls import redact_url
from encoders.text.keywords import SparseVector
from indexing.store.shared import as_list, dense_of, scored, sparse_of, sparse_parts, translate
from indexing.types import (
    INDEXED_KEYWORD_FIELDS,
    KEYWORD_VECTOR,
    RRF_K,
    CollectionSchema,
    Filter,
    Point,
    ScoredPoint,
    VectorSpec,
    keywords_unavailable,
)

_SCHEMA_KEY = "loupe_schema"
_VECTORS_KEY = "loupe_vectors"
_INFO_PREFIX = "loupe_info."


class QdrantStore:
    """VectorStore over qdrant-client. Give exactly one of `url`, `path`, `location`."""

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        path: str | None = None,
        location: str | None = None,
        timeout_s: int = 10,
    ) -> None:
        # In every error message: a URL's credentials (https://TOKEN@host) as ***.
        self._where = redact_url(url) if url else path or location or ":memory:"
        # Local mode ignores payload indexes (and warns about them); only a server builds them.
        self._local = url is None
        try:
            if url is not None:
                # No version check: it is a network call in the constructor; failures should
                # surface on first use as StoreUnavailable, like every other call.
                self._client = QdrantClient(url=url, api_key=api_key, timeout=timeout_s, check_compatibility=False)
            elif path is not None:
                self._client = QdrantClient(path=path)
            else:
                self._client = QdrantClient(location=location or ":memory:")
        except Exception as e:  # e.g. local folder already held by another client
            raise StoreUnavailable(f"cannot open Qdrant at {self._where}: {e}") from e
        # Only the keyword vector is read from these, and it never changes for a collection;
        # caching saves a round trip per call. Dense vectors are named by the caller.
        self._schemas: dict[str, CollectionSchema] = {}

    # -- collections -----------------------------------------------------------------------

    def create_collection(self, name: str, schema: CollectionSchema) -> None:
        with self._errors("create collection", name):
            if self._client.collection_exists(name):
                return
            try:
                self._client.create_collection(
                    name,
                    vectors_config={
                        schema.vector_name: models.VectorParams(size=schema.dim, distance=models.Distance.COSINE)
                    },
                    sparse_vectors_config=(
                        {schema.keyword_vector: models.SparseVectorParams(modifier=models.Modifier.IDF)}
                        if schema.keyword_vector
                        else None
                    ),
                    metadata={
                        _SCHEMA_KEY: asdict(schema),
                        _VECTORS_KEY: [asdict(VectorSpec.of(schema, complete=True))],
                    },
                )
            except (UnexpectedResponse, ValueError):
                if self._client.collection_exists(name):
                    return  # created concurrently by another replica; caller compares schemas
                raise
            if not self._local:
                self._ensure_field_indexes(name, set())
            metadata = self._client.get_collection(name).config.metadata or {}
        if _SCHEMA_KEY not in metadata:
            # A server without collection metadata (older than 1.16) silently drops it; every
            # later call would then report a model mismatch, so say what is wrong now.
            raise StoreUnavailable(
                f"Qdrant at {self._where} did not keep the metadata of collection {name!r}; "
                "Loupe stores the collection's model there and needs a Qdrant server that supports "
                "collection metadata (1.16 or newer)"
            )

    def get_schema(self, name: str) -> CollectionSchema | None:
        with self._errors("read collection", name):
            if not self._client.collection_exists(name):
                return None
            config = self._client.get_collection(name).config
        stored = (config.metadata or {}).get(_SCHEMA_KEY)
        sparse = config.params.sparse_vectors or {}
        if stored:
            return CollectionSchema(
                vector_name=stored["vector_name"],
                dim=stored["dim"],
                model_id=stored["model_id"],
                model_version=stored["model_version"],
                keyword_vector=_keyword_vector_in(stored, sparse),
            )
        # Not created by Loupe (or a server too old to keep metadata): describe what is
        # there with an unknown model, so Index reports a ModelMismatch instead of using it.
        vectors = config.params.vectors
        if isinstance(vectors, dict) and len(vectors) == 1:
            ((vector_name, params),) = vectors.items()
        elif isinstance(vectors, models.VectorParams):
            vector_name, params = "", vectors
        else:
            vector_name, params = "", None
        dim = params.size if params else 0
        return CollectionSchema(
            vector_name=vector_name,
            dim=dim,
            model_id="",
            model_version="",
            keyword_vector=_keyword_vector_in({}, sparse),
        )

    def get_vectors(self, name: str) -> list[VectorSpec] | None:
        with self._errors("read collection", name):
            if not self._client.collection_exists(name):
                return None
            metadata = self._client.get_collection(name).config.metadata or {}
        if _VECTORS_KEY in metadata:
            return [VectorSpec(**data) for data in metadata[_VECTORS_KEY]]
        schema = self.get_schema(name)
        # Made when a collection had one vector, which every point got.
        return None if schema is None else [VectorSpec.of(schema, complete=True)]

    def set_vectors(self, name: str, specs: list[VectorSpec]) -> None:
        keyword_vector = self._schema(name).keyword_vector
        metadata = {
            _SCHEMA_KEY: asdict(specs[0].schema(keyword_vector)),
            _VECTORS_KEY: [asdict(spec) for spec in specs],
        }
        with self._errors("update collection", name):
            self._client.update_collection(name, metadata=metadata)

    def create_vector(self, name: str, vector_name: str, dim: int) -> None:
        config = models.DenseVectorNameConfig(dense=models.DenseVectorConfig(size=dim, distance=models.Distance.COSINE))
        with self._errors("add a vector to", name):
            if vector_name in self._dense_names(name):
                self._client.delete_vector_name(name, vector_name, wait=True)
            try:
                self._client.create_vector_name(name, vector_name, config, wait=True)
            except UnexpectedResponse as e:
                if e.status_code not in (404, 405):
                    raise
                # The collection exists (just read), so it is the endpoint that is missing.
                raise StoreUnavailable(
                    f"Qdrant at {self._where} cannot add vector {vector_name!r} to collection {name!r}: "
                    "adding a vector to an existing collection needs Qdrant 1.18 or newer"
                ) from e

    def delete_vector(self, name: str, vector_name: str) -> None:
        with self._errors("drop a vector of", name):
            if vector_name in self._dense_names(name):
                self._client.delete_vector_name(name, vector_name, wait=True)

    def list_collections(self) -> list[str]:
        with self._errors("list collections", ""):
            return sorted(c.name for c in self._client.get_collections().collections)

    def get_info(self, name: str) -> dict[str, Any]:
        with self._errors("read collection", name):
            metadata = self._client.get_collection(name).config.metadata or {}
        return {k[len(_INFO_PREFIX) :]: v for k, v in metadata.items() if k.startswith(_INFO_PREFIX)}

    def update_info(self, name: str, patch: dict[str, Any]) -> None:
        with self._errors("update collection", name):
            self._client.update_collection(name, metadata={_INFO_PREFIX + k: v for k, v in patch.items()})

    def optimize(self, name: str) -> bool:
        return False  # the server optimizes in the background; local mode has no indexes

    # -- points ----------------------------------------------------------------------------

    def upsert(self, name: str, points: list[Point]) -> None:
        schema = self._schema(name)
        structs = []
        for p in points:
            vectors: dict[str, Any] = {n: as_list(v) for n, v in p.vectors.items()}
            if schema.keyword_vector and p.keywords:
                # Empty sparse vectors are left out: stored, they would count in IDF statistics.
                vectors[schema.keyword_vector] = _as_sparse(p.keywords)
            structs.append(models.PointStruct(id=p.point_id, vector=vectors, payload=p.payload))
        with self._errors("write to", name):
            self._client.upsert(name, points=structs, wait=True)

    def retrieve(self, name: str, point_ids: list[str], *, with_vectors: bool | Sequence[str] = False) -> list[Point]:
        selector = with_vectors if isinstance(with_vectors, bool) else list(with_vectors)
        keyword_vector = self._schema(name).keyword_vector if selector else None
        with self._errors("read from", name):
            records = self._client.retrieve(name, list(point_ids), with_payload=True, with_vectors=selector or False)
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
        operations = [
            models.OverwritePayloadOperation(overwrite_payload=models.SetPayload(payload=payload, points=[point_id]))
            for point_id, payload in payloads.items()
        ]
        if not operations:
            return
        with self._errors("write to", name):
            self._client.batch_update_points(name, operations, wait=True)

    def scroll(
        self, name: str, *, filter: Filter | None, limit: int, after: str | None = None
    ) -> tuple[list[Point], str | None]:
        with self._errors("read from", name):
            records, next_id = self._client.scroll(
                name,
                scroll_filter=to_qdrant_filter(filter),
                limit=limit,
                offset=after,
                with_payload=True,
                with_vectors=False,
            )
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
        with self._errors("search", name):
            response = self._client.query_points(
                name,
                query=as_list(vector),
                using=vector_name,
                limit=limit,
                offset=offset or None,
                query_filter=to_qdrant_filter(filter),
                search_params=models.SearchParams(exact=True) if exact else None,
                score_threshold=score_threshold,
                with_payload=True,
                with_vectors=False,
            )
        return scored(response.points)

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
        keyword_vector = self._keyword_vector(name)
        with self._errors("search", name):
            response = self._client.query_points(
                name,
                query=_as_sparse(query),
                using=keyword_vector,
                limit=limit,
                offset=offset or None,
                query_filter=to_qdrant_filter(filter),
                score_threshold=score_threshold,
                with_payload=True,
                with_vectors=False,
            )
        return scored(response.points)

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
        keyword_vector = self._keyword_vector(name)
        qfilter = to_qdrant_filter(filter)
        with self._errors("search", name):
            # The server propagates the top-level filter into the prefetches; it is set on
            # them too so the request means the same to anything that does not.
            response = self._client.query_points(
                name,
                prefetch=[
                    models.Prefetch(
                        query=as_list(vector),
                        using=vector_name,
                        limit=candidates,
                        filter=qfilter,
                        score_threshold=dense_threshold,
                    ),
                    models.Prefetch(query=_as_sparse(query), using=keyword_vector, limit=candidates, filter=qfilter),
                ],
                query=models.RrfQuery(rrf=models.Rrf(k=rrf_k)),
                limit=limit,
                offset=offset or None,
                query_filter=qfilter,
                with_payload=True,
                with_vectors=False,
            )
        return scored(response.points)

    def delete(self, name: str, point_ids: list[str]) -> None:
        with self._errors("delete from", name):
            self._client.delete(name, points_selector=models.PointIdsList(points=list(point_ids)), wait=True)

    def delete_by_filter(self, name: str, filter: Filter) -> int:
        qfilter = to_qdrant_filter(filter) or models.Filter()
        with self._errors("delete from", name):
            # Deletes report no count. Another writer may slip in between on a shared server;
            # the count is then approximate, the deletion itself is not.
            n = self._client.count(name, count_filter=qfilter, exact=True).count
            if n:
                self._client.delete(name, points_selector=models.FilterSelector(filter=qfilter), wait=True)
        return int(n)

    def count(self, name: str, filter: Filter | None = None) -> int:
        with self._errors("count", name):
            return int(self._client.count(name, count_filter=to_qdrant_filter(filter), exact=True).count)

    def close(self) -> None:
        with self._errors("close", ""):
            self._client.close()

    # -- internals -------------------------------------------------------------------------

    def _schema(self, name: str) -> CollectionSchema:
        if name not in self._schemas:
            schema = self.get_schema(name)
            if schema is None:
                raise NotFound(f"collection {name!r} does not exist in Qdrant at {self._where}", field="collection")
            if not self._local:
                # Collections created before a field was indexed get the index on first use.
                with self._errors("index fields of", name):
                    self._ensure_field_indexes(name, set(self._client.get_collection(name).payload_schema or {}))
            self._schemas[name] = schema
        return self._schemas[name]

    def _dense_names(self, name: str) -> set[str]:
        vectors = self._client.get_collection(name).config.params.vectors
        return set(vectors) if isinstance(vectors, dict) else set()

    def _keyword_vector(self, name: str) -> str:
        keyword_vector = self._schema(name).keyword_vector
        if not keyword_vector:
            raise keywords_unavailable(name)
        return keyword_vector

    def _ensure_field_indexes(self, name: str, existing: set[str]) -> None:
        for field in INDEXED_KEYWORD_FIELDS:
            if field not in existing:
                self._client.create_payload_index(name, field, field_schema=models.PayloadSchemaType.KEYWORD, wait=True)

    @contextmanager
    def _errors(self, action: str, name: str) -> Iterator[None]:
        target = f" {name!r}" if name else ""
        try:
            yield
        except LoupeError:
            raise
        except ValidationError:
            raise  # a request we built wrong: our bug, not the store's
        except UnexpectedResponse as e:
            detail = _response_detail(e)
            if e.status_code == 404:
                raise NotFound(f"collection{target} not found in Qdrant at {self._where}: {detail}") from e
            if e.status_code in (400, 422):
                raise InvalidInput(f"Qdrant at {self._where} rejected the request to {action}{target}: {detail}") from e
            raise StoreUnavailable(
                f"Qdrant at {self._where} failed to {action}{target} (HTTP {e.status_code}): {detail}"
            ) from e
        except (ApiException, httpx.HTTPError, OSError) as e:
            raise StoreUnavailable(f"cannot reach Qdrant at {self._where} to {action}{target}: {e}") from e
        except (ValueError, RuntimeError) as e:
            # Local mode reports a missing collection and a closed client with these.
            if "not found" in str(e).lower():
                raise NotFound(f"collection{target} not found in Qdrant at {self._where}") from e
            raise StoreUnavailable(f"Qdrant at {self._where} failed to {action}{target}: {e}") from e


# -- filters ---------------------------------------------------------------------------------


class _QdrantFilters:
    """qdrant-client's spelling of a filter (see `indexing.store.shared.translate`)."""

    def group(self, *, must=None, must_not=None, should=None) -> models.Filter:
        return models.Filter(should=should) if should is not None else models.Filter(must=must, must_not=must_not)

    def has_vector(self, vector_name: str):
        return models.HasVectorCondition(has_vector=vector_name)

    def range(self, key: str, *, gte=None, gt=None, lte=None, lt=None):
        return models.FieldCondition(key=key, range=models.Range(gte=gte, gt=gt, lte=lte, lt=lt))

    def match_any(self, key: str, values: list):
        return models.FieldCondition(key=key, match=models.MatchAny(any=values))

    def match_value(self, key: str, value: Any):
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))


_DIALECT = _QdrantFilters()


def to_qdrant_filter(filter: Filter | None) -> models.Filter | None:
    return translate(filter, _DIALECT)


# -- helpers ---------------------------------------------------------------------------------


def _as_sparse(keywords: SparseVector) -> models.SparseVector:
    indices, values = sparse_parts(keywords)
    return models.SparseVector(indices=indices, values=values)


def _keyword_vector_in(stored: dict[str, Any], sparse_vectors: dict[str, Any]) -> str | None:
    """The collection's keyword vector if its config really has it (older collections do not)."""
    wanted = stored.get("keyword_vector") or KEYWORD_VECTOR
    return wanted if wanted in sparse_vectors else None


def _response_detail(e: UnexpectedResponse) -> str:
    try:
        return str(e.structured().get("status", {}).get("error", "")) or e.reason_phrase
    except Exception:  # body not JSON
        return e.reason_phrase or str(e.status_code)
