"""`loupe eval retrieval`: metrics equal a hand computation, cases are checked, the report is
written, and the baseline gate passes on the bundled model and fails on a degraded one."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from encoders.clip.sources import BUNDLED_MODELS
from encoders.common.errors import InvalidInput
from encoders.common.metrics import regressions
from indexing.evals import Hit, Outcome, RetrievalCase, load_cases, matches, run_retrieval_eval, write_report
from services.config import load_settings
from services.serve.workers import EncoderWorker
from tests.fixtures import shapes_eval
from tests.fixtures.inprocess import ApiClient

L2, L3, L4, L5 = (math.log2(n) for n in (2, 3, 4, 5))


def fixed_search(rankings: dict[str, list[Hit]], exact: dict[str, list[str]] | None = None):
    def search(case, mode, is_exact):
        if is_exact and exact and case.id in exact:
            return Outcome([Hit(i, 0.0) for i in exact[case.id]], True)
        return Outcome(rankings[case.id], calibrated=True)

    return search


def test_metrics_equal_a_hand_computation():
    red = {"colour": "red"}
    cases = [
        RetrievalCase("ids", text="q1", relevant_ids=("a", "b")),
        RetrievalCase("where", text="q2", relevant_where=red),
        RetrievalCase("graded", text="q3", relevant_ids=("g1", "g2"), grades={"g1": 2.0, "g2": 1.0}),
        RetrievalCase("ood", text="q4"),
    ]
    rankings = {
        "ids": [Hit(i, 0.9 - n / 10, 0.8) for n, i in enumerate(["x", "a", "y", "b", "z"])],
        "where": [Hit("r1", 0.9, 0.9, metadata=red), Hit("n", 0.8, 0.4), Hit("r2", 0.7, 0.6, metadata=red)],
        "graded": [Hit("g2", 0.9, 0.3), Hit("g1", 0.8, 0.2)],
        "ood": [Hit("x", 0.5, 0.3), Hit("y", 0.4, 0.1)],
    }
    report = run_retrieval_eval(
        cases,
        fixed_search(rankings, exact={"ids": ["a", "x", "b", "q", "r", "s", "t", "u", "v", "w"]}),
        count=lambda collection, where: 3,  # three red items in all; two were shown
    )
    by_case = {o.case: o.metrics for o in report.observations}
    assert by_case["ids"] == pytest.approx(
        {"recall@1": 0, "recall@5": 1, "recall@10": 1, "mrr": 0.5, "ndcg@10": (1 / L3 + 1 / L5) / (1 + 1 / L3)}
    )
    assert by_case["where"] == pytest.approx(
        {
            "recall@1": 1 / 3,
            "recall@5": 2 / 3,
            "recall@10": 2 / 3,
            "mrr": 1,
            "ndcg@10": (1 + 1 / L4) / (1 + 1 / L3 + 1 / L4),
        }
    )
    assert by_case["graded"] == pytest.approx(
        {"recall@1": 0.5, "recall@5": 1, "recall@10": 1, "mrr": 1, "ndcg@10": (1 + 2 / L3) / (2 + 1 / L3)}
    )
    dense = report.summary()["dense"]
    assert dense["cases"] == 3 and dense["recall@1"] == pytest.approx(round((0 + 1 / 3 + 0.5) / 3, 4))
    assert dense["mrr"] == pytest.approx(round((0.5 + 1 + 1) / 3, 4))
    # Exact search found a, x, b among its ten: the shown list has three of them (x, a, b).
    assert report.groups()["dense"]["ann_recall@10"] == pytest.approx(round((0.3 + 1 + 1) / 3, 4))
    nm = report.no_match()["dense"]
    # The graded case's best confidence (0.3) is under the floor; the ood case is flagged.
    assert nm["in_domain"] == {"cases": 3, "no_match": pytest.approx(round(1 / 3, 4))}
    assert nm["out_of_domain"] == {"cases": 1, "no_match": 1.0}


def test_figures_per_result_modality_restrict_the_ranking_and_the_relevant_items():
    modality = {"i1": "image", "i2": "image", "t1": "text", "t2": "text", "r1": "image", "r2": "image"}

    def count(collection, where):  # the collection: which ids are which modality, r1 r2 red
        ids = where.get("id", list(modality))
        ids = [ids] if isinstance(ids, str) else ids
        red = {"r1", "r2"} if "colour" in where else set(modality)
        return sum(modality[i] == where.get("modality", modality[i]) and i in red for i in ids)

    cases = [
        RetrievalCase("both", text="q1", relevant_ids=("i1", "t1")),
        RetrievalCase("red", text="q2", relevant_where={"colour": "red"}),
    ]
    rankings = {
        "both": [Hit("t2", 0.9, modality="text"), Hit("t1", 0.8, modality="text"), Hit("i1", 0.7, modality="image")],
        "red": [Hit("t2", 0.9, modality="text"), Hit("r2", 0.8, modality="image", metadata={"colour": "red"})],
    }
    report = run_retrieval_eval(cases, fixed_search(rankings), count, exact=False)
    both, red = (o.by_modality for o in report.observations)
    assert set(both) == {"image", "text"} and set(red) == {"image"}  # a modality with nothing relevant: no row
    assert both["image"]["recall@1"] == 1 and both["text"]["mrr"] == 0.5  # t2 first among texts
    assert red["image"]["recall@1"] == 0.5 and red["image"]["mrr"] == 1  # one of two red images, first
    summary = report.summary()
    assert set(summary) == {"dense", "dense/image", "dense/text"}
    assert summary["dense/image"]["cases"] == 2 and summary["dense/text"]["cases"] == 1
    assert summary["dense/image"]["recall@1"] == pytest.approx(0.75)
    assert summary["dense"]["recall@1"] == 0  # the whole lists start with an irrelevant text


def test_a_failing_case_is_reported_not_raised():
    def search(case, mode, exact):
        raise RuntimeError("service down")

    report = run_retrieval_eval([RetrievalCase("a", text="q", relevant_ids=("x",))], search, lambda c, w: 0)
    assert report.errors() == ["a (dense): RuntimeError: service down"] and report.summary() == {}


def test_matches_conditions():
    hit = Hit("h", 0.5, metadata={"colour": "red", "n": 3, "tags": ["a", "b"]}, sources=("x.png",), modality="image")
    assert matches({"colour": "red", "n": {"gte": 2, "lt": 4}}, hit)
    assert matches({"tags": ["b", "z"], "source": "x.png", "modality": "image"}, hit)
    assert not matches({"colour": "blue"}, hit) and not matches({"n": {"gt": 3}}, hit) and not matches({}, hit)


def test_cases_are_checked_with_the_line_and_field(tmp_path):
    path = tmp_path / "cases.jsonl"

    def fails(*lines: str) -> InvalidInput:
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(InvalidInput) as info:
            load_cases(path)
        return info.value

    assert "cases.jsonl:2: not JSON" in fails('{"text": "a"}', "{nope").reason
    assert fails('{"text": "a", "image_id": "x"}').field == "text"
    assert fails('{"text": "a", "modes": ["fuzzy"]}').field == "modes"
    assert "not a file" in fails('{"image": "missing.png"}').reason
    assert fails('{"text": "a", "relevant": {"ids": [""]}}').field == "relevant.ids"
    assert fails('{"text": "a", "relevant": {"grades": {"x": -1}}}').field == "relevant.grades"
    assert "used twice" in fails('{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}').reason
    assert "no cases" in fails('{"text": "a", "needs_label": true}').reason
    (tmp_path / "q.png").write_bytes(b"png")
    path.write_text('{"image": "q.png", "modes": ["hybrid"]}\n{"id": "later", "text": "x", "needs_label": true}\n')
    cases, skipped = load_cases(path)
    assert cases[0].image == tmp_path / "q.png" and cases[0].modes == ("dense",)  # images are dense only
    assert skipped == ["later: needs_label (nothing is known to be relevant yet)"]


def test_committed_cases_load():
    cases, skipped = load_cases(shapes_eval.CASES)
    kinds = {c.query_modality for c in cases}
    assert len(cases) > 80 and kinds == {"text", "image"} and len(skipped) == 1
    assert any(c.relevant_where for c in cases) and any(c.grades for c in cases) and any(not c.in_domain for c in cases)


def test_regressions():
    base = {"dense": {"recall@10": 0.9, "mrr": 0.8}, "ask": {"unsafe_passes": 0}}
    assert (
        regressions(
            {"dense": {"recall@10": 0.89, "mrr": 0.9}, "ask": {"unsafe_passes": 0}}, base, 0.02, ["unsafe_passes"]
        )
        == []
    )
    worse = regressions(
        {"dense": {"recall@10": 0.85, "mrr": 0.8}, "ask": {"unsafe_passes": 1}}, base, 0.02, ["unsafe_passes"]
    )
    assert [w.split(":")[0] for w in worse] == ["dense recall@10", "ask unsafe_passes"]
    assert regressions({}, base, 0.02) == ["dense: missing from this run", "ask: missing from this run"]


# -- the gate on the bundled model ---------------------------------------------------------------
def _shuffled_model(folder):
    """The bundled tiny CLIP with every weight tensor's values permuted: same shapes, no skill."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(BUNDLED_MODELS["tiny-clip"], folder)
    weights = folder / "open_clip_model.safetensors"
    rng = np.random.default_rng(7)
    tensors = {k: rng.permutation(v.ravel()).reshape(v.shape) for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    return folder


@pytest.fixture(scope="module")
def baseline():
    return json.loads(shapes_eval.BASELINE.read_text())["figures"]


def _evaluate(tmp_path, encoder):
    with ApiClient.open(str(tmp_path / "data"), encoder) as client:
        shapes_eval.index_catalog(client)
        client.calibrate(collection=shapes_eval.COLLECTION)
        return shapes_eval.evaluate(client)


def test_the_gate_passes_on_the_bundled_model_and_writes_a_report(tmp_path, baseline):
    encoder = EncoderWorker(load_settings({"profile": "bundled", "encoder": {"threads": 2}}))
    report, figures = _evaluate(tmp_path, encoder)
    assert regressions(figures, baseline, 0.02) == [], "search quality changed: see tests/fixtures/shapes_eval.py"
    nm = report.no_match()
    assert nm["dense"]["out_of_domain"]["no_match"] >= 0.9 and nm["dense"]["in_domain"]["no_match"] <= 0.1
    written = write_report(report, tmp_path / "report")
    assert [p.name for p in written] == ["recall_at_k.png", "scores.png", "report.md"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written[:2])
    md = written[2].read_text()
    assert "| dense |" in md and "| hybrid |" in md and "## No match" in md


def test_the_gate_fails_on_a_model_with_shuffled_weights(tmp_path, baseline):
    model = _shuffled_model(tmp_path / "shuffled")
    encoder = EncoderWorker(load_settings({"profile": "bundled", "encoder": {"model": str(model), "runtime": "torch"}}))
    _, figures = _evaluate(tmp_path, encoder)
    worse = regressions(figures, baseline, 0.02)
    assert any(w.startswith("dense recall@10") for w in worse) and any(w.startswith("dense mrr") for w in worse)
