"""Calibration and the retrieval eval through the real service and the CLI: `loupe calibrate`,
`loupe status`, `loupe search` saying "no match", and `loupe eval retrieval` on the committed
shapes fixtures in every mode, gated by the committed baseline (the CI regression gate)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures import shapes_eval

pytestmark = pytest.mark.slow
COLLECTION = shapes_eval.COLLECTION


def loupe(service, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "--target", service.target, "--timeout", "600", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def calibrated(service):
    with service.client(timeout_s=300) as client:
        shapes_eval.index_catalog(client)
    done = loupe(service, "calibrate", COLLECTION)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_calibrate_and_status_report_the_fit(service, calibrated):
    assert f"collection {COLLECTION}: calibrated " in calibrated and "bundled:tiny-clip" in calibrated
    assert "text/dense/image: confidence 0.5 at score" in calibrated and "held-out reliability" in calibrated
    status = loupe(service, "status")
    assert status.returncode == 0
    lines = status.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if f"collection {COLLECTION}:" in line)
    assert lines[at + 1].strip().startswith("calibrated ") and "out-of-domain" in lines[at + 1]
    missing = loupe(service, "calibrate", "no-such-collection")
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr


def test_search_says_no_match_and_json_carries_it(service, calibrated):
    query = "a receipt from the hardware store"
    table = loupe(service, "search", query, "--collection", COLLECTION)
    assert table.returncode == 0 and table.stdout.startswith("no match:"), table.stdout
    lines = loupe(service, "search", query, "--collection", COLLECTION, "--json").stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["no_match"] is True
    nearest = loupe(service, "search", query, "--collection", COLLECTION, "--json", "--min-confidence", "0")
    records = [json.loads(line) for line in nearest.stdout.splitlines()]
    assert len(records) == 10 and all(0 <= r["confidence"] < 0.5 and r["no_match"] is False for r in records)
    caption = shapes_eval.catalog()[0]["metadata"]["caption"]
    found = loupe(service, "search", caption, "--collection", COLLECTION, "--modality", "image")
    assert "confidence" in found.stdout.splitlines()[0] and "img-0" in found.stdout.splitlines()[1]
    bad = loupe(service, "search", query, "--collection", COLLECTION, "--min-confidence", "2")
    assert bad.returncode == 2 and "min_confidence 2.0 is outside 0..1" in bad.stderr


def test_the_retrieval_eval_passes_the_committed_baseline(service, calibrated, tmp_path):
    report = tmp_path / "report"
    done = loupe(
        service,
        "eval",
        "retrieval",
        str(shapes_eval.CASES),
        "--collection",
        COLLECTION,
        "--modes",
        "dense,keyword,hybrid",
        "--baseline",
        str(shapes_eval.BASELINE),
        "--report",
        str(report),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no metric worse than" in done.stderr and "skipped unlabelled" in done.stderr
    print(done.stdout)  # the table, in the CI log
    head = done.stdout.splitlines()[0].split()
    assert head[:6] == ["group", "recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"]
    assert {p.name for p in report.iterdir()} == {"report.md", "recall_at_k.png", "scores.png"}

    # A stricter baseline than the service can meet fails the gate with a line per metric.
    figures = json.loads(shapes_eval.BASELINE.read_text())
    figures["figures"]["dense"]["recall@10"] = 1.5
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps(figures))
    failed = loupe(
        service,
        "eval",
        "retrieval",
        str(shapes_eval.CASES),
        "--collection",
        COLLECTION,
        "--no-exact",
        "--baseline",
        str(strict),
        "--json",
    )
    assert failed.returncode == 1 and "REGRESSION dense recall@10" in failed.stderr
    assert json.loads(failed.stdout)["summary"]["dense"]["cases"] > 50
    wrong_kind = tmp_path / "ask.json"
    wrong_kind.write_text(json.dumps({"kind": "ask", "figures": {}}))
    refused = loupe(service, "eval", "retrieval", str(shapes_eval.CASES), "--baseline", str(wrong_kind))
    assert refused.returncode == 2 and "is a ask baseline" in refused.stderr
