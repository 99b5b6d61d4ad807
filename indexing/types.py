"""Domain types of the vector store: what goes in, what comes out, how it is filtered.

Backends translate these to their own client types; nothing above `indexing` sees a Qdrant
type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np

from encoders.errors import ModelMismatch
from encoders.keywords import SparseVector

Scalar = str | int | float | bool


class Modality(str, Enum):
    IMAGE = "image"
    TEXT = "text"
    AUDIO_SEGMENT = "audio_segment"
    # A whole recording: full transcript in "text", "duration_s"; its segments point at it
    # with "parent_id".
    AUDIO = "audio"


class SearchMode(str, Enum):
    """How `Index.search` ranks: CLIP vector, keyword (sparse) vector, or both fused (RRF)."""

    DENSE = "dense"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


# Name of the sparse vector holding keyword weights (`encoders.keywords`), next to the dense one.
KEYWORD_VECTOR = "keywords"


class KeywordsUnavailable(ModelMismatch):
    """Keyword or hybrid search on a collection created without a keyword vector.

    A ModelMismatch (FAILED_PRECONDITION): the collection was built without the keyword
    encoder, and only re-indexing its content into a new collection adds it.
    """


def keywords_unavailable(name: str) -> KeywordsUnavailable:
    return KeywordsUnavailable(
        f"collection {name!r} was created without a keyword vector (before keyword search existed), "
        "so it cannot be searched by keywords; search it with mode 'dense', or re-index its content "
        "into a new collection to make keyword and hybrid search available",
        field="mode",
    )


@dataclass(frozen=True)
class Range:
    """Numeric range; any bound may be None (open)."""

    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


@dataclass(frozen=True)
class Condition:
    """One condition on a payload field. Exactly one of equals / any_of / range is set."""

    # Payload key: a built-in ("modality", "sha256", "model_id") or "meta.<user field>".
    key: str
    equals: Scalar | None = None
    any_of: tuple[Scalar, ...] | None = None
    range: Range | None = None


@dataclass(frozen=True)
class Filter:
    """All `must` conditions hold and no `must_not` condition holds. Empty matches everything."""

    must: tuple[Condition, ...] = ()
    # Exclusions, e.g. "id any_of the query's own ids" for more-like-this searches.
    must_not: tuple[Condition, ...] = ()

    def and_(self, *conditions: Condition) -> "Filter":
        return Filter(must=self.must + tuple(conditions), must_not=self.must_not)

    def and_not(self, *conditions: Condition) -> "Filter":
        return Filter(must=self.must, must_not=self.must_not + tuple(conditions))

    def is_empty(self) -> bool:
        return not self.must and not self.must_not


@dataclass(frozen=True)
class CollectionSchema:
    """What a collection was built with; searched only by the same model."""

    # Name of the dense vector in the store, one per encoder family ("clip").
    vector_name: str
    # Embedding width of that vector.
    dim: int
    # Model identity, e.g. "open_clip:ViT-B-32/laion2b_s34b_b79k" or "bundled:tiny-clip".
    model_id: str
    # Hash or tag that changes whenever the weights change.
    model_version: str
    # Name of the sparse keyword vector, or None for a collection created without one
    # (before keyword search existed): keyword and hybrid search are then unavailable and
    # keywords given to upsert are not stored. Not part of the model check.
    keyword_vector: str | None = KEYWORD_VECTOR


@dataclass
class Point:
    """A stored item. `point_id` is the UUID the backend uses; `id` is the public id."""

    point_id: str
    vector: np.ndarray | None
    payload: dict[str, Any] = field(default_factory=dict)
    # Keyword (sparse) vector; None or empty for none. Read back only with `with_vectors`.
    keywords: SparseVector | None = None


@dataclass(frozen=True)
class ScoredPoint:
    point_id: str
    score: float
    payload: dict[str, Any]


# Built-in payload fields holding keywords; both backends index them so filtered search,
# id lookups and source filters stay fast on large collections.
INDEXED_KEYWORD_FIELDS = ("id", "modality", "sha256", "sources", "parent_id", "language")

# Reciprocal rank fusion of hybrid search: score = sum over the two rankings of
# 1 / (RRF_K + rank), rank counted from 0 (Qdrant's formula). 60 is the constant of the
# original RRF paper: an item found by both rankings outranks one found by only one.
RRF_K = 60


class VectorStore(Protocol):
    """A thin backend: collections of points with one named dense vector, an optional named
    sparse keyword vector (IDF applied by the store) and a payload.

    Everything Loupe-specific (ids, source merging, schema checks) lives in
    `indexing.index.Index`, above this protocol, so both backends behave the same.

    Errors are domain errors only (`encoders.errors`): NotFound for a missing collection,
    StoreUnavailable for I/O or connection failures, never a backend exception.
    """

    def create_collection(self, name: str, schema: CollectionSchema) -> None:
        """Create with the schema persisted alongside; a no-op if `name` already exists
        (another process may have won the race), so callers re-read `get_schema`."""

    def get_schema(self, name: str) -> CollectionSchema | None:
        """The persisted schema, or None if the collection does not exist."""

    def list_collections(self) -> list[str]: ...

    def get_info(self, name: str) -> dict[str, Any]:
        """Small JSON blob persisted with the collection (e.g. user metadata field types)."""

    def update_info(self, name: str, patch: dict[str, Any]) -> None:
        """Set top-level keys of the info blob, leaving other keys as they are."""

    def optimize(self, name: str) -> bool:
        """Build indexes now if the backend needs to be told; True if anything changed."""

    def upsert(self, name: str, points: list[Point]) -> None: ...

    def retrieve(self, name: str, point_ids: list[str], *, with_vectors: bool = False) -> list[Point]: ...

    def search(
        self,
        name: str,
        vector: np.ndarray,
        *,
        limit: int,
        offset: int = 0,
        filter: Filter | None = None,
        score_threshold: float | None = None,
    ) -> list[ScoredPoint]:
        """Nearest by the dense vector (cosine), best first."""

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
        """Points sharing a term with `query`, by sum of query x stored value x IDF. The
        collection must have `schema.keyword_vector`."""

    def search_hybrid(
        self,
        name: str,
        vector: np.ndarray,
        query: SparseVector,
        *,
        limit: int,
        offset: int = 0,
        filter: Filter | None = None,
        dense_threshold: float | None = None,
        candidates: int,
        rrf_k: int = RRF_K,
    ) -> list[ScoredPoint]:
        """RRF of the top `candidates` by dense vector (those scoring >= dense_threshold)
        and the top `candidates` by keywords, both filtered; scores are RRF scores."""

    def delete(self, name: str, point_ids: list[str]) -> None: ...

    def delete_by_filter(self, name: str, filter: Filter) -> int: ...

    def count(self, name: str, filter: Filter | None = None) -> int: ...

    def close(self) -> None: ...
