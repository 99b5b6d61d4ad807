"""Request ids through the real service: made by the server for every call, returned in the
response and the trailing metadata, on errors too; a caller's x-request-id is a label beside it."""

from __future__ import annotations

import re

import grpc
import pytest

from protos.loupe.v1 import index_pb2, index_pb2_grpc, search_pb2, search_pb2_grpc
from services.client import LoupeCallError, TextInput

pytestmark = pytest.mark.slow


DENSE_IDS: dict[str, str] = {}


def trailing_id(call, key: str = "x-request-id") -> str:
    return dict(call.trailing_metadata() or ()).get(key, "")


def test_every_call_gets_the_servers_id_and_a_callers_id_comes_back_as_its_label(service) -> None:
    with service.client() as client:
        client.index_texts([TextInput("a red circle", id="rid-1")], collection="rids")
    with grpc.insecure_channel(service.target) as channel:
        search = search_pb2_grpc.SearchServiceStub(channel)
        request = search_pb2.SearchTextRequest(
            query="a red circle", options=search_pb2.SearchOptions(collection="rids")
        )
        response, call = search.SearchText.with_call(request, metadata=[("x-request-id", "trace-42.a")], timeout=60)
        assert re.fullmatch(r"[0-9a-f]{32}", response.request_id) and response.request_id == trailing_id(call)
        assert trailing_id(call, "x-client-request-id") == "trace-42.a"
        again, call = search.SearchText.with_call(request, metadata=[("x-request-id", "trace-42.a")], timeout=60)
        assert again.request_id != response.request_id  # the same label twice: two calls, two ids
        assert response.hits[0].item.id == "rid-1"
        # A text not searched before: a cached query vector would not reach the Encoder.
        dense = search_pb2.SearchTextRequest(
            query="a red circle, searched once", options=search_pb2.SearchOptions(collection="rids")
        )
        DENSE_IDS["trace-dense-7"] = search.SearchText(
            dense, metadata=[("x-request-id", "trace-dense-7")], timeout=60
        ).request_id
        response, call = search.SearchText.with_call(request, timeout=60)
        assert re.fullmatch(r"[0-9A-Za-z-]{8,}", response.request_id) and response.request_id == trailing_id(call)
        index = index_pb2_grpc.IndexServiceStub(channel)
        made, call = index.IndexTexts.with_call(
            index_pb2.IndexTextsRequest(collection="rids", items=[index_pb2.TextItem(text="blue", id="rid-2")]),
            metadata=[("x-request-id", "bad id with spaces")],
            timeout=60,
        )
        assert made.request_id and made.request_id != "bad id with spaces" and made.request_id == trailing_id(call)
        assert trailing_id(call, "x-client-request-id") == ""  # not a sane token: no label


def test_a_refused_call_carries_its_id_too(service) -> None:
    with grpc.insecure_channel(service.target) as channel:
        search = search_pb2_grpc.SearchServiceStub(channel)
        bad = search_pb2.SearchTextRequest(query="x", options=search_pb2.SearchOptions(limit=0, collection="rids"))
        with pytest.raises(grpc.RpcError) as err:
            search.SearchText(bad, metadata=[("x-request-id", "trace-err-1")], timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.fullmatch(r"[0-9a-f]{32}", trailing_id(err.value))
    assert trailing_id(err.value, "x-client-request-id") == "trace-err-1"
    with service.client() as client, pytest.raises(LoupeCallError) as sdk_err:
        client.search_text("x", limit=0, collection="rids")
    assert sdk_err.value.request_id


def test_the_id_is_on_the_log_lines_of_every_deployment_the_call_reached(service) -> None:
    import json
    import time

    rid = DENSE_IDS["trace-dense-7"]  # the first test's call
    deadline = time.monotonic() + 30  # Ray forwards replica output in batches
    while time.monotonic() < deadline:
        log = service.process.log_path.read_text(errors="replace").splitlines()
        mine = [line for line in log if rid in line]
        if any("loupe_Encoder" in line for line in mine) and any('"msg": "call"' in line for line in mine):
            break
        time.sleep(1)
    # Serve's access line of the Encoder (a handle call from the Ingress, which owns the store).
    assert any("loupe_Encoder" in line for line in mine), mine
    calls = [json.loads(line[line.index("{") :]) for line in mine if '"msg": "call"' in line]
    assert calls and calls[0]["rpc"] == "SearchText" and calls[0]["code"] == "OK" and calls[0]["hits"] >= 1
    assert calls[0]["request_id"] == rid and calls[0]["collection"] == "rids"
    assert calls[0]["client_request_id"] == "trace-dense-7"
