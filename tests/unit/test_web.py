"""The HTTP/JSON transport without a service: the OpenAPI schema, errors as HTTP, the page's
safety rules (no inline script, no HTML from data)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace

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


JSON = {"host": "127.0.0.1:8000", "content-type": "application/json"}


def _request(method: str, path: str, body: bytes = b"", headers: dict | None = None, *, chunks=None) -> Request:
    headers = {**JSON, **(headers or {})}
    raw = [(k.encode(), v.encode()) for k, v in headers.items() if v is not None]
    scope = {"type": "http", "method": method, "path": path, "headers": raw, "query_string": b""}
    parts = list(chunks) if chunks is not None else [body]
    read = []

    async def receive():
        part = parts.pop(0) if parts else b""
        read.append(len(part))
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    request = Request(scope, receive)
    request.read_sizes = read  # what the transport pulled from the client
    return request


class _Ingress:
    """Stands in for the Ingress: records what the transport hands its handler."""

    def __init__(self, *, key: str | None = None, allowed_hosts=(), allowed_origins=()) -> None:
        from services.config import HttpSettings
        from services.gateway.gate import Gateway

        self.seen = []
        self.gateway = Gateway(shared_key=key)
        self.meter = SimpleNamespace(records=[])
        self.meter.record = lambda *args: self.meter.records.append(args)
        self.settings = SimpleNamespace(
            limits=SimpleNamespace(max_request_bytes=1000),
            http=HttpSettings(allowed_hosts=list(allowed_hosts), allowed_origins=list(allowed_origins)),
        )

    async def SearchText(self, request, context):  # noqa: N802 (the RPC's name)
        self.seen.append((request, dict(context.invocation_metadata())))
        context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        context.set_details("unknown API key")
        context.set_trailing_metadata([("x-request-id", "r9"), ("x-client-request-id", "mine-1")])
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
    assert reply.headers["loupe-request-id"] == "r9" and reply.headers["x-client-request-id"] == "mine-1"
    assert json.loads(reply.body)["request_id"] == "r9"
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


def _post(ingress, body: bytes = b"{}", headers: dict | None = None, **kwargs):
    return asyncio.run(http.handle(ingress, _request("POST", "/api/v1/SearchText", body, headers, **kwargs)))


def test_pages_on_other_sites_and_foreign_hosts_are_refused_before_anything_runs() -> None:
    ingress = _Ingress()  # the open default: no keys
    # A cross-site "simple" request (no preflight in a browser): text/plain is refused.
    plain = _post(ingress, b'{"query": "x"}', {"content-type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in json.loads(plain.body)["error"]["message"]
    form = _post(ingress, b"query=x", {"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    assert _post(ingress, b"{}", {"content-type": None}).status_code == 415
    # A page on another site (its Origin), even with JSON: refused.
    for origin in ("https://evil.example", "null", "http://127.0.0.1:9999", "http://127.0.0.1:8000.evil.example"):
        reply = _post(ingress, headers={"origin": origin})
        assert reply.status_code == 403 and "allowed_origins" in json.loads(reply.body)["error"]["message"], origin
    # DNS rebinding: the attacker's name resolved to 127.0.0.1; the Host header still names it.
    for host in (
        "evil.example:8000",
        "127.0.0.1.nip.io",
        "",
        "[::1",
        "localhost.evil.example",
        "evil.example@127.0.0.1:8000",  # lenient parsers read the part after '@'
        "127.0.0.1:8000, evil.example",
        "localhost#evil",
        "localhost/evil",
        "localhost:bad",
    ):
        reply = asyncio.run(http.handle(ingress, _request("GET", "/", headers={"host": host})))
        assert reply.status_code == 421 and "allowed_hosts" in json.loads(reply.body)["error"]["message"], host
    assert not ingress.seen  # nothing reached the handler
    # The page's own calls, and hosts this machine answers to, go through.
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"):
        same = {"host": host, "origin": f"http://{host.lower()}"}
        assert _post(ingress, b'{"query": "x"}', same).status_code == 401  # the stand-in handler's answer
    assert len(ingress.seen) == 4


def test_allowed_hosts_and_origins_are_configurable_and_allowed_origins_get_cors() -> None:
    ingress = _Ingress(allowed_hosts=["search.example.com"], allowed_origins=["https://app.example.com"])
    named = {"host": "search.example.com", "origin": "https://app.example.com"}
    reply = _post(ingress, b'{"query": "x"}', named)
    assert reply.status_code == 401 and reply.headers["access-control-allow-origin"] == "https://app.example.com"
    pre = asyncio.run(http.handle(ingress, _request("OPTIONS", "/api/v1/SearchText", headers=named)))
    assert pre.status_code == 204 and "authorization" in pre.headers["access-control-allow-headers"]
    other = asyncio.run(
        http.handle(
            ingress, _request("OPTIONS", "/api/v1/SearchText", headers={**named, "origin": "https://x.example"})
        )
    )
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    assert _post(_Ingress(allowed_hosts=["*"]), b'{"query": "x"}', {"host": "anything:1"}).status_code == 401


def test_the_key_is_checked_before_the_body_is_read() -> None:
    ingress = _Ingress(key="lp_right")
    request = _request("POST", "/api/v1/SearchText", chunks=[b"x" * 100] * 50)
    reply = asyncio.run(http.handle(ingress, request))
    assert reply.status_code == 401 and "API key" in json.loads(reply.body)["error"]["message"]
    assert request.read_sizes == [] and not ingress.seen  # not one chunk was read
    assert ingress.meter.records == [("(unauthenticated)", "SearchText", "UNAUTHENTICATED")]  # still counted
    wrong = _request("POST", "/api/v1/SearchText", b"{}", {"x-api-key": "lp_wrong"})
    assert asyncio.run(http.handle(ingress, wrong)).status_code == 401 and wrong.read_sizes == []


def test_a_body_over_the_cap_is_refused_by_its_declared_size_or_as_it_streams_in() -> None:
    ingress = _Ingress()
    declared = _request("POST", "/api/v1/SearchText", b"{}", {"content-length": "5000000"})
    assert asyncio.run(http.handle(ingress, declared)).status_code == 413 and declared.read_sizes == []
    streamed = _request("POST", "/api/v1/SearchText", chunks=[b" " * 300] * 20)  # no length: chunked
    assert asyncio.run(http.handle(ingress, streamed)).status_code == 413
    assert sum(streamed.read_sizes) <= 1200  # stopped at the cap (1000), not read to the end
    bad = _request("POST", "/api/v1/SearchText", b"{}", {"content-length": "12abc"})
    assert asyncio.run(http.handle(ingress, bad)).status_code == 400
    deep = _post(ingress, b"[" * 400 + b"]" * 400)
    assert deep.status_code == 400
    assert not ingress.seen
