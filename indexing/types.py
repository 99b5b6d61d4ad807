"""Domain types of the vector store: what goes in, what comes out, how it is filtered.

Backends translate these to their own client types; nothing above `indexing` sees a Qdrant
type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np

from encoders.common.errors import ModelMismatch
from encoders.text.keywords import SparseVector

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


# Name of the sparse vector holding keyword weights (`encoders.text.keywords`), next to the dense one.
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
class HasVector:
    """The point has a value for the named vector. Built by `Index` only, never from a
    user's filter: it is how a re-embedding finds the points a new vector still lacks."""

    vector_name: str


@dataclass(frozen=True)
class Filter:
    """All `must` conditions hold and no `must_not` condition holds. Empty matches everything."""

    must: tuple[Condition | HasVector, ...] = ()
    # Exclusions, e.g. "id any_of the query's own ids" for more-like-this searches.
    must_not: tuple[Condition | HasVector, ...] = ()

    def and_(self, *conditions: Condition | HasVector) -> Filter:
        return Filter(must=self.must + tuple(conditions), must_not=self.must_not)

    def and_not(self, *conditions: Condition | HasVector) -> Filter:
        return Filter(must=self.must, must_not=self.must_not + tuple(conditions))

    def is_empty(self) -> bool:
        return not self.must and not self.must_not


@dataclass(frozen=True)
class CollectionSchema:
    """What a collection was built with; searched only by the same model."""

    # Name of the dense vector in the store ("clip"). A collection may hold several dense
    # vectors, each built by its own model (`VectorSpec`); this names the one in use.
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


@dataclass(frozen=True)
class VectorSpec:
    """One dense vector of a collection and the model that fills it.

    A collection has an active vector (`Index.schema`) and may hold others, so a new model
    can be filled in next to the one still serving searches, then switched to.
    """

    # Name of the vector in the store ("clip", "clip_vit_l14").
    vector_name: str
    # Embedding width.
    dim: int
    # Model identity and weights tag, as in `CollectionSchema`.
    model_id: str
    model_version: str
    # True once every point was checked to have this vector (`Index.mark_complete`); a point
    # created later without it turns this back to False. Only complete vectors become active.
    complete: bool = False

    def matches(self, schema: CollectionSchema) -> bool:
        """Built by the model of `schema` (the name does not matter)."""
        return (self.model_id, self.model_version, self.dim) == (schema.model_id, schema.model_version, schema.dim)

    def schema(self, keyword_vector: str | None) -> CollectionSchema:
        return CollectionSchema(self.vector_name, self.dim, self.model_id, self.model_version, keyword_vector)

    @staticmethod
    def of(schema: CollectionSchema, *, complete: bool) -> VectorSpec:
        return VectorSpec(schema.vector_name, schema.dim, schema.model_id, schema.model_version, complete)


@dataclass
class Point:
    """A stored item. `point_id` is the UUID the backend uses; `id` is the public id."""

    point_id: str
    # Dense vectors by name: those written, or those asked for when read.
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
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
    """A thin backend: collections of points with named dense vectors (a registry of
    `VectorSpec`, the first one active), an optional named sparse keyword vector (IDF
    applied by the store) and a payload.

    Everything Loupe-specific (ids, source merging, schema checks) lives in
    `indexing.index.Index`, above this protocol, so both backends behave the same.

    Errors are domain errors only (`encoders.common.errors`): NotFound for a missing collection,
    StoreUnavailable for I/O or connection failures, never a backend exception.
    """

    def create_collection(self, name: str, schema: CollectionSchema) -> None:
        """Create with the schema persisted alongside (its vector active and complete); a
        no-op if `name` already exists (another process may have won the race), so callers
        re-read `get_schema`."""

    def get_schema(self, name: str) -> CollectionSchema | None:
        """The persisted schema of the active vector, or None if the collection does not exist."""

    def get_vectors(self, name: str) -> list[VectorSpec] | None:
        """Every dense vector of the collection, active first; None if it does not exist."""

    def set_vectors(self, name: str, specs: list[VectorSpec]) -> None:
        """Persist the vector registry in one write; `specs[0]` becomes the active vector.
        Each named vector must exist in the store (`create_vector`)."""

    def create_vector(self, name: str, vector_name: str, dim: int) -> None:
        """Add an empty dense (cosine) vector, replacing one of that name that an
        interrupted add or drop left behind. The registry is not touched."""

    def delete_vector(self, name: str, vector_name: str) -> None:
        """Remove a dense vector, values included; a no-op if there is none of that name.
        The registry is not touched."""

    def list_collections(self) -> list[str]: ...

    def get_info(self, name: str) -> dict[str, Any]:
        """Small JSON blob persisted with the collection (e.g. user metadata field types)."""

    def update_info(self, name: str, patch: dict[str, Any]) -> None:
        """Set top-level keys of the info blob, leaving other keys as they are."""

    def optimize(self, name: str) -> bool:
        """Build indexes now if the backend needs to be told; True if anything changed."""

    def upsert(self, name: str, points: list[Point]) -> None:
        """Write whole points: the dense vectors in `Point.vectors` (any other vector a point
        had is gone), the keyword vector if given, the payload."""

    def retrieve(self, name: str, point_ids: list[str], *, with_vectors: bool | Sequence[str] = False) -> list[Point]:
        """Points that exist, payload included. `with_vectors`: True for every vector, or
        the names of the vectors to read (dense ones, or the keyword vector)."""

    def overwrite_payloads(self, name: str, payloads: dict[str, dict[str, Any]]) -> None:
        """Replace the payloads of existing points (point id -> payload); vectors untouched."""

    def scroll(
        self, name: str, *, filter: Filter | None, limit: int, after: str | None = None
    ) -> tuple[list[Point], str | None]:
        """Payloads of points matching `filter` in point id order, starting at cursor
        `after`; with the cursor of the next page, or None after the last."""

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
        """Nearest by the dense vector `vector_name` (cosine), best first; points without
        that vector are not found. `exact`: compare with every point, not the HNSW graph."""

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
        vector_name: str,
        limit: int,
        offset: int = 0,
        filter: Filter | None = None,
        dense_threshold: float | None = None,
        candidates: int,
        rrf_k: int = RRF_K,
    ) -> list[ScoredPoint]:
        """RRF of the top `candidates` by dense vector `vector_name` (those scoring >=
        dense_threshold) and the top `candidates` by keywords, both filtered; scores are RRF
        scores."""

    def delete(self, name: str, point_ids: list[str]) -> None: ...

    def delete_by_filter(self, name: str, filter: Filter) -> int: ...

    def count(self, name: str, filter: Filter | None = None) -> int: ...

    def close(self) -> None: ...
