"""`loupe eval ask|retrieval CASES.jsonl` and `loupe calibrate COLLECTION`, against the running service.

Both evals print a table (or `--json`); `--baseline FILE` compares with an earlier run's
figures (written by `--write-baseline FILE`) and exits 1 when a metric got worse by more than
`--tolerance`: the regression gate CI runs on the bundled model's fixtures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from encoders.common.errors import InvalidInput
from encoders.common.metrics import regressions
from services.client.sdk import LoupeClient

# Ask figures a baseline compares; rates where lower is better.
ASK_GATED = (
    "verdict_match",
    "contains_expected",
    "exact_match",
    "citations_correct",
    "false_abstention_rate",
    "unsafe_passes",
)
ASK_LOWER_IS_BETTER = ("false_abstention_rate", "unsafe_passes")


def add_arguments(e: argparse.ArgumentParser, c: argparse.ArgumentParser, collection) -> None:
    e.add_argument(
        "kind",
        choices=["ask", "retrieval"],
        help="ask: answer quality (lmm/evals.py); retrieval: search quality (indexing/evals.py)",
    )
    e.add_argument("cases", type=Path, help="JSONL file, one case per line")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--report", type=Path, metavar="DIR", help="retrieval: write DIR/report.md and PNG plots")
    e.add_argument(
        "--modes", help="retrieval: run every text case in these modes, e.g. dense,keyword,hybrid (default: its own)"
    )
    e.add_argument("--min-confidence", type=float, default=0.5, help="retrieval: the floor for the no-match figures")
    e.add_argument("--no-exact", action="store_true", help="retrieval: skip the exact-search comparison")
    e.add_argument(
        "--rerank",
        metavar="NAME",
        help="retrieval: also run text cases through this reranker after hybrid fusion (a 'reranked' row)",
    )
    e.add_argument("--mmr", type=float, metavar="LAMBDA", help="retrieval: with --rerank, diversify too")
    e.add_argument("--baseline", type=Path, help="exit 1 if a metric is worse than in this file by > --tolerance")
    e.add_argument("--tolerance", type=float, default=0.02)
    e.add_argument("--write-baseline", type=Path, metavar="FILE", help="write this run's gated figures to FILE")
    collection(e)

    c.add_argument("collection", nargs="?", default="", help="collection (default: 'default')")
    c.add_argument(
        "--cases", type=Path, help="labelled cases (the `loupe eval retrieval` format, ids as relevant) to add"
    )
    c.add_argument("--sample", type=int, default=None, help="items to make probes from (default: the config's)")
    c.add_argument("--json", action="store_true", help="print the whole fit as JSON")


def cmd_eval(client: LoupeClient, args) -> int:
    try:
        if args.kind == "ask":
            figures, code = _ask(client, args)
        else:
            figures, code = _retrieval(client, args)
    except InvalidInput as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 2
    lower = ASK_LOWER_IS_BETTER if args.kind == "ask" else ()
    if args.write_baseline:
        args.write_baseline.write_text(
            json.dumps({"kind": args.kind, "figures": figures}, indent=2, sort_keys=True) + "\n"
        )
        print(f"baseline written to {args.write_baseline}", file=sys.stderr)
    if args.baseline:
        try:
            saved = json.loads(args.baseline.read_text())
            baseline = saved["figures"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: cannot read baseline {args.baseline}: {exc}", file=sys.stderr)
            return 2
        if saved.get("kind") != args.kind:
            print(f"error: {args.baseline} is a {saved.get('kind')} baseline, not {args.kind}", file=sys.stderr)
            return 2
        worse = regressions(figures, baseline, args.tolerance, lower)
        for line in worse:
            print(f"REGRESSION {line}", file=sys.stderr)
        if worse:
            return 1
        print(f"no metric worse than {args.baseline} by more than {args.tolerance}", file=sys.stderr)
    return code


def _ask(client: LoupeClient, args) -> tuple[dict[str, dict[str, Any]], int]:
    from lmm.evals import format_table, load_cases, run_ask_eval

    report = run_ask_eval(load_cases(args.cases), lambda case: ask_outcome(client, case, args.collection))
    print(json.dumps(report.to_json(), indent=2) if args.json else format_table(report))
    t = report.totals()
    figures = {"ask": {k: t[k] for k in ASK_GATED if t.get(k) is not None}}
    return figures, 1 if t["unsafe_passes"] or t["errors"] else 0


def _retrieval(client: LoupeClient, args) -> tuple[dict[str, dict[str, Any]], int]:
    from dataclasses import replace

    from indexing.evals import MODES, RERANKED, load_cases, run_retrieval_eval, write_report

    cases, skipped = load_cases(args.cases)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    modes = [m.strip() for m in args.modes.split(",")] if args.modes else None
    if modes and any(m not in MODES for m in modes):
        raise InvalidInput(f"--modes takes {', '.join(MODES)}", field="modes")
    if args.rerank:  # the second stage, as one more row of every text case
        modes = [*(modes or []), RERANKED] if modes else None
        cases = [replace(c, modes=(*c.modes, RERANKED)) if c.text is not None and not modes else c for c in cases]
    second = {"rerank": args.rerank, "mmr_lambda": args.mmr}
    report = run_retrieval_eval(
        cases,
        lambda case, mode, exact: retrieval_outcome(client, case, mode, exact, args.collection, second),
        lambda collection, where: client.count(where=where, collection=collection or args.collection),
        modes=modes,
        floor=args.min_confidence,
        exact=not args.no_exact,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        from indexing.evals import format_table

        print(format_table(report))
    if args.report:
        for path in write_report(report, args.report, title=f"Retrieval eval: {args.cases.name}"):
            print(f"wrote {path}", file=sys.stderr)
    return gated_figures(report), 1 if report.errors() else 0


def gated_figures(report) -> dict[str, dict[str, float]]:
    """What a retrieval baseline compares: the quality figures per mode (not latency)."""
    return {
        mode: {k: v for k, v in row.items() if k not in ("cases", "latency_ms")}
        for mode, row in report.summary().items()
    }


def retrieval_outcome(
    client: LoupeClient, case, mode: str, exact: bool, collection: str = "", second: dict | None = None
):
    """One retrieval case through the service's search, as an indexing.evals.Outcome. Mode
    "reranked": hybrid, then the second stage `second` ({"rerank": name, "mmr_lambda": l})."""
    from indexing.evals import RERANKED, Hit, K, Outcome

    options = {
        "limit": K,
        "modalities": list(case.modalities),
        "where": case.where or None,
        "collection": case.collection or collection,
        "min_confidence": 0.0,
        "exact": exact,
    }
    if mode == RERANKED:
        options.update(second or {})
        mode = "hybrid"
    else:
        options["rerank"] = "none"  # the first stage as it is, whatever the collection's default
    if case.text is not None:
        result = client.search_text(case.text, mode=mode, **options)
    elif case.image_id is not None:
        result = client.search_image(id=case.image_id, **options)
    else:
        result = client.search_image(case.image.read_bytes(), **options)
    hits = [
        Hit(h.id, h.score, h.confidence, h.item.modality, tuple(h.item.sources), dict(h.item.metadata))
        for h in result.hits
    ]
    return Outcome(hits, result.calibrated)


def ask_outcome(client: LoupeClient, case, collection: str = ""):
    """One eval case through the service's Ask, as an lmm.evals.AskOutcome."""
    from lmm.evals import AskOutcome

    r = case.retrieval
    answer = client.ask(
        case.question,
        [p.read_bytes() for p in case.images],
        k=int(r.get("k") or 0),
        collection=r.get("collection") or collection,
        where=r.get("where"),
        mode=r.get("mode"),
    )
    return AskOutcome(
        text=answer.text,
        verdict=qa_verdict(answer.verdict),
        citations=tuple(answer.citations),
        guards=tuple((g.guard, g.passed, g.reason) for g in answer.guards),
        timings=dict(answer.timings_s),
    )


def qa_verdict(value: int) -> str:
    from protos.loupe.v1 import qa_pb2

    return qa_pb2.AnswerVerdict.Name(value).removeprefix("ANSWER_VERDICT_").lower()


def cmd_calibrate(client: LoupeClient, args) -> int:
    cases: list[tuple[str | bytes, list[str], list[str]]] = []
    if args.cases:
        from indexing.evals import load_cases

        try:
            loaded, _ = load_cases(args.cases)
        except InvalidInput as exc:
            print(f"error: {exc.reason}", file=sys.stderr)
            return 2
        for case in loaded:
            if case.image_id is not None or case.relevant_sources or case.relevant_where:
                print(f"skipped {case.id}: calibration cases name their query and relevant ids", file=sys.stderr)
                continue
            query = case.text if case.text is not None else case.image.read_bytes()
            cases.append((query, list(case.relevant_ids), list(case.not_relevant)))
    r = client.calibrate(collection=args.collection, cases=cases, sample_items=args.sample)
    if args.json:
        print(json.dumps({**json.loads(r.report_json), "summary": r.summary, "model_id": r.model_id}, indent=2))
        return 0
    report = json.loads(r.report_json)
    print(f"collection {r.collection}: {r.summary}")
    print(
        f"  {r.positives} positive and {r.negatives} negative examples from "
        + ", ".join(f"{n} {k}" for k, n in report["probes"].items())
    )
    for key, score in sorted(report.get("thresholds", {}).items()):
        if score is not None:
            print(f"  {key}: confidence {report['floor']} at score {score:.4f}")
    bins = report.get("held_out", {}).get("reliability", [])
    if bins:
        print("  held-out reliability (confidence bin: mean confidence / observed share relevant, n):")
        print(
            "    " + "; ".join(f"{b['bin']}: {b['mean_confidence']:.2f}/{b['observed']:.2f} n={b['n']}" for b in bins)
        )
    return 0
