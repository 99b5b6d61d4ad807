"""Retrieval evals on your own data: `loupe eval retrieval CASES.jsonl`.

A case is one JSON object per line (the format `loupe feedback export` writes):

    {"id": "red-mug", "text": "a red mug on a desk",          # or "image": "q.png" (relative
     "collection": "catalog", "modes": ["dense", "hybrid"],   #  to the file), or "image_id"
     "where": {"brand": "acme"}, "modalities": ["image"],     # the search's own filter
     "relevant": {"ids": ["sku-1"], "sources": ["mugs/red.jpg"], "where": {"colour": "red"},
                  "grades": {"sku-1": 3}},
     "not_relevant": {"ids": ["sku-9"]}}

- `relevant` says what should be found: ids, sources (an item is relevant when one of its
  sources is listed), or a metadata condition (the `where` syntax of the client); `grades`
  gives graded gains for nDCG (default 1). No `relevant` (or an empty one): an out-of-domain
  query that nothing should match; it counts towards the no-match figures only.
- `mode` / `modes`: dense, keyword, hybrid (default: dense; `--modes` overrides for text
  queries). Image queries are always dense. `needs_label: true` cases are skipped.

Each case runs once per mode with the first `K` hits and no confidence floor, so the ranking
is measured, not the floor; the hits' confidences (on a calibrated collection) give the
no-match figures at `floor`. Dense cases run again with exact search: the approximate index's
recall@10 against brute force on the same collection.

`run_retrieval_eval(cases, search, count)` is the Python API: `search(case, mode, exact)`
returns an `Outcome`, `count(collection, where)` the number of items a condition matches.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from encoders.common.errors import InvalidInput
from encoders.common.metrics import ndcg_at_k, recall_at_k, reciprocal_rank
from indexing.types import Modality

K = 10
KS = (1, 5, 10)
MODES = ("dense", "keyword", "hybrid")
# What a report's rows are: the first-stage rankers, their fusion, and the fused ranking after
# the second stage (`loupe eval retrieval --rerank NAME [--mmr L]`).
RERANKED = "reranked"
STAGES = (*MODES, RERANKED)
METRICS = ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10")
MODALITIES = tuple(m.value for m in Modality)


@dataclass(frozen=True)
class RetrievalCase:
    id: str
    collection: str = ""
    text: str | None = None
    image: Path | None = None
    image_id: str | None = None
    modes: tuple[str, ...] = ("dense",)
    where: dict[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] = ()
    relevant_ids: tuple[str, ...] = ()
    relevant_sources: tuple[str, ...] = ()
    relevant_where: dict[str, Any] = field(default_factory=dict)
    grades: dict[str, float] = field(default_factory=dict)
    not_relevant: tuple[str, ...] = ()

    @property
    def query_modality(self) -> str:
        return "text" if self.text is not None else "image"

    @property
    def in_domain(self) -> bool:
        return bool(self.relevant_ids or self.relevant_sources or self.relevant_where)

    @property
    def result_modality(self) -> str:
        return "+".join(self.modalities) if self.modalities else "all"


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    confidence: float | None = None
    modality: str = ""
    sources: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    hits: list[Hit]
    calibrated: bool = False


@dataclass
class Observation:
    """One case in one mode."""

    case: str
    mode: str
    query_modality: str
    result_modality: str
    in_domain: bool
    ranked: list[str]
    relevant_hits: list[bool]
    scores: list[float]
    confidences: list[float | None]
    calibrated: bool
    latency_ms: float
    metrics: dict[str, float] = field(default_factory=dict)
    ann_recall: float | None = None
    error: str = ""
    # The metrics of the ranking restricted to each result modality the case has relevant items
    # of, against those items only: {"image": {"recall@10": ...}}.
    by_modality: dict[str, dict[str, float]] = field(default_factory=dict)


def load_cases(path: Path) -> tuple[list[RetrievalCase], list[str]]:
    """The cases of a JSONL file, and a line per case skipped (needs_label). InvalidInput names
    the line and field of the first bad case."""
    cases, skipped, seen = [], [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}", field="cases") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: not JSON ({exc.msg})", field="cases") from None
        if not isinstance(raw, dict):
            raise InvalidInput(f"{where}: a case is a JSON object", field="cases")
        case_id = str(raw.get("id") or f"line-{n}")
        if raw.get("needs_label"):
            skipped.append(f"{case_id}: needs_label (nothing is known to be relevant yet)")
            continue
        if case_id in seen:
            raise InvalidInput(f"{where}: id {case_id!r} is used twice", field="id")
        seen.add(case_id)
        cases.append(parse_case(raw, case_id, where, path.parent))
    if not cases:
        raise InvalidInput(f"{path}: no cases", field="cases")
    return cases, skipped


def parse_case(raw: dict, case_id: str, where: str, root: Path) -> RetrievalCase:
    queries = [k for k in ("text", "image", "image_id") if raw.get(k)]
    if len(queries) != 1:
        raise InvalidInput(f"{where}: give exactly one of text, image (a file) or image_id", field="text")
    image = None
    if "image" in queries:
        image = (root / str(raw["image"])).resolve()
        if not image.is_file():
            raise InvalidInput(
                f"{where}: image {raw['image']!r} is not a file (paths are relative to the cases file)", field="image"
            )
    modes = raw.get("modes") or ([raw["mode"]] if raw.get("mode") else ["dense"])
    if not isinstance(modes, list) or any(m not in MODES for m in modes):
        raise InvalidInput(f"{where}: modes must be a list of {', '.join(MODES)}", field="modes")
    if queries[0] != "text":
        modes = ["dense"]
    modalities = raw.get("modalities") or []
    if not isinstance(modalities, list) or any(m not in MODALITIES for m in modalities):
        raise InvalidInput(f"{where}: modalities must be a list of {', '.join(MODALITIES)}", field="modalities")
    relevant = raw.get("relevant") or {}
    if not isinstance(relevant, dict):
        raise InvalidInput(f"{where}: relevant is an object with ids, sources, where or grades", field="relevant")
    grades = relevant.get("grades") or {}
    if not isinstance(grades, dict) or any(not isinstance(v, (int, float)) or v < 0 for v in grades.values()):
        raise InvalidInput(f"{where}: relevant.grades maps ids to gains >= 0", field="relevant.grades")
    if not isinstance(raw.get("where") or {}, dict) or not isinstance(relevant.get("where") or {}, dict):
        raise InvalidInput(f"{where}: where is an object of field conditions", field="where")
    ids = _strings(relevant.get("ids"), where, "relevant.ids")
    return RetrievalCase(
        id=case_id,
        collection=str(raw.get("collection") or ""),
        text=str(raw["text"]) if raw.get("text") else None,
        image=image,
        image_id=str(raw["image_id"]) if raw.get("image_id") else None,
        modes=tuple(dict.fromkeys(modes)),
        where=dict(raw.get("where") or {}),
        modalities=tuple(modalities),
        relevant_ids=ids + tuple(str(k) for k in grades if str(k) not in ids),
        relevant_sources=_strings(relevant.get("sources"), where, "relevant.sources"),
        relevant_where=dict(relevant.get("where") or {}),
        grades={str(k): float(v) for k, v in grades.items()},
        not_relevant=_strings((raw.get("not_relevant") or {}).get("ids"), where, "not_relevant.ids"),
    )


def _strings(value: Any, where: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"{where}: {name} must be a list of non-empty strings", field=name)
    return tuple(value)


def matches(where: Mapping[str, Any], hit: Hit) -> bool:
    """Whether a hit's metadata (and modality, source) meets a `where` condition."""
    if not where:
        return False
    for key, want in where.items():
        if key == "source":
            have: list[Any] = list(hit.sources)
        elif key == "modality":
            have = [hit.modality]
        else:
            value = hit.metadata.get(key)
            have = value if isinstance(value, list) else [value]
        if isinstance(want, dict):
            bounds = {
                "gte": lambda v, b: v >= b,
                "gt": lambda v, b: v > b,
                "lte": lambda v, b: v <= b,
                "lt": lambda v, b: v < b,
            }
            nums = [v for v in have if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if not any(all(bounds[op](v, b) for op, b in want.items()) for v in nums):
                return False
        elif isinstance(want, list):
            if not set(map(_key, have)) & set(map(_key, want)):
                return False
        elif _key(want) not in set(map(_key, have)):
            return False
    return True


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def is_relevant(case: RetrievalCase, hit: Hit) -> bool:
    return (
        hit.id in case.relevant_ids
        or bool(set(hit.sources) & set(case.relevant_sources))
        or matches(case.relevant_where, hit)
    )


def case_metrics(case: RetrievalCase, hits: Sequence[Hit], total_relevant: int) -> tuple[dict[str, float], list[bool]]:
    """recall@1/5/10, reciprocal rank and nDCG@10 of one ranked list. `total_relevant`: how many
    items are relevant in all (items found by sources or a condition are counted, not listed)."""
    flags = [is_relevant(case, h) for h in hits]
    ranked = [h.id for h in hits]
    relevant = {i: case.grades.get(i, 1.0) for i in [h.id for h, f in zip(hits, flags) if f] + list(case.relevant_ids)}
    # Relevant items that were counted (by sources or a condition) but not shown: unnamed, so
    # they count in recall's denominator and nDCG's ideal but can never be in `ranked`.
    relevant.update({f"\0unseen-{n}": 1.0 for n in range(max(total_relevant - len(relevant), 0))})
    out = {f"recall@{k}": recall_at_k(ranked, set(relevant), k) for k in KS}
    out["mrr"] = reciprocal_rank(ranked, set(relevant))
    out["ndcg@10"] = ndcg_at_k(ranked, relevant, K)
    return out, flags


def run_retrieval_eval(
    cases: Sequence[RetrievalCase],
    search: Callable[[RetrievalCase, str, bool], Outcome],
    count: Callable[[str, dict[str, Any]], int],
    modes: Sequence[str] | None = None,
    floor: float = 0.5,
    exact: bool = True,
) -> RetrievalReport:
    """Every case in each of its modes (`modes` overrides them for text queries); a case whose
    call fails is recorded with the error, not raised."""
    observations = []
    totals: dict[str, int] = {}
    per_modality: dict[str, dict[str, tuple[tuple[str, ...], int]]] = {}
    for case in cases:
        case_modes = tuple(modes) if modes and case.query_modality == "text" else case.modes
        for mode in case_modes:
            obs = Observation(
                case.id, mode, case.query_modality, case.result_modality, case.in_domain, [], [], [], [], False, 0.0
            )
            observations.append(obs)
            try:
                if case.id not in totals:
                    totals[case.id] = _total_relevant(case, count)
                    per_modality[case.id] = _relevant_by_modality(case, count)
                start = time.perf_counter()
                outcome = search(case, mode, False)
                obs.latency_ms = (time.perf_counter() - start) * 1000
                hits = outcome.hits[:K]
                obs.metrics, obs.relevant_hits = case_metrics(case, hits, totals[case.id])
                obs.ranked = [h.id for h in hits]
                obs.scores = [h.score for h in hits]
                obs.confidences = [h.confidence for h in hits]
                obs.calibrated = outcome.calibrated
                for modality, (ids, total) in per_modality[case.id].items():
                    only = [h for h in hits if h.modality == modality]
                    obs.by_modality[modality], _ = case_metrics(replace(case, relevant_ids=ids), only, total)
                if exact and mode == "dense":
                    truth = [h.id for h in search(case, mode, True).hits[:K]]
                    obs.ann_recall = len(set(obs.ranked) & set(truth)) / len(truth) if truth else 1.0
            except Exception as exc:  # one broken case must not end the eval
                obs.error = f"{type(exc).__name__}: {exc}"
    return RetrievalReport(observations, floor)


def _total_relevant(case: RetrievalCase, count: Callable[[str, dict[str, Any]], int]) -> int:
    if not case.in_domain:
        return 0
    total = len(set(case.relevant_ids))
    if case.relevant_sources:
        total += count(case.collection, {**case.where, "source": list(case.relevant_sources)})
    if case.relevant_where:
        total += count(case.collection, {**case.where, **case.relevant_where})
    return total


def _relevant_by_modality(
    case: RetrievalCase, count: Callable[[str, dict[str, Any]], int]
) -> dict[str, tuple[tuple[str, ...], int]]:
    """Per result modality with relevant items: (the relevant ids of it, how many relevant items
    of it in all). The modality of an id is asked of the collection (`count` with an id and a
    modality condition), so it holds for relevant items no search returned."""
    if not case.in_domain:
        return {}
    ids = tuple(dict.fromkeys(case.relevant_ids))
    out = {}
    for modality in MODALITIES:
        found: tuple[str, ...] = ()
        if ids:
            n = count(case.collection, {"id": list(ids), "modality": modality})
            if n >= len(ids):
                found = ids
            elif n:
                found = tuple(i for i in ids if count(case.collection, {"id": i, "modality": modality}))
        total = len(found)
        if case.relevant_sources:
            total += count(case.collection, {**case.where, "source": list(case.relevant_sources), "modality": modality})
        if case.relevant_where:
            total += count(case.collection, {**case.where, **case.relevant_where, "modality": modality})
        if total:
            out[modality] = (found, total)
    return out


@dataclass
class RetrievalReport:
    observations: list[Observation]
    floor: float = 0.5

    def groups(self) -> dict[str, dict[str, Any]]:
        """Metrics per mode, then per mode and query modality, per mode and the cases' result
        modality filter, and per mode and result modality ("hybrid/image": each case's ranking
        restricted to images, against its relevant images; only cases with relevant images)."""
        buckets: dict[str, list[tuple[dict[str, float], Observation]]] = defaultdict(list)
        for o in self.observations:
            if o.error or not o.in_domain:
                continue
            for name in (o.mode, f"{o.mode} / {o.query_modality} queries", f"{o.mode} / results: {o.result_modality}"):
                buckets[name].append((o.metrics, o))
            for modality, metrics in o.by_modality.items():
                buckets[f"{o.mode}/{modality}"].append((metrics, o))
        order = {m: i for i, m in enumerate(STAGES)}
        out = {}
        for name in sorted(buckets, key=lambda n: (order.get(_mode_of(n), 9), n)):
            rows = buckets[name]
            row: dict[str, Any] = {m: round(statistics.fmean(r[m] for r, _ in rows), 4) for m in METRICS}
            row["cases"] = len(rows)
            lat = sorted(o.latency_ms for _, o in rows)
            row["latency_ms"] = {"p50": round(statistics.median(lat), 2), "p95": round(_p95(lat), 2)}
            ann = [o.ann_recall for _, o in rows if o.ann_recall is not None]
            if ann and not _is_modality_group(name):  # the whole list's recall, not a modality's
                row["ann_recall@10"] = round(statistics.fmean(ann), 4)
            out[name] = row
        return out

    def no_match(self) -> dict[str, dict[str, Any]]:
        """Per mode, on calibrated collections: the share of in-domain cases whose best hit is
        under the floor (false no-match), and of out-of-domain ones that get no_match."""
        out: dict[str, dict[str, Any]] = {}
        for mode in MODES:
            obs = [o for o in self.observations if o.mode == mode and not o.error and o.calibrated]
            if not obs:
                continue
            row: dict[str, Any] = {"floor": self.floor}
            for domain, wanted in (("in_domain", True), ("out_of_domain", False)):
                part = [o for o in obs if o.in_domain == wanted]
                flagged = [max((c or 0.0 for c in o.confidences), default=0.0) < self.floor for o in part]
                row[domain] = {"cases": len(part), "no_match": round(sum(flagged) / len(part), 4) if part else None}
            out[mode] = row
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """The per-mode rows and the per-mode, per-result-modality ones ("hybrid/image"): what a
        baseline compares."""
        return {k: v for k, v in self.groups().items() if k in STAGES or _is_modality_group(k)}

    def fusion(self, metrics: Sequence[str] = ("recall@10", "ndcg@10")) -> dict[str, dict[str, dict[str, float]]]:
        """Hybrid against its parts on the same cases (those run in all three modes): per result
        modality ("all" for the whole ranking), mode -> metric -> mean."""
        by_case: dict[str, dict[str, Observation]] = defaultdict(dict)
        for o in self.observations:
            if not o.error and o.in_domain:
                by_case[o.case][o.mode] = o
        shared = [modes for modes in by_case.values() if set(MODES) <= set(modes)]
        out: dict[str, dict[str, dict[str, float]]] = {}
        groups = {"all"} | {m for modes in shared for m in modes["hybrid"].by_modality}
        for group in sorted(groups):
            rows = {}
            for mode in MODES:
                values = [
                    modes[mode].metrics if group == "all" else modes[mode].by_modality.get(group)
                    for modes in shared
                    if group == "all" or group in modes["hybrid"].by_modality
                ]
                values = [v for v in values if v is not None]
                if values:
                    rows[mode] = {m: round(statistics.fmean(v[m] for v in values), 4) for m in metrics}
                    rows[mode]["cases"] = len(values)
            out[group] = rows
        return out

    def fusion_gaps(self, tolerance: float = 0.02) -> list[str]:
        """Where hybrid falls more than `tolerance` under the better of dense and keyword."""
        gaps = []
        for group, rows in self.fusion().items():
            if len(rows) < len(MODES):
                continue
            for metric in ("recall@10", "ndcg@10"):
                best = max(rows["dense"][metric], rows["keyword"][metric])
                if rows["hybrid"][metric] < best - tolerance:
                    gaps.append(f"{group} {metric}: hybrid {rows['hybrid'][metric]:.3f} < {best:.3f} - {tolerance}")
        return gaps

    def errors(self) -> list[str]:
        return [f"{o.case} ({o.mode}): {o.error}" for o in self.observations if o.error]

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "groups": self.groups(),
            "no_match": self.no_match(),
            "errors": self.errors(),
            "cases": [asdict(o) for o in self.observations],
        }


def _mode_of(group: str) -> str:
    return group.split(" /")[0].split("/")[0]


def _is_modality_group(group: str) -> bool:
    mode, _, modality = group.partition("/")
    return mode in STAGES and modality in MODALITIES


def _p95(ordered: Sequence[float]) -> float:
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))] if ordered else math.nan


def format_table(report: RetrievalReport) -> str:
    cols = (*METRICS, "ann@10", "cases", "p50 ms", "p95 ms")
    groups = report.groups()
    width = max([len(n) for n in groups] + [5])
    lines = [f"{'group':{width}}  " + "  ".join(f"{c:>9}" for c in cols)]
    for name, row in groups.items():
        ann = row.get("ann_recall@10")
        cells = [f"{row[m]:9.3f}" for m in METRICS]
        cells += [f"{ann:9.3f}" if ann is not None else f"{'-':>9}", f"{row['cases']:9d}"]
        cells += [f"{row['latency_ms']['p50']:9.1f}", f"{row['latency_ms']['p95']:9.1f}"]
        lines.append(f"{name:{width}}  " + "  ".join(cells))
    nm = report.no_match()
    if nm:
        lines.append("")
        for mode, row in nm.items():
            ind, ood = row["in_domain"], row["out_of_domain"]
            lines.append(
                f"no match at confidence {row['floor']}: {mode}: "
                + ", ".join(
                    f"{d} {r['no_match']:.1%} of {r['cases']}"
                    for d, r in (("in-domain", ind), ("out-of-domain", ood))
                    if r["cases"]
                )
            )
    else:
        lines.append("\n(no calibrated collection: no no-match figures; run loupe calibrate)")
    for e in report.errors():
        lines.append(f"error: {e}")
    return "\n".join(lines)


def write_report(report: RetrievalReport, folder: Path, title: str = "Retrieval eval") -> list[Path]:
    """report.md with the tables, recall_at_k.png (recall@k per mode) and scores.png (score
    distributions of relevant vs irrelevant hits per mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    ok = [o for o in report.observations if not o.error and o.in_domain]
    modes = [m for m in MODES if any(o.mode == m for o in ok)]
    written = []

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for mode in modes:
        obs = [o for o in ok if o.mode == mode]
        curve = [statistics.fmean(_recall(o, k) for o in obs) for k in range(1, K + 1)]
        ax.plot(range(1, K + 1), curve, marker="o", label=mode)
    ax.set(xlabel="k", ylabel="recall@k", ylim=(0, 1.02), title="recall@k per search mode")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    written.append(folder / "recall_at_k.png")
    fig.savefig(written[-1])
    plt.close(fig)

    fig, axes = plt.subplots(1, max(len(modes), 1), figsize=(4 * max(len(modes), 1), 3.5), dpi=100, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        obs = [o for o in ok if o.mode == mode]
        rel = [s for o in obs for s, f in zip(o.scores, o.relevant_hits) if f]
        irr = [s for o in obs for s, f in zip(o.scores, o.relevant_hits) if not f]
        bins = 30
        if rel:
            ax.hist(rel, bins=bins, alpha=0.6, label=f"relevant ({len(rel)})", color="tab:green")
        if irr:
            ax.hist(irr, bins=bins, alpha=0.6, label=f"irrelevant ({len(irr)})", color="tab:red")
        ax.set(title=mode, xlabel="score", ylabel="hits")
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(folder / "scores.png")
    fig.savefig(written[-1])
    plt.close(fig)

    md = [f"# {title}", "", f"{len({o.case for o in report.observations})} cases, top {K} hits per search.", ""]
    md += ["| group | " + " | ".join(METRICS) + " | ANN recall@10 | cases | p50 ms | p95 ms |"]
    md += ["|---" * (len(METRICS) + 5) + "|"]
    for name, row in report.groups().items():
        ann = row.get("ann_recall@10")
        cells = [f"{row[m]:.3f}" for m in METRICS] + ["-" if ann is None else f"{ann:.3f}", str(row["cases"])]
        cells += [f"{row['latency_ms']['p50']:.1f}", f"{row['latency_ms']['p95']:.1f}"]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    nm = report.no_match()
    if nm:
        md += [
            "",
            "## No match",
            "",
            "| mode | floor | in-domain no_match | out-of-domain no_match |",
            "|---|---|---|---|",
        ]
        for mode, row in nm.items():
            cells = [
                f"{r['no_match']:.1%} of {r['cases']}" if r["cases"] else "-"
                for r in (row["in_domain"], row["out_of_domain"])
            ]
            md.append(f"| {mode} | {row['floor']} | {cells[0]} | {cells[1]} |")
    md += ["", "![recall@k per mode](recall_at_k.png)", "", "![scores of relevant and irrelevant hits](scores.png)", ""]
    if report.errors():
        md += ["## Errors", ""] + [f"- {e}" for e in report.errors()] + [""]
    written.append(folder / "report.md")
    written[-1].write_text("\n".join(md), encoding="utf-8")
    return written


def _recall(o: Observation, k: int) -> float:
    """recall@k for any k <= 10, from recall@10 and where the relevant hits were."""
    if k in KS:
        return o.metrics[f"recall@{k}"]
    found = sum(o.relevant_hits[:K])
    return o.metrics["recall@10"] * sum(o.relevant_hits[:k]) / found if found else 0.0
