"""Feedback through the real service, on the embedded events store and on a real PostgreSQL:
ratings tied to what the user saw, their errors, the review queue, a restart, and the export
that `loupe eval ask` runs."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import yaml

from services.cli.launch import ServiceProcess
from services.cli.main import main
from services.client import LoupeCallError, LoupeClient, TextInput
from services.gateway.clients import hash_key, new_key
from tests.fixtures import postgres as pg

pytestmark = pytest.mark.slow
SHOTS = Path(__file__).resolve().parents[1] / "fixtures" / "screenshots"
KEYS = {"desk": new_key(), "other": new_key(), "ops": new_key()}
CLIENTS = [
    {"id": "desk", "rights": ["search", "ask", "index"], "collections": ["support"]},
    {"id": "other", "rights": ["search"], "collections": ["support"]},
    {"id": "ops", "rights": ["admin"], "collections": ["*"]},
]


@pytest.fixture(params=["sqlite", "postgresql"])
def events_url(request, tmp_path):
    if request.param == "sqlite":
        yield ""  # the default: loupe-events.db in the data folder
        return
    if not pg.available():
        pytest.skip(pg.NOT_INSTALLED)
    with pg.postgres() as url:
        yield url


def start(root: Path, events_url: str, name: str) -> ServiceProcess:
    clients = root / "clients.yaml"
    entries = [{**c, "keys": [{"sha256": hash_key(KEYS[c["id"]])}]} for c in CLIENTS]
    clients.write_text(yaml.safe_dump({"clients": entries}))
    env = {"LOUPE_EVENTS_URL": events_url} if events_url else {}
    args = ["--bundled-models", "--data-dir", str(root / "data"), "--clients", str(clients)]
    return ServiceProcess(args, log_path=root / f"{name}.log", env=env)


def cli(target: str, who: str, *args: str, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--target", target, "--api-key", KEYS[who], *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_feedback_round_trips_survives_a_restart_and_exports_cases(events_url, tmp_path, capsys) -> None:
    screenshot = (SHOTS / "printer_e42_tray_empty.png").read_bytes()
    with start(tmp_path, events_url, "first") as svc:
        t = svc.target
        with LoupeClient(svc.target, api_key=KEYS["desk"], timeout_s=300) as desk:
            desk.index_texts(
                [TextInput("a red circle", id="circle"), TextInput("a blue square", id="square")],
                collection="support",
            )
            search = desk.search_text("a red circle", collection="support", limit=2)
            answer = desk.ask("What error does the printer show?", [screenshot])
        assert search.request_id and answer.request_id and answer.request_id != search.request_id

        # Ratings, each once, about what was shown.
        code, out, _ = cli(
            t,
            "desk",
            "feedback",
            search.request_id,
            "--down",
            "--used",
            "square",
            "--comment",
            "wanted the square",
            capsys=capsys,
        )
        assert code == 0 and f"feedback on {search.request_id} stored at" in out
        code, _, err = cli(t, "desk", "feedback", search.request_id, "--up", capsys=capsys)
        assert code == 2 and "ALREADY_EXISTS" in err and "already rated" in err
        code, _, err = cli(t, "desk", "feedback", "no-such-request", "--up", capsys=capsys)
        assert code == 2 and "NOT_FOUND" in err and "no-such-request" in err
        code, _, err = cli(t, "desk", "feedback", answer.request_id, "--stars", "9", capsys=capsys)
        assert code == 2 and "INVALID_ARGUMENT" in err and "1 (bad) to 5 (good)" in err
        code, _, err = cli(t, "desk", "feedback", answer.request_id, "--up", "--used", "ghost", capsys=capsys)
        assert code == 2 and "INVALID_ARGUMENT" in err and "'ghost'] were not in that response" in err
        with LoupeClient(svc.target, api_key=KEYS["other"]) as other, pytest.raises(LoupeCallError) as err:
            other.feedback(search.request_id, vote="up")  # another client's call is not found
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        with LoupeClient(svc.target, api_key=KEYS["desk"]) as desk, pytest.raises(LoupeCallError) as err:
            desk.list_feedback()  # the review queue needs the admin right
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED

        # The queue: the tiny VLM's abstention and the down-voted search.
        code, out, _ = cli(t, "ops", "review", "--json", capsys=capsys)
        queue = {r["request_id"]: r for r in json.loads(out)}
        assert set(queue) == {search.request_id, answer.request_id}
        assert queue[answer.request_id]["verdict"] == "abstained"
        assert queue[answer.request_id]["reasons"][0].startswith("abstained (")
        assert queue[search.request_id]["reasons"] == ["rated down by desk: wanted the square"]
        assert [h["id"] for h in queue[search.request_id]["shown"]["hits"]] == [h.id for h in search.hits]
        code, out, _ = cli(
            t, "ops", "feedback", answer.request_id, "--down", "--correct", "E-42: tray empty", capsys=capsys
        )  # a reviewer gives the answer it should have been
        assert code == 0
        code, out, _ = cli(t, "ops", "review", "--done", search.request_id, "--note", "relabelled", capsys=capsys)
        assert code == 0 and "reviewed at" in out

    with start(tmp_path, events_url, "second") as svc:  # a restart: all of it is still there
        code, out, _ = cli(svc.target, "ops", "review", "--json", capsys=capsys)
        assert [r["request_id"] for r in json.loads(out)] == [answer.request_id]
        code, out, _ = cli(svc.target, "ops", "review", "--all", capsys=capsys)
        assert code == 0 and "reviewed" in out and "relabelled" in out and "E-42: tray empty" in out

        code, out, _ = cli(svc.target, "ops", "feedback", "export", str(tmp_path / "cases"), capsys=capsys)
        assert code == 0 and "1 Ask case(s)" in out and "1 retrieval case(s)" in out
        (case,) = [json.loads(line) for line in (tmp_path / "cases" / "ask_cases.jsonl").read_text().splitlines()]
        assert case["expected_answer"] == "E-42: tray empty" and case["expected_verdict"] == "answered"
        assert (tmp_path / "cases" / case["images"][0]).read_bytes() == screenshot
        (found,) = [json.loads(x) for x in (tmp_path / "cases" / "retrieval_cases.jsonl").read_text().splitlines()]
        assert found["text"] == "a red circle" and found["relevant"] == {"ids": ["square"]}

        # The eval command runs the exported case against the service (the tiny VLM abstains).
        code, out, _ = cli(
            svc.target, "desk", "eval", "ask", str(tmp_path / "cases" / "ask_cases.jsonl"), "--json", capsys=capsys
        )
        report = json.loads(out)
        assert report["totals"]["cases"] == 1 and report["totals"]["errors"] == 0
        assert report["cases"][0]["false_abstention"] is True
