"""Calibrated confidence: the probability that a search hit is relevant, fitted per collection.

A raw score does not transfer: a cosine of 0.3 is a strong match for one model and noise for
another, text-to-text cosines run far higher than text-to-image ones, BM25 grows with the
collection, and hybrid scores are rank-fusion sums. `fit` learns, for one collection and the
model version that embedded it, one map per (query kind, ranking, result modality):

    confidence = 1 / (1 + exp(-(a * x + b)))     x = cosine (dense) or log(1 + BM25) (keyword)

keyed "text/dense/image", "text/keyword/text", "image/dense/image", ..., plus a pooled
"<kind>/<ranking>/*" for a modality the fit saw no examples of. Hybrid mode uses both rankings:
a hit's confidence is the larger of its dense and its keyword confidence.

Examples come from probes (`Probe`): a query and the ids relevant to it (none: out of domain).
- Positive: a probe's relevant item, scored against the probe.
- Negative: the top hits of out-of-domain probes, and shuffled pairs (a positive probe scored
  against a random other item whose text differs).
Classes are weighted equally, so a confidence is the probability of relevance at even prior
odds. A quarter of the probes (by a fixed hash) is held out: the report gives, on probes the
fit did not see, the no-match rate of in-domain and out-of-domain probes per mode and the
reliability per confidence bin.

The fit is stored in the collection's info (`Calibrations.store`) with the model id and version;
a collection whose active vector is another model's is treated as uncalibrated.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import random
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexing.types import Condition, Filter, Modality, SearchMode

if TYPE_CHECKING:
    from encoders.text.keywords import SparseVector
    from indexing.index import Index
    from indexing.types import CollectionSchema

INFO_KEY = "calibration"
FORMAT = 1
KINDS = ("text", "image")
SIDES = (SearchMode.DENSE.value, SearchMode.KEYWORD.value)
ALL_MODALITIES = tuple(m for m in Modality)
# Hits of an out-of-domain probe taken as negatives, per ranking.
NEGATIVE_HITS = 3
# Shuffled pairs per in-domain probe.
SHUFFLED = 2
# Hits read per probe to tell whether it would be a no-match.
TOP = 10
HOLDOUT = 0.25
# Share of the negative class given to hard negatives (see `weights`).
HARD_SHARE = 0.9
# Below this many positives and negatives a map is not fitted (too few to trust).
MIN_EXAMPLES = 5
BINS = 10


def feature(side: str, score: float) -> float:
    return math.log1p(max(score, 0.0)) if side == SearchMode.KEYWORD.value else float(score)


@dataclass(frozen=True)
class Logistic:
    """confidence = sigmoid(a * feature(score) + b) for one (kind, ranking, modality)."""

    a: float
    b: float
    side: str
    positives: int
    negatives: int

    def confidence(self, score: float) -> float:
        z = self.a * feature(self.side, score) + self.b
        return 1.0 / (1.0 + math.exp(-min(max(z, -60.0), 60.0)))

    def score_at(self, confidence: float) -> float | None:
        """The lowest score whose confidence reaches `confidence` (None: no score does)."""
        if self.a <= 0:
            return None
        confidence = min(max(confidence, 1e-9), 1 - 1e-9)
        x = (math.log(confidence / (1 - confidence)) - self.b) / self.a
        if self.side == SearchMode.KEYWORD.value:
            return math.expm1(x) if x > 0 else 0.0
        return x


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


@dataclass(frozen=True)
class Joint:
    """Hybrid fusion's map for one (kind, modality): both rankers' evidence at once,

        log-odds = a_dense * cosine + a_keyword * log(1 + BM25) + b

    fitted on pairs scored by both, so it learns how far to trust each ranker on this
    collection (keywords for screenshots' codes, the picture for uncaptioned photos, both for
    captions). Coefficients are >= 0: more evidence never lowers a hit."""

    a_dense: float
    a_keyword: float
    b: float
    positives: int
    negatives: int

    def log_odds(self, dense: float, keyword: float) -> float:
        return self.a_dense * dense + self.a_keyword * feature(SIDES[1], keyword) + self.b


@dataclass(frozen=True)
class Calibration:
    model_id: str
    model_version: str
    maps: dict[str, Logistic]
    fitted_at: str = ""
    items: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    # "<kind>/hybrid/<modality>" (and "<kind>/hybrid/*") -> the joint map hybrid fusion uses.
    joint: dict[str, Joint] = field(default_factory=dict)

    def map_for(self, kind: str, side: str, modality: str) -> Logistic | None:
        return self.maps.get(f"{kind}/{side}/{modality}") or self.maps.get(f"{kind}/{side}/*")

    def joint_for(self, kind: str, modality: str) -> Joint | None:
        """The modality's own joint map only: how much keywords say differs too much between
        modalities (a caption text, a screenshot's OCR, a photo with none) to pool."""
        return self.joint.get(f"{kind}/{SearchMode.HYBRID.value}/{modality}")

    def with_fallback(self, prior: Calibration | None) -> Calibration:
        """These maps, and the prior's for the keys this calibration has none of (a collection
        without texts fits no keyword map; its hybrid hits still need one)."""
        if prior is None:
            return self
        return Calibration(
            self.model_id,
            self.model_version,
            {**prior.maps, **self.maps},
            self.fitted_at,
            self.items,
            self.report,
            self.joint,
        )

    def covers(self, kind: str, mode: str) -> bool:
        """Whether hits of this query kind in this mode get a confidence."""
        sides = SIDES if mode == SearchMode.HYBRID.value else (mode,)
        return all(f"{kind}/{side}/*" in self.maps for side in sides)

    def confidence(self, kind: str, modality: str, dense: float | None = None, keyword: float | None = None) -> float:
        """The hit's confidence: the larger of what its dense and its keyword score say."""
        values = [0.0]
        for side, score in ((SIDES[0], dense), (SIDES[1], keyword)):
            m = self.map_for(kind, side, modality) if score is not None else None
            if m is not None and (side == SIDES[0] or score > 0):
                values.append(m.confidence(score))
        return max(values)

    def groups(
        self, kind: str, side: str, modalities: Sequence[Modality]
    ) -> list[tuple[tuple[Modality, ...], Logistic]]:
        """The wanted modalities split by the map that scores them: one store query each."""
        wanted = tuple(modalities) or ALL_MODALITIES
        own = [(m,) for m in wanted if f"{kind}/{side}/{m.value}" in self.maps]
        rest = tuple(m for m in wanted if f"{kind}/{side}/{m.value}" not in self.maps)
        out = [(mods, self.maps[f"{kind}/{side}/{mods[0].value}"]) for mods in own]
        if rest and f"{kind}/{side}/*" in self.maps:
            out.append((rest, self.maps[f"{kind}/{side}/*"]))
        return out

    def summary(self) -> str:
        held = self.report.get("held_out", {})
        parts = [f"calibrated {self.fitted_at[:10]} on {self.items} items for {self.model_id}"]
        for mode, rates in sorted(held.get("no_match", {}).items()):
            parts.append(
                f"{mode}: no match {rates['in_domain']:.0%} in-domain / {rates['out_of_domain']:.0%} out-of-domain"
            )
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "fitted_at": self.fitted_at,
            "items": self.items,
            "maps": {k: asdict(v) for k, v in self.maps.items()},
            "joint": {k: asdict(v) for k, v in self.joint.items()},
            "report": self.report,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Calibration:
        return cls(
            model_id=raw["model_id"],
            model_version=raw["model_version"],
            maps={k: Logistic(**v) for k, v in raw["maps"].items()},
            fitted_at=raw.get("fitted_at", ""),
            items=int(raw.get("items", 0)),
            report=raw.get("report", {}),
            joint={k: Joint(**v) for k, v in raw.get("joint", {}).items()},
        )


@dataclass(frozen=True)
class ProbeSpec:
    """A probe before encoding: a text or an image, and the ids relevant to it."""

    kind: str
    origin: str
    relevant: tuple[str, ...] = ()
    text: str = ""
    image: bytes = b""
    # The rankings it is asked of: OCR text probes only the keyword side (CLIP reading a
    # screenshot's words is not what a dense text-to-image search is for).
    sides: tuple[str, ...] = SIDES
    # The request field it came from ("cases[3].image"): an unreadable one is refused there.
    # Empty for the probes Loupe makes (an unreadable thumbnail is skipped).
    field: str = ""
    # Items judged not relevant to it (feedback's down-voted hits).
    not_relevant: tuple[str, ...] = ()


@dataclass(frozen=True)
class Probe:
    """A query for the fit: its vectors, and the ids relevant to it (empty: out of domain)."""

    kind: str
    vector: np.ndarray | None = None
    keywords: SparseVector | None = None
    relevant: tuple[str, ...] = ()
    # Where it came from ("caption", "text", "ocr", "transcript", "thumbnail", "case",
    # "out-of-domain"): reported.
    origin: str = ""
    sides: tuple[str, ...] = SIDES
    not_relevant: tuple[str, ...] = ()


def sample_payloads(index: Index, name: str, limit: int) -> list[dict]:
    """What probes are made from, for up to `limit` items: id, modality, text, caption-like
    metadata strings and the thumbnail. Points are read in point-id order, which is a hash
    of the public id: a spread over the collection, not its oldest items."""
    out: list[dict] = []
    after = None
    while len(out) < limit:
        points, after = index.store.scroll(name, filter=None, limit=min(256, limit - len(out)), after=after)
        for point in points:
            p = point.payload
            out.append(
                {
                    "id": p["id"],
                    "modality": p.get("modality", Modality.IMAGE.value),
                    "text": p.get("text") or "",
                    "meta": {k: v for k, v in (p.get("meta") or {}).items() if isinstance(v, str)},
                    "thumbnail": p.get("thumbnail") or "",
                    "sources": [s for s in p.get("sources") or [] if isinstance(s, str)][:3],
                }
            )
        if after is None:
            break
    return out


def probe_specs(
    pool: Sequence[dict],
    caption_fields: Sequence[str],
    cases: Sequence[ProbeSpec] = (),
    out_texts: Sequence[str] = (),
    out_images: Sequence[bytes] = (),
    seed: int = 0,
) -> list[ProbeSpec]:
    """Self-supervised positives from `pool`, then `cases`, then the out-of-domain negatives.

    - a caption-like metadata string of an item (`caption_fields`) -> the items that carry it
      as a caption or as their text (an image and its caption text item);
    - a text item's, transcript chunk's or whole recording's text with a quarter of its words dropped -> the same;
    - an image's OCR text, words dropped, keyword side only -> the image;
    - an image's thumbnail -> the image, and the text items holding its caption."""
    rng = random.Random(seed)
    owners: dict[str, set[str]] = defaultdict(set)  # text -> ids that carry it
    for p in pool:
        for t in _texts_of(p, caption_fields):
            owners[t].add(p["id"])
    specs: list[ProbeSpec] = []
    seen: set[str] = set()
    for p in pool:
        for field_name in caption_fields:
            caption = p["meta"].get(field_name, "").strip()
            if caption and caption not in seen:
                seen.add(caption)
                specs.append(ProbeSpec("text", "caption", tuple(sorted(owners[caption])), text=caption))
        text, modality = p["text"].strip(), p["modality"]
        for name in _file_name_texts(p):  # "red-mug-on-desk.jpg": a description; "IMG_0412.jpg": not
            if name not in seen:
                seen.add(name)
                specs.append(ProbeSpec("text", "file name", (p["id"],), text=name))
        spoken = (Modality.AUDIO_SEGMENT.value, Modality.AUDIO.value)
        if text and modality in (Modality.TEXT.value, *spoken) and text not in seen:
            seen.add(text)
            origin = "text" if modality == Modality.TEXT.value else "transcript"
            specs.append(ProbeSpec("text", origin, tuple(sorted(owners[text])), text=_drop_words(text, rng)))
        elif text and modality == Modality.IMAGE.value:
            specs.append(ProbeSpec("text", "ocr", (p["id"],), text=_drop_words(text, rng), sides=(SIDES[1],)))
        if p["thumbnail"] and modality == Modality.IMAGE.value:
            captions = _texts_of(p, caption_fields)
            relevant = {p["id"]} | {i for c in captions for i in owners[c]}
            image = base64.b64decode(p["thumbnail"])
            specs.append(ProbeSpec("image", "thumbnail", tuple(sorted(relevant)), image=image, sides=(SIDES[0],)))
    specs += cases
    specs += [ProbeSpec("text", "out-of-domain", text=t) for t in out_texts]
    specs += [ProbeSpec("image", "out-of-domain", image=b, sides=(SIDES[0],)) for b in out_images]
    return specs


_WORD = re.compile(r"[^\W\d_]{3,}")


def _file_name_texts(p: dict) -> list[str]:
    """Words of a picture's file names, when they describe it: at least three words of three
    letters or more ("blue_ceramic_mug_front.jpg" -> "blue ceramic mug front"). Camera names
    (IMG_0412, DSC01234, PXL_20240611_...) and hashes have none and give nothing."""
    if p.get("modality", Modality.IMAGE.value) != Modality.IMAGE.value:
        return []
    out = []
    for source in p.get("sources", []):
        stem = source.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        words = _WORD.findall(stem.replace("_", " ").replace("-", " "))
        if len(words) >= 3:
            out.append(" ".join(w.lower() for w in words))
    return out


def _texts_of(p: dict, caption_fields: Sequence[str]) -> list[str]:
    found = [p["meta"].get(f, "").strip() for f in caption_fields]
    if p["modality"] in (Modality.TEXT.value, Modality.AUDIO_SEGMENT.value, Modality.AUDIO.value):
        found.append(p["text"].strip())
    return [t for t in found if t]


def _drop_words(text: str, rng: random.Random) -> str:
    """The text without a quarter of its words (at least one kept): a query is rarely the
    exact text it should find."""
    words = text.split()
    if len(words) < 8:
        return text
    dropped = set(rng.sample(range(len(words)), len(words) // 4))
    return " ".join(w for i, w in enumerate(words) if i not in dropped)


@dataclass(frozen=True)
class Example:
    key: str  # kind/side/modality
    score: float
    label: int
    probe: int
    # A negative that reached a query's top hits (an out-of-domain probe's best hits), not a
    # shuffled pair.
    hard: bool = False


@dataclass(frozen=True)
class JointExample:
    """One (probe, item) pair scored by both rankers: what hybrid fusion's map learns from."""

    key: str  # kind/hybrid/modality
    dense: float
    keyword: float  # BM25; 0 where no word is shared
    label: int
    probe: int
    hard: bool = False


@dataclass
class Evidence:
    examples: list[Example] = field(default_factory=list)
    joint: list[JointExample] = field(default_factory=list)
    # probe -> side -> [(modality, score)] of its top hits (for the no-match rates).
    tops: dict[int, dict[str, list[tuple[str, float]]]] = field(default_factory=lambda: defaultdict(dict))


def collect(
    index: Index, name: str, vector_name: str, probes: Sequence[Probe], pool: Sequence[dict], seed: int = 0
) -> Evidence:
    """Scores of every probe's positives, negatives and top hits, read from the store.

    `pool`: payloads of items shuffled pairs may be drawn from (`sample_payloads`)."""
    rng = random.Random(seed)
    has_keywords = bool(index.schema(name).keyword_vector)
    ev = Evidence()
    for i, probe in enumerate(probes):
        involved: dict[str, tuple[str, bool]] = {}  # item -> (modality, a near miss)
        for side in probe.sides:
            if side == SearchMode.DENSE.value and probe.vector is None:
                continue
            if side == SearchMode.KEYWORD.value and (not probe.keywords or not has_keywords):
                continue

            def run(limit: int, flt: Filter | None = None, side=side, probe=probe) -> list[tuple[dict, float]]:
                return index.search(
                    name,
                    probe.vector,
                    limit=limit,
                    filter=flt,
                    mode=side,
                    keyword_query=probe.keywords,
                    vector_name=vector_name,
                )

            top = run(TOP)
            ev.tops[i][side] = [(p.get("modality", "image"), s) for p, s in top]
            if probe.not_relevant:  # shown for this query and turned down by a person
                rejected = run(len(probe.not_relevant), _ids(probe.not_relevant))
                ev.examples += [_example(probe, side, p, s, 0, i, hard=True) for p, s in rejected]
                involved.update((p["id"], (_modality(p), True)) for p, _ in rejected)
            if not probe.relevant:
                found = [_example(probe, side, p, s, 0, i, hard=True) for p, s in top[:NEGATIVE_HITS]]
                involved.update((p["id"], (_modality(p), True)) for p, _ in top[:NEGATIVE_HITS])
                ev.examples += found
                continue
            positives = run(len(probe.relevant), _ids(probe.relevant))
            ev.examples += [_example(probe, side, p, s, 1, i) for p, s in positives]
            # The best hits that are not relevant: near misses (a caption sharing most words,
            # a similar picture) are what a floor must keep out, not random pairs.
            misses = [(p, s) for p, s in top if p["id"] not in probe.relevant][:NEGATIVE_HITS]
            ev.examples += [_example(probe, side, p, s, 0, i, hard=True) for p, s in misses]
            involved.update((p["id"], (_modality(p), False)) for p, _ in positives)
            involved.update((p["id"], (_modality(p), True)) for p, _ in misses)
            others = [p for p in pool if p["id"] not in probe.relevant]
            picked = rng.sample(others, min(SHUFFLED, len(others)))
            if picked:
                hits = run(len(picked), _ids([p["id"] for p in picked]))
                ev.examples += [_example(probe, side, p, s, 0, i) for p, s in hits]
                involved.update((p["id"], (_modality(p), False)) for p, _ in hits if p["id"] not in involved)
        # Every probe with both vectors, OCR text probes too (asked of the keyword side only,
        # they are what teaches hybrid fusion that a screenshot's words outweigh its picture).
        if probe.vector is not None and probe.keywords and has_keywords:
            ev.joint += _joint_examples(index, name, vector_name, probe, i, involved)
    return ev


def _joint_examples(
    index: Index, name: str, vector_name: str, probe: Probe, i: int, involved: dict[str, tuple[str, bool]]
) -> list[JointExample]:
    """Both rankers' scores of every item a probe's examples hold (an item the keyword side
    does not match scores 0 there)."""
    if not involved:
        return []
    scores: dict[str, dict[str, float]] = {}
    for side in SIDES:
        found = index.search(
            name,
            probe.vector,
            limit=len(involved),
            filter=_ids(list(involved)),
            mode=side,
            keyword_query=probe.keywords,
            vector_name=vector_name,
        )
        scores[side] = {p["id"]: s for p, s in found}
    out = []
    for item, (modality, hard) in involved.items():
        if item not in scores[SIDES[0]]:
            continue
        label = int(item in probe.relevant)
        out.append(
            JointExample(
                f"{probe.kind}/{SearchMode.HYBRID.value}/{modality}",
                scores[SIDES[0]][item],
                scores[SIDES[1]].get(item, 0.0),
                label,
                i,
                hard and not label,
            )
        )
    return out


def _modality(payload: dict) -> str:
    return payload.get("modality", "image")


def _ids(ids: Sequence[str]) -> Filter:
    return Filter(must=(Condition(key="id", any_of=tuple(ids)),))


def _example(probe: Probe, side: str, payload: dict, score: float, label: int, i: int, hard: bool = False) -> Example:
    return Example(f"{probe.kind}/{side}/{payload.get('modality', 'image')}", float(score), label, i, hard)


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
    by_key: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        kind, side, _ = e.key.split("/")
        by_key[e.key].append(e)
        by_key[f"{kind}/{side}/*"].append(e)
    maps = {}
    for key, rows in sorted(by_key.items()):
        pos = sum(r.label for r in rows)
        if pos < MIN_EXAMPLES or len(rows) - pos < MIN_EXAMPLES:
            continue
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
    """A joint map per key with enough of both classes, and a pooled one per kind. A feature
    whose coefficient comes out negative is dropped and the rest refitted (on this data it
    only separates by accident)."""
    by_key: dict[str, list[JointExample]] = defaultdict(list)
    for e in examples:
        kind, hybrid, _ = e.key.split("/")
        by_key[e.key].append(e)
        by_key[f"{kind}/{hybrid}/*"].append(e)
    out = {}
    for key, rows in sorted(by_key.items()):
        pos = sum(r.label for r in rows)
        if pos < MIN_EXAMPLES or len(rows) - pos < MIN_EXAMPLES:
            continue
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


class Calibrations:
    """The calibration of each collection, read from its info and re-read after `ttl_s` (so a
    calibration stored through another Ingress replica is seen)."""

    def __init__(self, index: Index, ttl_s: float = 10.0) -> None:
        self.index, self.ttl_s = index, ttl_s
        self._cache: dict[str, tuple[float, Calibration | None]] = {}

    def get(self, name: str, schema: CollectionSchema) -> tuple[Calibration | None, str]:
        """(calibration, "") when one fits `schema`'s model, else (None, why not)."""
        read_at, cal = self._cache.get(name, (-math.inf, None))
        if time.monotonic() - read_at > self.ttl_s:
            raw = self.index.store.get_info(name).get(INFO_KEY)
            cal = Calibration.from_json(raw) if raw else None
            self._cache[name] = (time.monotonic(), cal)
        if cal is None:
            return None, f"collection {name!r} is not calibrated (run: loupe calibrate {name}); scores are raw"
        if (cal.model_id, cal.model_version) != (schema.model_id, schema.model_version):
            return None, (
                f"collection {name!r} was calibrated for {cal.model_id} {cal.model_version}, not "
                f"{schema.model_id} {schema.model_version}; recalibrate (loupe calibrate {name})"
            )
        return cal, ""

    def store(self, name: str, cal: Calibration) -> None:
        self.index.store.update_info(name, {INFO_KEY: cal.to_json()})
        self.index.mark_changed(name)  # searches now drop hits: answers cached before are stale
        self._cache[name] = (time.monotonic(), cal)

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)


@dataclass(frozen=True)
class Prior:
    """What a model's scores mean before any collection is seen, made from data the package ships
    (`python -m services.cli.prior`): positive scores per map key (a caption and its picture,
    a picture and another shot of its scene, a text and its reworded self), and maps fitted on
    them against out-of-domain negatives. Collections rank hybrid hits with the maps until they
    are calibrated; calibration borrows the positives where the collection has none."""

    model_id: str
    model_version: str
    source: str
    positives: dict[str, list[float]]
    maps: dict[str, Logistic]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "source": self.source,
            "positives": {k: [round(x, 5) for x in v] for k, v in sorted(self.positives.items())},
            "maps": {k: asdict(v) for k, v in sorted(self.maps.items())},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Prior:
        return cls(
            model_id=raw["model_id"],
            model_version=raw["model_version"],
            source=raw.get("source", ""),
            positives={k: [float(x) for x in v] for k, v in raw.get("positives", {}).items()},
            maps={k: Logistic(**v) for k, v in raw.get("maps", {}).items()},
        )

    def as_calibration(self) -> Calibration:
        return Calibration(self.model_id, self.model_version, self.maps)


PRIORS_DIR = Path(__file__).resolve().parent / "calibration_data" / "priors"


class Priors:
    """The model priors in `PRIORS_DIR` and in `extra` files, found by model id and version."""

    def __init__(self, extra: Sequence[str | Path] = (), folder: Path = PRIORS_DIR) -> None:
        self._files = [*sorted(folder.glob("*.json")), *(Path(p) for p in extra)]
        self._loaded: dict[tuple[str, str], Prior] | None = None

    def prior(self, model_id: str, model_version: str) -> Prior | None:
        if self._loaded is None:
            self._loaded = {}
            for path in self._files:
                p = Prior.from_json(json.loads(path.read_text(encoding="utf-8")))
                self._loaded[(p.model_id, p.model_version)] = p
        return self._loaded.get((model_id, model_version))

    def get(self, model_id: str, model_version: str) -> Calibration | None:
        """The prior's maps as a Calibration (for ranking, not for reported confidences)."""
        p = self.prior(model_id, model_version)
        return p.as_calibration() if p is not None else None
