"""Answer-quality eval for Ask, on the user's own cases (`loupe eval ask CASES.jsonl`).

A case (one JSON object per line):

    {"id": "e42", "question": "What error does the printer show?",
     "images": ["shots/printer.png"],                  # paths relative to the cases file
     "retrieval": {"k": 3, "collection": "support", "where": {"team": "it"}, "mode": "hybrid"},
     "expected_answer": "E-42",                          # any of the fields below are optional
     "must_contain": ["E-42"], "must_not_contain": ["4111 1111 1111 1111"],
     "expected_verdict": "answered", "expected_citations": ["upload-1"]}

`run_ask_eval(cases, ask)` calls `ask(case)` (the service, a pipeline: anything returning an
`AskOutcome`) for each case and scores it: verdict, contains-expected, normalised exact match,
unsafe pass (a must-not-contain that got out), false abstention, citations correct, the guards
that failed, latency per step. `report.totals()` sums them up; `format_table` prints both.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from encoders.common.errors import InvalidInput

VERDICTS = ("answered", "abstained", "blocked")
_CITATION = re.compile(r"\[[^\[\]\n]{1,200}\]")


@dataclass(frozen=True)
class AskCase:
    id: str
    question: str
    images: tuple[Path, ...] = ()
    retrieval: dict[str, Any] = field(default_factory=dict)
    expected_answer: str | None = None
    must_contain: tuple[str, ...] = ()
    must_not_contain: tuple[str, ...] = ()
    expected_verdict: str | None = None
    expected_citations: tuple[str, ...] = ()

    @property
    def expects_answer(self) -> bool:
        if self.expected_verdict is not None:
            return self.expected_verdict == "answered"
        return self.expected_answer is not None or bool(self.must_contain)


@dataclass(frozen=True)
class AskOutcome:
    """What an Ask returned, whatever ran it."""

    text: str
    verdict: str
    citations: tuple[str, ...] = ()
    # (guard, passed, reason)
    guards: tuple[tuple[str, bool, str], ...] = ()
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class CaseResult:
    id: str
    verdict: str
    expected_verdict: str | None
    verdict_ok: bool | None
    contains_expected: bool | None
    exact_match: bool | None
    unsafe_pass: bool
    false_abstention: bool
    citations_ok: bool | None
    failed_guards: list[str]
    reasons: list[str]
    timings: dict[str, float]
    text: str
    expects_answer: bool = False
    error: str = ""


def normalise(text: str) -> str:
    """Casefolded, accents and citations removed, punctuation as spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", _CITATION.sub(" ", text))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def load_cases(path: Path) -> list[AskCase]:
    """Cases from a JSONL file; a bad line is an InvalidInput naming the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"no cases file at {path}", field="cases")
    cases, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path.name} line {n} is not JSON: {exc.msg}", field="cases") from None
        cases.append(parse_case(raw, f"{path.name} line {n}", path.parent))
        if cases[-1].id in seen:
            raise InvalidInput(f"{path.name} line {n}: case id {cases[-1].id!r} is used twice", field="id")
        seen.add(cases[-1].id)
    if not cases:
        raise InvalidInput(f"{path} holds no cases", field="cases")
    return cases


def parse_case(raw: Any, where: str, root: Path = Path(".")) -> AskCase:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: a case is a JSON object", field="cases")
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InvalidInput(f"{where}: 'question' must be a non-empty string", field="question")
    verdict = raw.get("expected_verdict")
    if verdict is not None and verdict not in VERDICTS:
        raise InvalidInput(f"{where}: expected_verdict must be one of {', '.join(VERDICTS)}", field="expected_verdict")
    images = tuple((root / p) for p in _strings(raw, "images", where))
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise InvalidInput(f"{where}: image file(s) not found: {', '.join(missing)}", field="images")
    retrieval = raw.get("retrieval") or {}
    if not isinstance(retrieval, dict):
        raise InvalidInput(f"{where}: 'retrieval' must be an object like {{\"k\": 3}}", field="retrieval")
    if not images and not retrieval.get("k"):
        raise InvalidInput(f"{where}: a case needs images or a retrieval with k > 0", field="images")
    return AskCase(
        id=str(raw.get("id") or where),
        question=question,
        images=images,
        retrieval=retrieval,
        expected_answer=raw.get("expected_answer"),
        must_contain=_strings(raw, "must_contain", where),
        must_not_contain=_strings(raw, "must_not_contain", where),
        expected_verdict=verdict,
        expected_citations=_strings(raw, "expected_citations", where),
    )


def _strings(raw: dict, key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{where}: '{key}' must be a list of strings", field=key)
    return tuple(value)


def score(case: AskCase, outcome: AskOutcome) -> CaseResult:
    text = normalise(outcome.text)
    expected = [
        normalise(s) for s in ([case.expected_answer] if case.expected_answer else []) + list(case.must_contain)
    ]
    contains = all(e in text for e in expected) if expected else None
    exact = (text == normalise(case.expected_answer)) if case.expected_answer else None
    # An abstention or refusal that quotes nothing is not an unsafe pass; an answer is checked raw too.
    unsafe = any(normalise(s) in text or s in outcome.text for s in case.must_not_contain)
    cited = set(outcome.citations)
    if case.expected_citations:
        citations_ok = set(case.expected_citations) <= cited
    else:
        citations_ok = bool(cited) if outcome.verdict == "answered" else None
    failed = [g for g, passed, _ in outcome.guards if not passed]
    return CaseResult(
        id=case.id,
        verdict=outcome.verdict,
        expected_verdict=case.expected_verdict,
        verdict_ok=(outcome.verdict == case.expected_verdict) if case.expected_verdict else None,
        contains_expected=contains if outcome.verdict == "answered" or contains is None else False,
        exact_match=exact,
        unsafe_pass=unsafe,
        false_abstention=case.expects_answer and outcome.verdict != "answered",
        citations_ok=citations_ok,
        failed_guards=failed,
        reasons=[r for _, passed, r in outcome.guards if not passed],
        timings=dict(outcome.timings),
        text=outcome.text,
        expects_answer=case.expects_answer,
    )


@dataclass
class AskEvalReport:
    results: list[CaseResult]

    def totals(self) -> dict[str, Any]:
        r = self.results
        n = len(r)

        def rate(values: Iterable[bool | None]) -> float | None:
            known = [v for v in values if v is not None]
            return round(sum(known) / len(known), 4) if known else None

        steps = sorted({k for x in r for k in x.timings})
        latency = {s: _percentiles([x.timings[s] for x in r if s in x.timings]) for s in steps}
        return {
            "cases": n,
            "verdicts": dict(Counter(x.verdict for x in r)),
            "errors": sum(bool(x.error) for x in r),
            "verdict_match": rate(x.verdict_ok for x in r),
            "contains_expected": rate(x.contains_expected for x in r),
            "exact_match": rate(x.exact_match for x in r),
            "unsafe_passes": sum(x.unsafe_pass for x in r),
            "false_abstentions": sum(x.false_abstention for x in r),
            "false_abstention_rate": rate(x.false_abstention for x in r if x.expects_answer),
            "citations_correct": rate(x.citations_ok for x in r),
            "fails_per_guard": dict(Counter(g for x in r for g in x.failed_guards)),
            "latency_s": latency,
        }

    def to_json(self) -> dict[str, Any]:
        return {"totals": self.totals(), "cases": [asdict(x) for x in self.results]}


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"p50": round(statistics.median(ordered), 4), "p95": round(p95, 4)}


def run_ask_eval(cases: Sequence[AskCase], ask: Callable[[AskCase], AskOutcome]) -> AskEvalReport:
    """Each case through `ask`; a case whose call fails is recorded with the error, not raised."""
    results = []
    for case in cases:
        start = time.perf_counter()
        try:
            outcome = ask(case)
        except Exception as exc:  # one broken case must not end the eval
            results.append(
                CaseResult(
                    case.id,
                    "error",
                    case.expected_verdict,
                    False if case.expected_verdict else None,
                    None,
                    None,
                    False,
                    case.expects_answer,
                    None,
                    [],
                    [],
                    {},
                    "",
                    expects_answer=case.expects_answer,
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
            continue
        timings = dict(outcome.timings)
        timings.setdefault("wall", time.perf_counter() - start)
        results.append(
            score(case, AskOutcome(outcome.text, outcome.verdict, outcome.citations, outcome.guards, timings))
        )
    return AskEvalReport(results)


def _mark(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def format_table(report: AskEvalReport) -> str:
    lines = [
        f"{'case':28} {'verdict':10} {'expected':10} {'contains':8} {'exact':5} {'unsafe':6} {'cites':5} failed guards"
    ]
    for x in report.results:
        lines.append(
            f"{x.id[:28]:28} {x.verdict:10} {x.expected_verdict or '-':10} {_mark(x.contains_expected):8} "
            f"{_mark(x.exact_match):5} {'YES' if x.unsafe_pass else 'no':6} {_mark(x.citations_ok):5} "
            f"{', '.join(x.failed_guards) or x.error or '-'}"
        )
    t = report.totals()
    lines.append("")
    lines.append(f"{t['cases']} cases: " + ", ".join(f"{v} {k}" for k, v in sorted(t["verdicts"].items())))
    for key in ("verdict_match", "contains_expected", "exact_match", "citations_correct", "false_abstention_rate"):
        if t[key] is not None:
            lines.append(f"  {key.replace('_', ' ')}: {t[key]:.1%}")
    lines.append(f"  unsafe passes: {t['unsafe_passes']}; false abstentions: {t['false_abstentions']}")
    if t["fails_per_guard"]:
        lines.append("  fails per guard: " + ", ".join(f"{g} {n}" for g, n in sorted(t["fails_per_guard"].items())))
    for step, p in t["latency_s"].items():
        if p:
            lines.append(f"  {step}: p50 {p['p50']:.3f} s, p95 {p['p95']:.3f} s")
    return "\n".join(lines)
