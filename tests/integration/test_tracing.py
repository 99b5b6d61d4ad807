"""Traces through the real service: with tracing.endpoint set, the spans of one search, one
index call and one Ask reach an OTLP receiver, each call's in one trace with its request id,
from every deployment it reached; the log lines of two deployments carry the same ids."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from protos.loupe.v1 import index_pb2, index_pb2_grpc, qa_pb2, qa_pb2_grpc, search_pb2, search_pb2_grpc
from services.cli.launch import ServiceProcess
from services.client import LoupeClient, TextInput
from services.serve.tracing import trace_id_of
from tests.fixtures.otlp import OtlpReceiver

pytestmark = pytest.mark.slow
SHOT = Path(__file__).resolve().parents[1] / "fixtures" / "screenshots" / "printer_e42_tray_empty.png"
# request id -> the deployments its spans must come from
EXPECTED = {
    # The Ingress owns the store: its search and store steps are Ingress spans.
    "trace-otel-1": {"Ingress", "Encoder"},  # SearchText
    "trace-index-2": {"Ingress", "Encoder"},  # IndexTexts
    "trace-ask-3": {"Ingress", "Answerer", "Encoder"},  # Ask with retrieval (back to the Ingress for the search)
}


def spans_of(otlp, rid: str) -> list:
    return [s for s in otlp.spans if s.attributes.get("loupe.request_id") == rid]


def test_each_calls_spans_share_a_trace_and_its_request_id(tmp_path) -> None:
    with OtlpReceiver() as otlp:
        env = {"LOUPE_TRACING__ENDPOINT": otlp.url, "LOUPE_AUDIO": "false"}
        args = ["--bundled-models", "--data-dir", str(tmp_path / "data")]
        with ServiceProcess(args, log_path=tmp_path / "serve.log", env=env) as svc:
            with LoupeClient(svc.target) as client:
                client.index_texts([TextInput("a red circle", id="t1")], collection="traced")
            with grpc.insecure_channel(svc.target) as channel:
                request = search_pb2.SearchTextRequest(
                    query="a red circle", options=search_pb2.SearchOptions(collection="traced")
                )
                found = search_pb2_grpc.SearchServiceStub(channel).SearchText(
                    request, metadata=[("x-request-id", "trace-otel-1")], timeout=60
                )
                index = index_pb2.IndexTextsRequest(collection="traced", items=[index_pb2.TextItem(text="a blue box")])
                made = index_pb2_grpc.IndexServiceStub(channel).IndexTexts(
                    index, metadata=[("x-request-id", "trace-index-2")], timeout=60
                )
                ask = qa_pb2.AskRequest(
                    question="What error does the printer show?",
                    images=[SHOT.read_bytes()],
                    retrieval=qa_pb2.Retrieval(k=1, collection="traced"),
                )
                answer = qa_pb2_grpc.QAServiceStub(channel).Ask(
                    ask, metadata=[("x-request-id", "trace-ask-3")], timeout=300
                )
            # The server's ids key the spans and log lines; the callers' ids are labels on them.
            ids = {"trace-otel-1": found.request_id, "trace-index-2": made.request_id, "trace-ask-3": answer.request_id}
            assert len(set(ids.values())) == 3
            deadline = time.monotonic() + 30  # the exporters send every 0.5 s; Ray forwards logs in batches
            while time.monotonic() < deadline:
                log = svc.log_path.read_text(errors="replace").splitlines()
                spans_in = all(
                    {s.resource.get("loupe.deployment") for s in spans_of(otlp, ids[label])} >= want
                    for label, want in EXPECTED.items()
                )
                mine = [x for x in log if ids["trace-ask-3"] in x]
                if spans_in and any('"msg": "ask"' in x for x in mine) and any('"msg": "call"' in x for x in mine):
                    break
                time.sleep(0.5)
    for label, want in EXPECTED.items():
        rid = ids[label]
        mine = spans_of(otlp, rid)
        assert {s.resource.get("loupe.deployment") for s in mine} >= want, (rid, [(s.name, s.resource) for s in mine])
        assert {s.trace_id for s in mine} == {f"{trace_id_of(rid):032x}"}, rid
    ingress = {
        s.name: s for s in spans_of(otlp, ids["trace-otel-1"]) if s.resource.get("loupe.deployment") == "Ingress"
    }
    assert ingress["SearchText"].attributes["rpc.method"] == "SearchText" and "search" in ingress, ingress
    assert {s.name for s in spans_of(otlp, ids["trace-otel-1"])} >= {
        "SearchText",
        "encode_text",
        "search",
        "retrieval.candidates",
    }
    assert {s.name for s in spans_of(otlp, ids["trace-index-2"])} >= {"IndexTexts", "encode_text", "store"}
    ask_steps = {s.name for s in spans_of(otlp, ids["trace-ask-3"])}
    assert ask_steps >= {"Ask", "ask", "ask_input_guards", "ask_ocr", "ask_retrieval", "ask_draft"}, ask_steps

    # Log lines: the Ingress's call line and the Answerer's ask line carry the Ask's id.
    lines = [json.loads(x[x.index("{") :]) for x in log if ids["trace-ask-3"] in x and '"msg": "' in x]
    calls = [x for x in lines if x["msg"] == "call"]
    asks = [x for x in lines if x["msg"] == "ask"]
    assert calls and calls[0]["rpc"] == "Ask" and asks and asks[0]["verdict"] == "abstained", lines
    assert calls[0]["client_request_id"] == "trace-ask-3"
    assert ingress["SearchText"].attributes["loupe.client_request_id"] == "trace-otel-1"
    assert any("loupe_Answerer" in x for x in log if ids["trace-ask-3"] in x)
    assert any("loupe_Encoder" in x for x in log if ids["trace-index-2"] in x)
