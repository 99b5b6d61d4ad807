"""The Ask eval: case parsing and its errors, scoring against a hand-computed expectation,
totals, the table, and a run through the in-process pipeline."""

from __future__ import annotations

import json

import pytest

from encoders.common.errors import InvalidInput
from lmm.evals import AskCase, AskOutcome, format_table, load_cases, normalise, run_ask_eval


def test_normalise_drops_citations_case_accents_and_punctuation():
    assert normalise("Error E-42: «Paper» tray [upload-1]. Café!") == "error e 42 paper tray cafe"


def _write(tmp_path, lines):
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_cases_and_clear_errors(tmp_path):
    (tmp_path / "shot.png").write_bytes(b"png")
    good = _write(
        tmp_path,
        [
            "# a comment",
            json.dumps({"id": "a", "question": "What code?", "images": ["shot.png"], "must_contain": "E-42"}),
            json.dumps({"question": "From the index?", "retrieval": {"k": 3}}),
        ],
    )
    cases = load_cases(good)
    assert [c.id for c in cases] == ["a", "cases.jsonl line 3"]
    assert cases[0].images == (tmp_path / "shot.png",) and cases[0].must_contain == ("E-42",)
    for line, words in [
        ("{not json", "line 1 is not JSON"),
        (json.dumps({"question": ""}), "question"),
        (json.dumps({"question": "q", "images": ["nope.png"]}), "not found"),
        (json.dumps({"question": "q"}), "needs images or a retrieval"),
        (json.dumps({"question": "q", "retrieval": {"k": 1}, "expected_verdict": "fine"}), "expected_verdict"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            load_cases(_write(tmp_path, [line]))
    with pytest.raises(InvalidInput, match="used twice"):
        load_cases(_write(tmp_path, [json.dumps({"id": "x", "question": "q", "retrieval": {"k": 1}})] * 2))
    with pytest.raises(InvalidInput, match="no cases file"):
        load_cases(tmp_path / "missing.jsonl")


def outcome(text, verdict="answered", citations=("upload-1",), guards=(), timings=None):
    return AskOutcome(text, verdict, tuple(citations), tuple(guards), timings or {"draft": 0.5, "total": 1.0})


def test_scoring_a_small_case_by_hand():
    cases = [
        AskCase("exact", "q1", retrieval={"k": 1}, expected_answer="Error E-42", expected_verdict="answered"),
        AskCase("contains", "q2", retrieval={"k": 1}, must_contain=("tray 2",), expected_citations=("upload-2",)),
        AskCase("unsafe", "q3", retrieval={"k": 1}, must_not_contain=("4111 1111 1111 1111",)),
        AskCase("abstained", "q4", retrieval={"k": 1}, must_contain=("E-42",)),
        AskCase("refused", "q5", retrieval={"k": 1}, expected_verdict="blocked"),
    ]
    outcomes = {
        "q1": outcome("error E-42 [upload-1]."),
        "q2": outcome("Load paper into Tray 2.", citations=("upload-1",)),
        "q3": outcome("Paid with 4111 1111 1111 1111."),
        "q4": outcome(
            "I don't know.",
            "abstained",
            (),
            [("output.grounding", False, "E-99 not found"), ("pipeline.abstain", False, "1 draft(s) failed")],
            {"draft": 1.5, "total": 3.0},
        ),
        "q5": outcome("I can't answer this request.", "blocked", (), [("input.topic", False, "out of scope")]),
    }
    report = run_ask_eval(cases, lambda c: outcomes[c.question])
    r = {x.id: x for x in report.results}
    assert (r["exact"].exact_match, r["exact"].contains_expected, r["exact"].verdict_ok) == (True, True, True)
    assert (r["contains"].contains_expected, r["contains"].exact_match, r["contains"].citations_ok) == (
        True,
        None,
        False,
    )
    assert r["unsafe"].unsafe_pass and r["unsafe"].contains_expected is None
    assert r["abstained"].false_abstention and r["abstained"].contains_expected is False
    assert r["abstained"].failed_guards == ["output.grounding", "pipeline.abstain"]
    assert r["refused"].verdict_ok and not r["refused"].false_abstention
    t = report.totals()
    assert t["verdicts"] == {"answered": 3, "abstained": 1, "blocked": 1}
    assert t["unsafe_passes"] == 1 and t["false_abstentions"] == 1
    assert t["false_abstention_rate"] == 0.3333  # 1 of the 3 cases that expect an answer
    assert t["contains_expected"] == 0.6667  # exact yes, contains yes, abstained no
    assert t["exact_match"] == 1.0 and t["verdict_match"] == 1.0
    assert t["citations_correct"] == 0.6667  # exact (cited), contains (wrong id), unsafe (cited)
    assert t["fails_per_guard"] == {"output.grounding": 1, "pipeline.abstain": 1, "input.topic": 1}
    assert t["latency_s"]["draft"] == {"p50": 0.5, "p95": 1.5}
    table = format_table(report)
    assert "unsafe passes: 1; false abstentions: 1" in table and "output.grounding" in table


def test_a_failing_call_is_recorded_not_raised():
    def ask(case):
        raise TimeoutError("deadline")

    report = run_ask_eval([AskCase("x", "q", retrieval={"k": 1}, must_contain=("a",))], ask)
    assert report.results[0].error == "TimeoutError: deadline" and report.totals()["errors"] == 1


def test_eval_runs_the_in_process_pipeline(tmp_path):
    from PIL import Image

    from lmm.pipeline import AskOptions, AskPipeline
    from lmm.types import Draft

    class Model:
        model_id = "scripted"

        def generate(self, prompt, *, max_new_tokens):
            return Draft("The printer shows E-42.", "scripted")

    pipeline = AskPipeline(
        Model(), lambda im: "PrintJet 4720\nOffline\nE-42\nPaper tray empty", options=AskOptions(max_attempts=1)
    )
    Image.new("RGB", (8, 8)).save(tmp_path / "shot.png")
    cases = [
        AskCase(
            "e42", "What error?", images=(tmp_path / "shot.png",), must_contain=("E-42",), expected_verdict="answered"
        )
    ]

    def ask(case):
        a = pipeline.ask(case.question, [p.read_bytes() for p in case.images])
        return AskOutcome(
            a.text, a.verdict.value, a.citations, tuple((g.guard, g.passed, g.reason) for g in a.guards), a.timings
        )

    report = run_ask_eval(cases, ask)
    assert report.totals()["contains_expected"] == 1.0 and report.results[0].citations_ok
    assert json.loads(json.dumps(report.to_json()))["totals"]["cases"] == 1
