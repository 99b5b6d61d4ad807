"""The retriever: every search (both transports, Ask, evals, the web page) runs these stages.

    candidates   per ranker (dense CLIP, keyword BM25) and result modality, from the store
    fusion       hybrid only: the rankers' scores put on one scale (log-odds of relevance) and
                 the larger kept, so an item is as good as its best evidence
    confidence   the collection's calibrated probability of relevance; hits under the floor drop
    rerank       optional: a cross-encoder or rerank endpoint reorders the top candidates
    diversity    optional: maximal marginal relevance over the CLIP vectors
    page         offset..offset+limit, and whether a next page exists

Fusion needs a common currency. Reciprocal-rank fusion (what the store offers) rewards items
both rankers found, so on a catalog mixing pictures and texts the texts bury the pictures:
recall@10 0.57 against dense 0.98 on the shapes eval. Calibrated confidence is that currency:
a cosine of 0.8 text-to-text and 0.3 text-to-image, and a BM25 of 12, each become log-odds of
relevance fitted for this collection (`indexing.calibration`). Each candidate is scored by
both rankers (the one that did not find it is asked for its score) and ranked by the
collection's joint map for its modality, `a * cosine + c * log(1 + BM25) + b`, which learned
how far to trust each ranker here; where no joint map was fitted, by the larger of the two
single-ranker log-odds. Log-odds, not probabilities, so near-certain hits still order. A
collection not calibrated yet is ranked with its model's prior (`indexing.calibration.Prior`);
with neither, by reciprocal rank.

Stage timings land in `Found.stages` (seconds) for spans and metrics at the service.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from indexing.calibration import SIDES, Calibration, Calibrations, Logistic, Priors, feature
from indexing.index import HYBRID_CANDIDATES
from indexing.query import Found, SearchQuery
from indexing.ranking import rank_key
from indexing.types import RRF_K, Condition, Filter, SearchMode

if TYPE_CHECKING:
    from indexing.index import Index
    from indexing.rerank import RerankConfig, Reranker
    from indexing.types import CollectionSchema

DENSE, KEYWORD, HYBRID = (m.value for m in (SearchMode.DENSE, SearchMode.KEYWORD, SearchMode.HYBRID))


@dataclass(frozen=True)
class SecondStage:
    """What runs after the first stage: a reranker over the best `candidates` hits, then MMR."""

    reranker: Reranker | None = None
    config: RerankConfig | None = None
    # The query's text (what a reranker reads); empty for image queries.
    text: str = ""
    # The operator's name for the reranker: what callers are told (never its address).
    label: str = ""
    # 0..1; None: no diversity stage.
    mmr_lambda: float | None = None
    # Hits the diversity stage reorders (the reranker's bound is its config's `candidates`).
    mmr_candidates: int = 50

    @property
    def active(self) -> bool:
        return self.reranker is not None or self.mmr_lambda is not None

    @property
    def window(self) -> int:
        rerank = self.config.candidates if self.reranker is not None and self.config is not None else 0
        return max(rerank, self.mmr_candidates if self.mmr_lambda is not None else 0)


@dataclass
class _Hit:
    payload: dict[str, Any]
    score: float
    confidence: float | None = None
    rerank_score: float | None = None


@dataclass
class _Timer:
    stages: dict[str, float] = field(default_factory=dict)

    def run(self, stage: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - start


class Retriever:
    def __init__(self, index: Index, calibrations: Calibrations, priors: Priors | None = None) -> None:
        self.index, self.calibrations = index, calibrations
        self.priors = priors or Priors()

    def search(self, schema: CollectionSchema, query: SearchQuery, second: SecondStage = SecondStage()) -> Found:
        """The page of hits for `query` in `schema`'s model's vector, with confidences when the
        collection is calibrated for that model, the query's kind and mode."""
        timer = _Timer()
        resolved = self.index.schema_for(query.collection, schema)
        vector_name = resolved.vector_name
        cal, why = self.calibrations.get(query.collection, resolved)
        prior = self.priors.get(resolved.model_id, resolved.model_version)
        if cal is not None:
            cal = cal.with_fallback(prior)
        if cal is not None and not cal.covers(query.kind, query.mode):
            why = f"the calibration of {query.collection!r} has no map for {query.kind} queries in {query.mode} mode"
            cal = None
        if query.like_id is not None and query.vector is None:
            _, vector = self.index.get_vector(query.collection, query.like_id, vector_name)
            query = replace(query, vector=vector, exclude_ids=(*query.exclude_ids, query.like_id), like_id=None)
        # The first stage reads what the later stages reorder, from the top.
        page_query = query
        if second.active:
            page_query = replace(query, offset=0, limit=max(query.offset + query.limit, second.window))
        if query.mode == HYBRID:
            maps = cal if cal is not None else prior
            hits, more = self._hybrid(page_query, vector_name, maps, cal is not None, timer)
        else:
            hits, more = timer.run("candidates", lambda: self._single(page_query, vector_name, cal))
        notes: dict[str, str] = {}
        if second.active:
            hits = self._second(query, hits, second, vector_name, timer, notes)
            more = more or len(hits) > query.offset + query.limit
            hits = hits[query.offset : query.offset + query.limit]
        return Found(
            hits=[(h.payload, h.score) for h in hits],
            more=more,
            confidences=[h.confidence or 0.0 for h in hits] if cal is not None else None,
            uncalibrated="" if cal is not None else why,
            stages=timer.stages,
            rerank=notes.get("rerank", ""),
            rerank_scores=[h.rerank_score for h in hits] if "rerank" in notes else None,
            diversity=notes.get("diversity", ""),
        )

    # -- first stage ---------------------------------------------------------------------------

    def _single(self, query: SearchQuery, vector_name: str, cal: Calibration | None) -> tuple[list[_Hit], bool]:
        """Dense or keyword mode. Calibrated with a floor: each result modality is read with the
        score its map needs (the store's threshold) and the rankings merged by score, so pages
        stay consistent."""
        probe = query.page_probe()
        floor, side = query.min_confidence, query.mode
        if cal is None or floor <= 0:
            read = self.index.run_query(probe, vector_name=vector_name)
        else:
            window = probe.offset + probe.limit
            merged: list[tuple[dict, float]] = []
            for mods, m in cal.groups(query.kind, side, query.modalities):
                threshold = m.score_at(floor)
                if threshold is None:
                    continue
                if query.score_threshold is not None:
                    threshold = max(threshold, query.score_threshold)
                part = replace(probe, modalities=mods, offset=0, limit=window, score_threshold=threshold)
                merged += self.index.run_query(part, vector_name=vector_name)
            read = sorted(merged, key=lambda h: rank_key(h[1], h[0]))[probe.offset : window]
        dense = side == DENSE
        hits = []
        for p, s in read[: query.limit]:
            conf = None
            if cal is not None:
                conf = cal.confidence(query.kind, _modality(p), s if dense else None, None if dense else s)
            hits.append(_Hit(p, s, conf))
        return hits, len(read) > query.limit

    def _hybrid(
        self, query: SearchQuery, vector_name: str, maps: Calibration | None, calibrated: bool, timer: _Timer
    ) -> tuple[list[_Hit], bool]:
        n = max(query.offset + query.limit + 1, HYBRID_CANDIDATES)

        def candidates() -> tuple[dict[str, dict], dict[str, float], dict[str, float]]:
            base = replace(query, offset=0, limit=n, min_confidence=0.0)
            dense = self.index.run_query(replace(base, mode=DENSE), vector_name=vector_name)
            keyword = []
            if query.keywords is not None and query.keywords.indices:  # "???" has no words to match
                keyword = self.index.run_query(
                    replace(base, mode=KEYWORD, score_threshold=None), vector_name=vector_name
                )
            payloads = {p["id"]: p for p, _ in dense + keyword}
            scores = {DENSE: {p["id"]: s for p, s in dense}, KEYWORD: {p["id"]: s for p, s in keyword}}
            # Each candidate's score from the ranker that did not find it (a keyword-only hit's
            # cosine, a dense-only hit's BM25): fusion compares whole evidence.
            for side in SIDES:
                missing = [i for i in payloads if i not in scores[side]]
                if missing and maps is not None and (side == DENSE or keyword):
                    only = Filter(must=(Condition(key="id", any_of=tuple(missing)),))
                    found = self.index.search(
                        query.collection,
                        query.vector,
                        limit=len(missing),
                        filter=only,
                        mode=side,
                        keyword_query=query.keywords,
                        vector_name=vector_name,
                    )
                    scores[side].update((p["id"], s) for p, s in found)
            return payloads, scores[DENSE], scores[KEYWORD]

        payloads, dense, keyword = timer.run("candidates", candidates)

        def fuse() -> list[_Hit]:
            if maps is None:
                return _reciprocal_rank(payloads, dense, keyword, query.score_threshold)
            ranked = []
            for i, p in payloads.items():
                d, k = dense.get(i), keyword.get(i)
                if query.score_threshold is not None and (d is None or d < query.score_threshold) and not k:
                    continue
                joint = maps.joint_for(query.kind, _modality(p))
                if joint is not None and d is not None:
                    z = joint.log_odds(d, k or 0.0)
                else:
                    z = max(_log_odds(maps, query.kind, DENSE, p, d), _log_odds(maps, query.kind, KEYWORD, p, k))
                conf = _sigmoid(z)
                ranked.append((-z, str(i), _Hit(p, conf, conf if calibrated else None)))
            # By log-odds, not the rounded probability: near-certain hits still order.
            return [h for *_, h in sorted(ranked, key=lambda r: r[:2])]

        fused = timer.run("fusion", fuse)
        if calibrated and query.min_confidence > 0:
            fused = [h for h in fused if (h.confidence or 0.0) >= query.min_confidence]
        end = query.offset + query.limit
        return fused[query.offset : end], len(fused) > end

    # -- second stage --------------------------------------------------------------------------

    def _second(
        self,
        query: SearchQuery,
        hits: list[_Hit],
        second: SecondStage,
        vector_name: str,
        timer: _Timer,
        notes: dict[str, str],
    ) -> list[_Hit]:
        from indexing.diversity import mmr
        from indexing.rerank import rerank

        if second.reranker is not None and second.config is not None:
            # The reranker reads what any caller may be shown: personal data is masked first
            # (a rerank endpoint is another service; it gets no more than the page would).
            def reranked():
                texts: list[str | None] = [None] * len(hits)
                sent = 0
                for i, h in enumerate(hits):  # only the hits that will be sent are masked
                    text = _text_of(h.payload)
                    if text and sent < second.config.candidates:
                        texts[i], sent = self.index.privacy.shown(query.collection, text), sent + 1
                return rerank(second.reranker, second.text, texts, second.config)

            done = timer.run("rerank", reranked)
            for h, s in zip(hits, done.scores):
                h.rerank_score = s
            hits = [hits[i] for i in done.order]
            notes["rerank"] = _shown_status(done.status, second.label or second.reranker.identity)
        if second.mmr_lambda is not None and hits:

            def diversify() -> list[_Hit]:
                top = hits[: second.mmr_candidates]
                vectors = self._vectors(query.collection, [h.payload["id"] for h in top], vector_name)
                if "rerank" in notes and notes["rerank"].startswith("reranked"):
                    # Rerank scores and first-stage scores are on different scales: the
                    # reranked order is the relevance.
                    relevance = np.linspace(1.0, 0.0, num=len(top)) if len(top) > 1 else np.ones(1)
                else:
                    relevance = np.array([h.score for h in top], dtype=np.float64)
                q = query.vector if query.vector is not None else np.zeros(vectors.shape[1], dtype=np.float32)
                order = mmr(q, vectors, relevance, second.mmr_lambda)
                return [top[i] for i in order] + hits[second.mmr_candidates :]

            hits = timer.run("diversity", diversify)
            notes["diversity"] = f"mmr lambda {second.mmr_lambda:g} over {min(len(hits), second.mmr_candidates)} hits"
        return hits

    def _vectors(self, name: str, ids: list[str], vector_name: str) -> np.ndarray:
        schema = self.index.schema(name)
        dim = schema.dim
        points = self.index.points_with_vectors(name, ids, vector_name)
        out = np.zeros((len(ids), dim), dtype=np.float32)
        for row, public_id in enumerate(ids):
            v = points.get(public_id)
            if v is not None:
                out[row] = v
        return out


def _shown_status(status: str, label: str) -> str:
    """The rerank stage's outcome as a caller sees it: which reranker, and why it failed in
    words that name no host, port or answer body (the whole reason is in the service log)."""
    if status == "reranked":
        return f"reranked by {label}"
    if not status.startswith("failed: "):
        return status
    reason = status.removeprefix("failed: ")
    if reason.startswith("timed out"):
        why = re.match(r"timed out after [0-9.]+ s", reason)
        return f"failed: {label} {why.group(0) if why else 'timed out'}"
    if "unreachable" in reason:
        return f"failed: {label} is unreachable"
    status_code = re.search(r"answered HTTP (\d{3})", reason)
    if status_code:
        return f"failed: {label} answered HTTP {status_code.group(1)}"
    return f"failed: {label} gave an unusable answer"


def _modality(payload: dict) -> str:
    return payload.get("modality") or "image"


def _text_of(payload: dict) -> str | None:
    """What a reranker reads of an item: its text (a text item, OCR text, a transcript chunk),
    else a caption-like metadata string; None for a picture with neither."""
    text = (payload.get("text") or "").strip()
    if text:
        return text
    meta = payload.get("meta") or {}
    for key in ("caption", "title", "description", "alt", "name"):
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _log_odds(maps: Calibration, kind: str, side: str, payload: dict, score: float | None) -> float:
    """The map's log-odds of relevance for `score`; -inf without a score or a map (and for a
    zero BM25: no shared word is no keyword evidence)."""
    if score is None or (side == KEYWORD and score <= 0):
        return -math.inf
    m: Logistic | None = maps.map_for(kind, side, _modality(payload))
    if m is None:
        return -math.inf
    return m.a * feature(side, score) + m.b


def _sigmoid(z: float) -> float:
    if z == -math.inf:
        return 0.0
    return 1.0 / (1.0 + math.exp(-min(max(z, -60.0), 60.0)))


def _reciprocal_rank(
    payloads: dict[str, dict], dense: dict[str, float], keyword: dict[str, float], threshold: float | None
) -> list[_Hit]:
    """Without maps: 1 / (RRF_K + rank) summed over the rankings (rank from 0, ties by id)."""
    fused: dict[str, float] = dict.fromkeys(payloads, 0.0)
    for scores, floor in ((dense, threshold), (keyword, None)):
        ranked = sorted(
            (i for i, s in scores.items() if floor is None or s >= floor),
            key=lambda i: rank_key(scores[i], payloads[i]),
        )
        for rank, i in enumerate(ranked):
            fused[i] += 1.0 / (RRF_K + rank)
    hits = [_Hit(payloads[i], s) for i, s in fused.items() if s > 0]
    return sorted(hits, key=lambda h: rank_key(h.score, h.payload))
