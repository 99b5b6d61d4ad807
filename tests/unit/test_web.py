"""The HTTP/JSON transport without a service: the OpenAPI schema, errors as HTTP, the page's
safety rules (no inline script, no HTML from data)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import grpc
from starlette.requests import Request

from encoders.common.errors import InvalidInput, Overloaded
from services.rpc.errors import to_status
from services.web import http
from services.web.openapi import schema
from tests.fixtures.contract import services

STATIC = Path(http.__file__).parent / "static"


def test_the_schema_has_every_unary_rpc_and_every_reference_resolves() -> None:
    doc = schema()
    streaming = {"Transcribe"}
    expected = {f"/api/v1/{m}" for ms in services().values() for m in ms if m not in streaming and m != "Check"}
    assert expected <= set(doc["paths"]) and "/api/v1/health" in doc["paths"]
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])
    options = doc["components"]["schemas"]["SearchOptions"]["properties"]
    assert options["mode"]["enum"][0] == "SEARCH_MODE_DENSE" and options["limit"]["type"] == "integer"
    assert doc["components"]["schemas"]["AskRequest"]["properties"]["images"]["items"]["contentEncoding"] == "base64"


def test_every_status_code_the_error_table_makes_has_an_http_status() -> None:
    from services.rpc.errors import STATUS_TABLE

    assert {code for _, code in STATUS_TABLE} <= set(http.HTTP_STATUS)
    assert http.HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429


def test_rich_details_become_json_fields() -> None:
    bad = to_status(InvalidInput("limit 0 is out of range", field="options.limit"))
    response = http._error(400, "INVALID_ARGUMENT", bad.details, rid="r1", details=bad.trailing_metadata[0][1])
    body = json.loads(response.body)
    assert body == {
        "error": {
            "code": "INVALID_ARGUMENT",
            "message": "limit 0 is out of range",
            "field_violations": [{"field": "options.limit", "description": "limit 0 is out of range"}],
        },
        "request_id": "r1",
    }
    busy = to_status(Overloaded("search lane full", retry_after_s=2.5))
    response = http._error(429, "RESOURCE_EXHAUSTED", busy.details, details=busy.trailing_metadata[0][1])
    assert json.loads(response.body)["error"]["retry_after_s"] == 2.5 and response.headers["retry-after"] == "2"


def _request(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> Request:
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "headers": raw, "query_string": b""}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


class _Ingress:
    """Stands in for the Ingress: records what the transport hands its handler."""

    class settings:  # noqa: N801
        class limits:  # noqa: N801
            max_request_bytes = 1000

    def __init__(self) -> None:
        self.seen = []

    async def SearchText(self, request, context):  # noqa: N802 (the RPC's name)
        self.seen.append((request, dict(context.invocation_metadata())))
        context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        context.set_details("unknown API key")
        context.set_trailing_metadata([("x-request-id", "r9")])
        return None


def test_a_post_runs_the_rpcs_handler_with_the_headers_as_metadata() -> None:
    ingress = _Ingress()
    body = b'{"query": "red", "options": {"limit": 3}}'
    reply = asyncio.run(
        http.handle(ingress, _request("POST", "/api/v1/SearchText", body, {"authorization": "Bearer k"}))
    )
    request, metadata = ingress.seen[0]
    assert request.query == "red" and request.options.limit == 3 and metadata["authorization"] == "Bearer k"
    assert reply.status_code == 401 and json.loads(reply.body)["error"]["message"] == "unknown API key"
    assert reply.headers["x-request-id"] == "r9"
    big = asyncio.run(http.handle(ingress, _request("POST", "/api/v1/SearchText", b"x" * 2000)))
    assert big.status_code == 413
    assert asyncio.run(http.handle(ingress, _request("POST", "/api/v1/NoSuchCall", b"{}"))).status_code == 404
    assert asyncio.run(http.handle(ingress, _request("GET", "/api/v1/SearchText"))).status_code == 405
    bad = asyncio.run(http.handle(ingress, _request("POST", "/api/v1/SearchText", b"{not json")))
    assert bad.status_code == 400 and "SearchTextRequest" in json.loads(bad.body)["error"]["message"]


def test_the_page_has_no_inline_script_and_puts_data_in_as_text() -> None:
    page = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)  # scripts only from files
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", page, re.IGNORECASE)  # no inline event handlers
    assert "style=" not in page
    script = (STATIC / "app.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script
    assert "http://" not in page + script and "https://" not in page + script  # nothing fetched from elsewhere
