"""Prometheus metrics through the real service: a known sequence of calls shows up with the
expected counts (as deltas: the service is shared with other tests), the exposition passes
`promtool check metrics`, and a real Prometheus scrapes it."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.client import LoupeCallError, TextInput

pytestmark = pytest.mark.slow
SHOTS = Path(__file__).resolve().parents[1] / "fixtures" / "screenshots"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels) -> float:
    """The sum over samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in found.items() if n == name and want <= set(lab))


def test_a_known_sequence_of_calls_is_counted(service) -> None:
    url = service.process.metrics_url
    deadline = time.monotonic() + 30  # said once the service serves
    while f"metrics: {url}" not in service.process.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert f"metrics: {url}" in service.process.log_path.read_text()
    before = samples(scrape(url))
    with service.client(timeout_s=300) as client:
        client.index_texts([TextInput(f"metrics text {i}", id=f"m{i}") for i in range(3)], collection="metrics")
        for _ in range(3):
            client.search_text("metrics text", mode="keyword", collection="metrics")
        with pytest.raises(LoupeCallError):
            client.search_text("metrics text", limit=0, collection="metrics")
        client.status()
        answer = client.ask("What error code is shown?", [(SHOTS / "win_update_0x80070005.png").read_bytes()])
    after = samples(scrape(url))

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("loupe_calls_total", rpc="SearchText", code="OK", client="anonymous") == 3
    assert delta("loupe_calls_total", rpc="SearchText", code="INVALID_ARGUMENT") == 1
    assert delta("loupe_calls_total", rpc="IndexTexts", code="OK") == 1
    assert delta("loupe_call_duration_seconds_count", rpc="SearchText") == 4
    assert delta("loupe_encoder_batch_size_sum", kind="text") >= 3  # the three texts, in one pass or more
    assert delta("loupe_step_duration_seconds_count", step="search") == 3
    assert delta("loupe_retrieval_stage_seconds_count", stage="candidates") == 3
    assert delta("loupe_step_duration_seconds_count", step="store") == 1
    assert delta("loupe_admission_wait_seconds_count", lane="search") == 4
    assert value(after, "loupe_collection_points", collection="metrics") == 3
    verdict = answer.verdict
    from protos.loupe.v1 import qa_pb2

    name = qa_pb2.AnswerVerdict.Name(verdict).removeprefix("ANSWER_VERDICT_").lower()
    assert delta("loupe_ask_verdicts_total", verdict=name, model=answer.model_id, prompt_version="ask/v1") == 1
    assert delta("loupe_vlm_tokens_total", direction="generated", model=answer.model_id) == answer.tokens_out
    assert delta("loupe_step_duration_seconds_count", step="ask_draft") == 1
    failed = [g.guard for g in answer.guards if not g.passed]
    if failed:
        assert delta("loupe_guard_failures_total", guard=failed[0]) >= 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (.ci/run installs prometheus)")
def test_promtool_accepts_the_exposition(service) -> None:
    text = scrape(service.process.metrics_url)
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (.ci/run installs it)")
def test_a_real_prometheus_scrapes_the_service(service, tmp_path) -> None:
    target = urllib.parse.urlsplit(service.process.metrics_url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [{"job_name": "loupe", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
        + [f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        with service.client() as client:
            client.index_texts([TextInput("scraped", id="p1")], collection="metrics-prom")
        query = urllib.parse.urlencode({"query": 'sum(loupe_calls_total{rpc="IndexTexts",code="OK"})'})
        found, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                body = json.loads(scrape(f"http://127.0.0.1:{port}/api/v1/query?{query}"))
                result = body["data"]["result"]
                if result and float(result[0]["value"][1]) >= 1:
                    found = float(result[0]["value"][1])
                    break
            except OSError:
                pass
            time.sleep(1)
        assert found is not None and found >= 1
        up = json.loads(scrape(f"http://127.0.0.1:{port}/api/v1/query?query=up"))["data"]["result"]
        assert up and up[0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
