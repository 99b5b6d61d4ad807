"""Calibrated confidence: the probability that a search hit is relevant, per collection.

A raw score does not transfer: a cosine of 0.3 is a strong match for one model and noise for
another, text-to-text cosines run far higher than text-to-image ones, BM25 grows with the
collection. A `Calibration` holds, for one collection and the model version that embedded it,
one map per (query kind, ranking, result modality):

    confidence = 1 / (1 + exp(-(a * x + b)))     x = cosine (dense) or log(1 + BM25) (keyword)

keyed "text/dense/image", "text/keyword/text", "image/dense/image", ..., plus a pooled
"<kind>/<ranking>/*" for a modality the fit saw no examples of; and per result modality a
joint map of both rankings that hybrid fusion ranks by (`Joint`).

Where the maps come from: `indexing.probes` (queries with known answers, scored by the
store) and `indexing.fitting` (the fit and its held-out report). A model's `Prior` holds what
its scores mean before a collection is seen. The fit is stored in the collection's info
(`Calibrations.store`) with the model id and version; a collection whose active vector is
another model's is treated as uncalibrated.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexing.types import Modality, SearchMode

if TYPE_CHECKING:
    from indexing.index import Index
    from indexing.types import CollectionSchema

INFO_KEY = "calibration"
FORMAT = 1
KINDS = ("text", "image")
SIDES = (SearchMode.DENSE.value, SearchMode.KEYWORD.value)
ALL_MODALITIES = tuple(m for m in Modality)


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
    # "<kind>/hybrid/<modality>" -> the joint map hybrid fusion uses for that modality.
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
