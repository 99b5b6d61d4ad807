"""Ranking pages of search hits, and checks of search requests.

Equal scores (common in keyword search over similar texts, and in RRF) are ordered by
public id, so pages never overlap or skip items: a store returns tied items in arbitrary,
limit-dependent order (Qdrant Edge repeats one tied item on every page), so when a tie
crosses a page boundary the ranking is re-read from the top, up to `_TIE_WINDOW` items.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from encoders.common.errors import InvalidInput
from encoders.text.keywords import SparseVector
from indexing.types import CollectionSchema, ScoredPoint, SearchMode

_MODES = tuple(m.value for m in SearchMode)
# Most items read to order a group of equal scores that crosses a page boundary; beyond it,
# which members of a larger tie group make the page is up to the store.
_TIE_WINDOW = 2000


def page(fetch: Callable[[int, int], list[ScoredPoint]], offset: int, limit: int) -> list[ScoredPoint]:
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
    return rank_key(hit.score, hit.payload, hit.point_id)


def rank_key(score: float, payload: dict, point_id: str = "") -> tuple[float, str]:
    """Best first, equal scores by public id: the one order of every ranking."""
    return (-score, str(payload.get("id", point_id)))


def check_mode(mode: Any) -> SearchMode:
    try:
        return SearchMode(mode)
    except ValueError:
        raise InvalidInput(f"unknown search mode {mode!r}; valid modes: {', '.join(_MODES)}", field="mode") from None


def check_query_vector(vector: Any, schema: CollectionSchema, name: str) -> np.ndarray:
    if vector is None:
        raise InvalidInput("a query vector is needed for dense and hybrid search", field="vector")
    vector = np.asarray(vector, dtype=np.float32)
    if vector.shape != (schema.dim,) or not np.all(np.isfinite(vector)):
        raise InvalidInput(
            f"query vector must be {schema.dim} finite numbers for collection {name!r}, got shape {vector.shape}",
            field="vector",
        )
    return vector


def check_keyword_query(query: Any, mode: SearchMode) -> SparseVector:
    if query is None:
        raise InvalidInput(f"{mode.value} search needs a keyword query", field="keyword_query")
    if not isinstance(query, SparseVector) or len(query.indices) != len(query.values):
        raise InvalidInput(
            "keyword query must be a SparseVector (encoders.text.keywords.query_vector)", field="keyword_query"
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
