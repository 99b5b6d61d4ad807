"""What both Qdrant backends share: result shaping, vector conversion, and the filter
translation (one algorithm; each backend's `FilterDialect` builds its library's objects)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from encoders.text.keywords import SparseVector
from indexing.types import Condition, Filter, HasVector, ScoredPoint


def scored(hits: Any) -> list[ScoredPoint]:
    return [ScoredPoint(point_id=str(h.id), score=float(h.score), payload=dict(h.payload or {})) for h in hits]


def as_list(vector: np.ndarray) -> list[float]:
    return np.asarray(vector, dtype=np.float32).reshape(-1).tolist()


def sparse_parts(keywords: SparseVector) -> tuple[list[int], list[float]]:
    return [int(i) for i in keywords.indices], [float(v) for v in keywords.values]


def sparse_of(vectors: Any, keyword_vector: str | None) -> SparseVector | None:
    """The stored keyword vector out of a point's named vectors (None if it has none)."""
    if not keyword_vector or not hasattr(vectors, "items") or keyword_vector not in vectors:
        return None
    stored = vectors[keyword_vector]
    return SparseVector(list(stored.indices), [float(v) for v in stored.values])


def dense_of(vectors: Any, keyword_vector: str | None) -> dict[str, np.ndarray]:
    """The dense vectors out of a point's named vectors, by name."""
    if not hasattr(vectors, "items"):
        return {}
    return {n: np.asarray(v, dtype=np.float32) for n, v in vectors.items() if n != keyword_vector}


# -- filters ---------------------------------------------------------------------------------


class FilterDialect(Protocol):
    """How one backend's library spells the parts of a filter."""

    def group(self, *, must: list | None = None, must_not: list | None = None, should: list | None = None) -> Any: ...

    def has_vector(self, vector_name: str) -> Any: ...

    def range(self, key: str, *, gte=None, gt=None, lte=None, lt=None) -> Any: ...

    def match_any(self, key: str, values: list) -> Any: ...

    def match_value(self, key: str, value: Any) -> Any: ...


def translate(filter: Filter | None, dialect: FilterDialect) -> Any:
    """Loupe's `Filter` in the backend's terms; None for no filter."""
    if filter is None or filter.is_empty():
        return None
    return dialect.group(
        must=[_condition(c, dialect) for c in filter.must] or None,
        must_not=[_condition(c, dialect) for c in filter.must_not] or None,
    )


def _condition(c: Condition | HasVector, dialect: FilterDialect) -> Any:
    if isinstance(c, HasVector):
        return dialect.has_vector(c.vector_name)
    if c.range is not None:
        r = c.range
        return dialect.range(c.key, gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)
    if c.any_of is not None:
        values = list(c.any_of)
        if all(isinstance(v, str) for v in values) or all(_is_int(v) for v in values):
            return dialect.match_any(c.key, values)
        # Qdrant's MatchAny takes only strings or only integers: OR single matches instead.
        return dialect.group(should=[_condition(Condition(key=c.key, equals=v), dialect) for v in values])
    if isinstance(c.equals, float):
        # Qdrant has no float equality; a closed range is the same test.
        return dialect.range(c.key, gte=c.equals, lte=c.equals)
    return dialect.match_value(c.key, c.equals)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
