"""Probes: queries whose answers are known, and their scores read from the store.

A probe is a query and the ids relevant to it (none: out of domain). Self-supervised ones come
from a sample of the collection (`probe_specs`); labelled cases and feedback's turned-down hits
join them; the shipped out-of-domain queries and pictures are the negatives no collection lacks.
`collect` scores every probe's positives and negatives with each ranking, and each pair with
both rankings for hybrid's joint map:
- positive: a probe's relevant item;
- negative: the top hits of out-of-domain probes, the best hits of in-domain probes that are not
  relevant (near misses), hits a person turned down, and shuffled pairs.
"""

from __future__ import annotations

import base64
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from indexing.calibration import SIDES
from indexing.types import Condition, Filter, Modality, SearchMode

if TYPE_CHECKING:
    from encoders.text.keywords import SparseVector
    from indexing.index import Index

# Hits of an out-of-domain probe taken as negatives, per ranking.
NEGATIVE_HITS = 3
# Shuffled pairs per in-domain probe.
SHUFFLED = 2
# Hits read per probe to tell whether it would be a no-match.
TOP = 10


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
