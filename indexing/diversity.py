"""Diversity: maximal marginal relevance over the hits' CLIP vectors (the retriever's last
optional stage), so a page is not ten shots of one product."""

from __future__ import annotations

import numpy as np

from indexing.rerank import RerankConfigError


def mmr(
    query: np.ndarray | None,
    vectors: np.ndarray,
    relevance: np.ndarray | None,
    lambda_: float,
    k: int | None = None,
) -> list[int]:
    """Maximal marginal relevance: a permutation of range(len(vectors)).

    Greedily picks argmax(lambda_ * relevance_i - (1 - lambda_) * max cos(v_i, v_selected)),
    k times (all when None), then appends the rest by relevance. `relevance` is any scale
    (min-max normalised to 0..1 here, so the two terms are comparable); when None it is the
    cosine to `query`. Rows of zeros (hits without a vector) are similar to nothing. Ties go
    to the lower index, so lambda_=1 returns the relevance order.
    """
    if not (isinstance(lambda_, int | float) and 0 <= lambda_ <= 1):
        raise RerankConfigError(f"mmr lambda must be between 0 and 1, got {lambda_!r}", field="lambda")
    unit = _unit_rows(np.asarray(vectors, dtype=np.float64))
    n = len(unit)
    if relevance is None:
        if query is None:
            raise ValueError("mmr needs relevance or a query vector")
        relevance = unit @ _unit_rows(np.asarray(query, dtype=np.float64).reshape(1, -1))[0]
    rel = np.asarray(relevance, dtype=np.float64).reshape(-1)
    if len(rel) != n:
        raise ValueError(f"mmr got {len(rel)} relevance values for {n} vectors")
    if not np.all(np.isfinite(rel)):
        raise ValueError("mmr relevance must be finite numbers")
    if n and rel.max() > rel.min():
        rel = (rel - rel.min()) / (rel.max() - rel.min())
    else:
        rel = np.zeros(n)
    k = n if k is None else max(0, min(int(k), n))
    chosen: list[int] = []
    left = np.ones(n, dtype=bool)
    closest = np.zeros(n)  # max cosine to the chosen hits; no penalty before the first pick
    for _ in range(k):
        gain = np.where(left, lambda_ * rel - (1 - lambda_) * closest, -np.inf)
        pick = int(np.argmax(gain))  # the first of equal gains: the lower index
        chosen.append(pick)
        left[pick] = False
        similarity = unit @ unit[pick]
        closest = similarity if len(chosen) == 1 else np.maximum(closest, similarity)
    rest = sorted(np.flatnonzero(left).tolist(), key=lambda i: (-rel[i], i))
    return chosen + rest


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    if matrix.ndim != 2:
        raise ValueError(f"mmr vectors must be a 2-d array (hits x dims), got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
