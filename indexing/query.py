"""`SearchQuery`: one search, as the RPC boundary validated it, passed down unchanged.

LoupeApi builds it from the request (collection, mode, limit, offset, modalities, filter
conditions, threshold); the encoder's vector and the keyword vector are added with
`with_vectors`; the store's owner (the Ingress) resolves the conditions against the collection and runs
it. The Ask worker builds its retrieval query the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from indexing.types import Condition, Modality, SearchMode

if TYPE_CHECKING:
    import numpy as np

    from encoders.text.keywords import SparseVector

DEFAULT_LIMIT = 10
# Ask retrieves in hybrid mode unless the request names one: keywords find codes and ids that
# CLIP's text tower blurs, the dense side finds what is described in other words.
ASK_MODE = SearchMode.HYBRID.value


@dataclass(frozen=True)
class SearchQuery:
    collection: str
    # dense | keyword | hybrid (SearchMode values).
    mode: str = SearchMode.DENSE.value
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    # Empty: every modality.
    modalities: tuple[Modality, ...] = ()
    # User-level filter conditions; field names are resolved by the Index.
    conditions: tuple[Condition, ...] = ()
    # A cosine in dense and hybrid mode, a BM25 score in keyword mode; None: no floor.
    score_threshold: float | None = None
    exclude_ids: tuple[str, ...] = ()
    # The CLIP query vector (dense and hybrid mode).
    vector: np.ndarray | None = None
    # The keyword query (`encoders.text.keywords.query_vector`; keyword and hybrid mode).
    keywords: SparseVector | None = None
    # Search with this stored item's vector instead of `vector` (and leave the item out).
    like_id: str | None = None
    # What the query is ("text" or "image"): which calibration maps score its hits.
    kind: str = "text"
    # On a calibrated collection, hits under this confidence are dropped (0: none are).
    min_confidence: float = 0.0
    # Exact (brute-force) dense search instead of the approximate index: for evals.
    exact: bool = False
    # The query's text as searched (masked where the caller may not see personal data): what
    # a reranker reads. Empty for image queries.
    text: str = ""
    # Second stage: a reranker by name ("" the collection's default, "none" off), the hits it
    # may reorder (0: its configured bound), and MMR's lambda (None: no diversity stage).
    rerank: str = ""
    rerank_candidates: int = 0
    mmr_lambda: float | None = None

    @property
    def needs_vector(self) -> bool:
        return self.mode != SearchMode.KEYWORD.value and self.like_id is None

    @property
    def needs_keywords(self) -> bool:
        return self.mode != SearchMode.DENSE.value

    def with_vectors(self, vector: np.ndarray | None = None, keywords: SparseVector | None = None) -> SearchQuery:
        return replace(self, vector=vector, keywords=keywords)

    def page_probe(self) -> SearchQuery:
        """The same query asking for one hit more: whether there is a next page."""
        return replace(self, limit=self.limit + 1)

    def __repr__(self) -> str:  # vectors are long and say nothing in a log line
        return (
            f"SearchQuery({self.collection!r}, mode={self.mode}, limit={self.limit}, offset={self.offset}, "
            f"modalities={[m.value for m in self.modalities]}, conditions={len(self.conditions)}, "
            f"threshold={self.score_threshold}, like_id={self.like_id!r}, kind={self.kind}, "
            f"min_confidence={self.min_confidence}, exact={self.exact}, rerank={self.rerank!r}, "
            f"mmr_lambda={self.mmr_lambda})"
        )


@dataclass(frozen=True)
class Found:
    """One page of hits for a SearchQuery, best first."""

    hits: list[tuple[dict[str, Any], float]]
    # Whether a next page has hits (read by asking for one more).
    more: bool = False
    # Each hit's calibrated confidence (indexing.calibration); None: the collection is not
    # calibrated for this query, and `uncalibrated` says why.
    confidences: list[float] | None = None
    uncalibrated: str = ""
    # Seconds per retriever stage (candidates, fusion, rerank, diversity).
    stages: dict[str, float] = field(default_factory=dict)
    # The rerank stage: "" (not asked), "reranked", "skipped: ...", "failed: ..." (first-stage
    # order kept); its scores per hit (None: not reranked). Never a confidence.
    rerank: str = ""
    rerank_scores: list[float | None] | None = None
    # The diversity stage, when asked: what it did.
    diversity: str = ""

    @property
    def calibrated(self) -> bool:
        return self.confidences is not None
