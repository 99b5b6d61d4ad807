"""Fitting calibration maps from probe evidence (`indexing.probes`), with a held-out report.

Classes are weighted equally, so a confidence is the probability of relevance at even prior
odds; of the negatives' half, hard ones (near misses, out-of-domain hits) weigh most. Where a
collection gives no positives for a map (pictures without captions), the model prior's stand
in, against this collection's negatives. A quarter of the probes (by a fixed hash) is held out:
the report gives, on probes the fit did not see, the no-match rate of in-domain and
out-of-domain probes per mode and the reliability per confidence bin, and says which evidence
each map rests on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from indexing.calibration import SIDES, Calibration, Joint, Logistic, Prior, feature
from indexing.probes import Evidence, Example, JointExample, Probe
from indexing.types import SearchMode

if TYPE_CHECKING:
    from indexing.types import CollectionSchema

HOLDOUT = 0.25
# Share of the negative class given to hard negatives (see `weights`).
HARD_SHARE = 0.9
# Below this many positives and negatives a map is not fitted (too few to trust).
MIN_EXAMPLES = 5
BINS = 10


def fit_logistic(x: np.ndarray, y: np.ndarray, side: str, w: np.ndarray | None = None, l2: float = 1e-3) -> Logistic:
    """Weighted logistic regression (Newton); without `w`, each class weighs half the total."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if w is None:
        w = np.where(y == 1, 0.5 / max(n_pos, 1), 0.5 / max(n_neg, 1))
    w = np.asarray(w, dtype=np.float64) / np.sum(w)
    # Standardise for a well-conditioned Newton step, then map back.
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    z = (x - mu) / sd
    X = np.stack([z, np.ones_like(z)], axis=1)
    theta = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ theta, -60, 60)))
        grad = X.T @ (w * (p - y)) + l2 * np.array([theta[0], 0.0])
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + l2 * np.diag([1.0, 1e-9])
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    a = theta[0] / sd
    return Logistic(a=float(a), b=float(theta[1] - a * mu), side=side, positives=n_pos, negatives=n_neg)


def weights(rows: Sequence[Example]) -> np.ndarray:
    """Positives weigh half; of the negatives' half, hard ones `HARD_SHARE` and shuffled pairs
    the rest (a group that is missing leaves its share to the other). What the floor decides
    is whether a query's best hits are relevant: the hits that get there without being
    relevant are the negatives that matter, random pairs mostly pin the low end."""
    groups = [1 if r.label else (2 if r.hard else 3) for r in rows]
    counts = {g: groups.count(g) for g in (1, 2, 3)}
    hard = HARD_SHARE if counts[3] else 1.0
    share = {1: 0.5, 2: 0.5 * hard, 3: 0.5 * (1.0 - hard) if counts[2] else 0.5}
    return np.array([share[g] / counts[g] for g in groups])


def held_out(probe: int, seed: int = 0) -> bool:
    return hashlib.sha256(f"{seed}:{probe}".encode()).digest()[0] < 256 * HOLDOUT


def fit_maps(examples: Sequence[Example]) -> dict[str, Logistic]:
    """A map per key with enough of both classes, and a pooled one per (kind, side)."""
    maps = {}
    for key, rows, _ in _fittable(examples, pooled=True):
        side = key.split("/")[1]
        x = np.array([feature(side, r.score) for r in rows])
        m = fit_logistic(x, np.array([r.label for r in rows]), side, weights(rows))
        if m.a > 0:  # a map where higher scores mean less relevant is no calibration
            maps[key] = m
    return maps


def fit(
    evidence: Evidence,
    probes: Sequence[Probe],
    schema: CollectionSchema,
    items: int,
    floor: float = 0.5,
    prior: Prior | None = None,
) -> Calibration:
    """Maps fitted on all probes; the report from maps fitted without the held-out quarter.

    Where the collection gives no positives for a map (pictures without captions give no text
    query known to find them), the model's prior positives stand in, against this
    collection's own negatives: how high a matching pair scores is the model's property, how
    high the best non-matching items of this catalog score is the catalog's."""
    evidence, sources = with_prior(evidence, prior)
    train = [e for e in evidence.examples if not held_out(e.probe)]
    test = [e for e in evidence.examples if held_out(e.probe)]
    trial = Calibration(schema.model_id, schema.model_version, fit_maps(train))
    report = {
        "probes": _probe_counts(probes),
        "examples": {"positive": sum(e.label for e in evidence.examples), "negative": _negatives(evidence.examples)},
        "evidence": sources,
        "floor": floor,
        "held_out": {
            "no_match": _no_match_rates(trial, evidence, probes, floor),
            "reliability": _reliability(trial, test),
        },
    }
    maps = fit_maps(evidence.examples)
    joint = fit_joint(evidence.joint)
    report["thresholds"] = {k: m.score_at(floor) for k, m in maps.items()}
    report["joint"] = {k: {"dense": round(j.a_dense, 3), "keyword": round(j.a_keyword, 3)} for k, j in joint.items()}
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return Calibration(schema.model_id, schema.model_version, maps, at, items, report, joint)


def fit_joint(examples: Sequence[JointExample]) -> dict[str, Joint]:
    """A joint map per key with enough of both classes; none pooled across modalities (how
    much keywords say differs too much between them: `Calibration.joint_for`). A feature
    whose coefficient comes out negative is dropped and the rest refitted (on this data it
    only separates by accident)."""
    out = {}
    for key, rows, pos in _fittable(examples, pooled=False):
        X = np.array([[r.dense, feature(SIDES[1], r.keyword)] for r in rows])
        y = np.array([r.label for r in rows], dtype=np.float64)
        w = weights(rows)
        use = [0, 1]
        while use:
            coef, b = _fit_linear(X[:, use], y, w)
            if (coef > 0).all():
                break
            use = [u for u, c in zip(use, coef) if c > 0]
        if not use:
            continue
        a = dict(zip(use, coef))
        out[key] = Joint(float(a.get(0, 0.0)), float(a.get(1, 0.0)), float(b), pos, len(rows) - pos)
    return out


def _fittable(examples: Sequence, *, pooled: bool) -> list[tuple[str, list, int]]:
    """(key, its examples, positives) for each key with at least MIN_EXAMPLES of both
    classes; `pooled` adds "<kind>/<side>/*" over every modality."""
    by_key: dict[str, list] = defaultdict(list)
    for e in examples:
        by_key[e.key].append(e)
        if pooled:
            kind, side, _ = e.key.split("/")
            by_key[f"{kind}/{side}/*"].append(e)
    out = []
    for key, rows in sorted(by_key.items()):
        pos = sum(r.label for r in rows)
        if pos >= MIN_EXAMPLES and len(rows) - pos >= MIN_EXAMPLES:
            out.append((key, rows, pos))
    return out


def _fit_linear(X: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1e-3) -> tuple[np.ndarray, float]:
    """Weighted logistic regression on the columns of X (Newton, standardised)."""
    w = w / w.sum()
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0
    Z = np.hstack([(X - mu) / sd, np.ones((len(X), 1))])
    theta = np.zeros(Z.shape[1])
    ridge = np.diag([l2] * (Z.shape[1] - 1) + [1e-9])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(Z @ theta, -60, 60)))
        grad = Z.T @ (w * (p - y)) + ridge @ theta
        hess = (Z * (w * p * (1 - p))[:, None]).T @ Z + ridge
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    coef = theta[:-1] / sd
    return coef, float(theta[-1] - coef @ mu)


def with_prior(evidence: Evidence, prior: Prior | None) -> tuple[Evidence, dict[str, dict[str, str]]]:
    """The evidence with the prior's positives added for every map the collection has
    negatives but too few positives for; and, per map, where its examples came from."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in evidence.examples:
        counts[e.key][e.label] += 1
    added: list[Example] = []
    sources: dict[str, dict[str, str]] = {}
    for key in sorted(set(counts) | set(prior.positives if prior else ())):
        neg, pos = counts[key]
        borrowed = prior is not None and pos < MIN_EXAMPLES and neg >= MIN_EXAMPLES and key in prior.positives
        if borrowed:
            scores = prior.positives[key]
            # Negative probe numbers: never one of this collection's probes (held out by the same hash).
            added += [Example(key, float(x), 1, -1 - n) for n, x in enumerate(scores)]
            pos = len(scores)
        if pos or neg:
            sources[key] = {
                "positives": f"{pos} from {'the model prior (' + prior.source + ')' if borrowed else 'this collection'}",
                "negatives": f"{neg} from this collection",
            }
    if not added:
        return evidence, sources
    return Evidence(examples=evidence.examples + added, joint=evidence.joint, tops=evidence.tops), sources


def _negatives(examples: Sequence[Example]) -> int:
    return sum(1 - e.label for e in examples)


def _probe_counts(probes: Sequence[Probe]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for p in probes:
        counts[f"{p.kind} {p.origin}"] += 1
    return dict(sorted(counts.items()))


def _no_match_rates(cal: Calibration, ev: Evidence, probes: Sequence[Probe], floor: float) -> dict[str, dict]:
    """Share of held-out probes whose best hit stays under the floor, per mode and domain."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"in_domain": [0, 0], "out_of_domain": [0, 0]})
    for i, probe in enumerate(probes):
        if not held_out(i) or i not in ev.tops:
            continue
        domain = "in_domain" if probe.relevant else "out_of_domain"
        best: dict[str, float] = {}
        for side, hits in ev.tops[i].items():
            if not cal.covers(probe.kind, side):
                continue
            dense = side == SearchMode.DENSE.value
            confs = [cal.confidence(probe.kind, m, s if dense else None, None if dense else s) for m, s in hits]
            best[side] = max(confs, default=0.0)
        if SearchMode.DENSE.value in best and SearchMode.KEYWORD.value in best:
            best[SearchMode.HYBRID.value] = max(best.values())
        for mode, value in best.items():
            key = mode if probe.kind == "text" else f"image {mode}"
            counts[key][domain][0] += value < floor
            counts[key][domain][1] += 1
    return {
        mode: {
            **{d: (n / total if total else 0.0) for d, (n, total) in c.items()},
            "probes": {d: t for d, (_, t) in c.items()},
        }
        for mode, c in sorted(counts.items())
    }


def _reliability(cal: Calibration, test: Sequence[Example]) -> list[dict[str, Any]]:
    """Per confidence bin: mean confidence and the class-balanced share of positives."""
    n_pos = max(sum(e.label for e in test), 1)
    n_neg = max(_negatives(test), 1)
    bins: list[list[tuple[float, int]]] = [[] for _ in range(BINS)]
    for e in test:
        kind, side, modality = e.key.split("/")
        m = cal.map_for(kind, side, modality)
        if m is None:
            continue
        c = m.confidence(e.score)
        bins[min(int(c * BINS), BINS - 1)].append((c, e.label))
    rows = []
    for b, members in enumerate(bins):
        if not members:
            continue
        pos = sum(1 / n_pos for _, y in members if y)
        neg = sum(1 / n_neg for _, y in members if not y)
        rows.append(
            {
                "bin": f"{b / BINS:.1f}-{(b + 1) / BINS:.1f}",
                "n": len(members),
                "mean_confidence": round(sum(c for c, _ in members) / len(members), 4),
                "observed": round(pos / (pos + neg), 4),
            }
        )
    return rows
