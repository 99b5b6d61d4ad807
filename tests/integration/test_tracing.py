"""Traces through the real service: with tracing.endpoint set, one call's spans from the
Ingress, Encoder and Index reach an OTLP receiver in one trace, each with the request id."""

from __future__ import annotations

import time

import grpc
import pytest

from protos.loupe.v1 import search_pb2, search_pb2_grpc
from services.cli.launch import ServiceProcess
from services.client import LoupeClient, TextInput
from services.serve.tracing import trace_id_of
from tests.fixtures.otlp import OtlpReceiver

pytestmark = pytest.mark.slow


def test_one_calls_spans_share_a_trace_and_its_request_id(tmp_path) -> None:
    with OtlpReceiver() as otlp:
        env = {"LOUPE_TRACING__ENDPOINT": otlp.url, "LOUPE_AUDIO": "false", "LOUPE_ASK__ENABLED": "false"}
        args = ["--bundled-models", "--data-dir", str(tmp_path / "data")]
        with ServiceProcess(args, log_path=tmp_path / "serve.log", env=env) as svc:
            with LoupeClient(svc.target) as client:
                client.index_texts([TextInput("a red circle", id="t1")], collection="traced")
            with grpc.insecure_channel(svc.target) as channel:
                request = search_pb2.SearchTextRequest(
                    query="a red circle", options=search_pb2.SearchOptions(collection="traced")
                )
                search_pb2_grpc.SearchServiceStub(channel).SearchText(
                    request, metadata=[("x-request-id", "trace-otel-1")], timeout=60
                )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                mine = [s for s in otlp.spans if s.attributes.get("loupe.request_id") == "trace-otel-1"]
                if {s.resource.get("loupe.deployment") for s in mine} >= {"Ingress", "Encoder", "Index"}:
                    break
                time.sleep(0.5)
    by_deployment = {s.resource.get("loupe.deployment"): s for s in mine}
    assert {"Ingress", "Encoder", "Index"} <= set(by_deployment), [(s.name, s.resource) for s in mine]
    assert by_deployment["Ingress"].name == "SearchText"
    assert by_deployment["Ingress"].attributes["rpc.method"] == "SearchText"
    assert {s.name for s in mine} >= {"SearchText", "encode_text", "search"}
    assert {s.trace_id for s in mine} == {f"{trace_id_of('trace-otel-1'):032x}"}
