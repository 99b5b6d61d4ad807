"""The HTTP/JSON transport: the web page, and the gRPC API as JSON, on Serve's HTTP port.

    GET  /                         the page (services/web/static/), with a strict CSP
    GET  /static/NAME              its script, style and icon
    GET  /api/openapi.json         the OpenAPI 3.1 schema of everything below
    GET  /api/v1/health            {"status": "SERVING" | "NOT_SERVING"}
    POST /api/v1/RPC               every unary RPC of protos/loupe/v1 by its name
                                   (SearchText, Ask, Submit, GetStatus, ...): the request
                                   message as proto3 JSON, the response message as JSON

Before anything is read, every request passes the checks a browser-facing port needs:
- its `Host` must be this machine (localhost, 127.0.0.1, [::1]) or one of `http.allowed_hosts`
  (421 otherwise): a page on another site cannot reach the service through DNS rebinding;
- a request from a browser page (`Origin`) must come from the service's own page or one of
  `http.allowed_origins` (403 otherwise; those get CORS answers);
- a POST must be `Content-Type: application/json` (415 otherwise): a page on another site can
  send `text/plain` without asking the browser's permission, never JSON;
- the key is checked from the headers (401) and the declared size against
  `limits.max_request_bytes` (413) before the body is read; it is then read in the chunks it
  arrives in, stopped at the cap, and a large body is parsed in a worker thread, so a huge or
  unauthenticated upload never stalls the event loop that serves gRPC too.

A POST runs the Ingress's own handler for that RPC (the same gateway, rights, limits,
admission, validation, accounting and error table as gRPC) with `HttpContext` standing in for
the gRPC context: headers are its metadata (`authorization: Bearer KEY` or `x-api-key`,
`x-request-id`), its status code becomes the HTTP status (the usual gRPC-to-HTTP mapping),
and errors come back as {"error": {"code", "message", "field_violations", "retry_after_s"},
"request_id"}. Bytes fields (images, audio) are base64, as proto3 JSON says.
"""

from __future__ import annotations

import asyncio
import logging
import re
from functools import lru_cache
from importlib import resources
from urllib.parse import urlsplit

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.rpc.errors import to_status
from services.serve import requests

log = logging.getLogger("loupe")
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::[0-9]{1,5})?")
# Host names that always reach the service: this machine.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
JSON_TYPE = "application/json"
# Bodies above this are parsed in a worker thread (a 64 MiB body takes seconds to parse).
PARSE_IN_THREAD_BYTES = 256 * 1024
CORS_HEADERS = "authorization, x-api-key, content-type, x-request-id"
# The call's id in HTTP responses. Serve's HTTP proxy owns `x-request-id` there (it echoes the
# caller's header, or its own id), so the service's id goes under its own name; the caller's
# label comes back as `x-client-request-id`, as over gRPC.
HTTP_ID_HEADER = "loupe-request-id"

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# The page runs only its own script and style; images may be data: URLs (thumbnails, uploads).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
_SAFE_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class HttpContext:
    """What an Ingress handler needs of a gRPC context, for a call that came over HTTP."""

    def __init__(self, headers) -> None:
        self._metadata = [(k.lower(), v) for k, v in headers.items()]
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.trailing: list[tuple[str, str | bytes]] = []

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self) -> None:  # HTTP calls carry no deadline: the server's bound applies
        return None

    def set_code(self, code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing = list(metadata)

    def trailer(self, key: str):
        return next((v for k, v in self.trailing if k == key), None)


def unary_rpcs() -> dict[str, tuple]:
    """RPC name -> (request class, response class, service full name), every unary RPC."""
    return _unary_rpcs()


@lru_cache(maxsize=1)
def _unary_rpcs() -> dict[str, tuple]:
    from google.protobuf import message_factory

    from protos.loupe.v1 import admin_pb2, feedback_pb2, index_pb2, qa_pb2, search_pb2

    out = {}
    for module in (index_pb2, search_pb2, qa_pb2, feedback_pb2, admin_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                if m.server_streaming or m.client_streaming:
                    continue
                out[m.name] = (
                    message_factory.GetMessageClass(m.input_type),
                    message_factory.GetMessageClass(m.output_type),
                    service.full_name,
                )
    return out


async def handle(ingress, request: Request) -> Response:
    """One HTTP request to the Ingress."""
    web = ingress.settings.http
    refused = _refused(request, web)
    if refused is not None:
        return refused
    response = await _route(ingress, request)
    origin = request.headers.get("origin")
    if origin and origin in web.allowed_origins:
        response.headers.update(_cors(origin))
    return response


def _refused(request: Request, web) -> Response | None:
    """Why this request is not served at all (a foreign Host or Origin), or None."""
    host = request.headers.get("host", "")
    allowed = {h.lower() for h in web.allowed_hosts}
    if "*" not in allowed and _host_name(host) not in LOOPBACK_HOSTS | allowed:
        return _error(
            421,
            "PERMISSION_DENIED",
            f"this service does not answer to host {host[:100]!r}: call it as localhost or 127.0.0.1, "
            "or add the name to http.allowed_hosts",
        )
    origin = request.headers.get("origin")
    if origin is not None and origin not in web.allowed_origins and not _same_origin(origin, host):
        return _error(
            403,
            "PERMISSION_DENIED",
            f"pages from {origin[:100]!r} may not call this service; add the origin to http.allowed_origins",
        )
    return None


def _host_name(authority: str) -> str:
    """The host of a Host header, lower case, without its port; "" unless the header is just
    `name[:port]` or `[v6]:port` (no userinfo, path, list or fragment that a lenient parser
    would read past)."""
    match = _HOST.fullmatch(authority.strip())
    if match is None:
        return ""
    return (match["v6"] or match["name"]).lower()


def _same_origin(origin: str, host: str) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.strip().lower()


def _cors(origin: str) -> dict[str, str]:
    return {
        "access-control-allow-origin": origin,
        "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers": CORS_HEADERS,
        "access-control-expose-headers": f"{HTTP_ID_HEADER}, {requests.LABEL_HEADER}, retry-after",
        "access-control-max-age": "600",
        "vary": "origin",
    }


async def _route(ingress, request: Request) -> Response:
    path, method = request.url.path, request.method
    if method == "GET" and path in ("/", "/index.html"):
        return _static("index.html", "text/html; charset=utf-8")
    if method == "GET" and path.startswith("/static/") and path.removeprefix("/static/") in STATIC:
        name = path.removeprefix("/static/")
        return _static(name, STATIC[name])
    if method == "GET" and path == "/api/openapi.json":
        from services.web.openapi import schema

        return JSONResponse(schema(), headers=_SAFE_HEADERS)
    if method == "GET" and path == "/api/v1/health":
        reply = await ingress.Check(health_pb2.HealthCheckRequest(), HttpContext(request.headers))
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return JSONResponse({"status": status}, status_code=200 if status == "SERVING" else 503, headers=_SAFE_HEADERS)
    if path.startswith("/api/v1/"):
        rpc = path.removeprefix("/api/v1/")
        if rpc not in unary_rpcs():
            return _error(404, "NOT_FOUND", f"no API call {rpc!r}; see /api/openapi.json for the calls there are")
        if method == "OPTIONS" and request.headers.get("origin") in ingress.settings.http.allowed_origins:
            return Response(status_code=204, headers=_SAFE_HEADERS)  # a CORS preflight (headers added above)
        if method != "POST":
            return _error(405, "INVALID_ARGUMENT", f"{rpc} is called with POST and a JSON body", allow="POST")
        return await _call(ingress, request, rpc)
    return _error(404, "NOT_FOUND", f"nothing at {path}; the page is at /, the API under /api/v1/")


async def _call(ingress, request: Request, rpc: str) -> Response:
    request_cls, _, _ = unary_rpcs()[rpc]
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON_TYPE:
        return _error(415, "INVALID_ARGUMENT", f"send the {rpc} request as JSON with 'Content-Type: {JSON_TYPE}'")
    context = HttpContext(request.headers)
    try:  # the key, from the headers alone: nothing of an unauthenticated body is read
        ingress.gateway.authenticate(dict(context.invocation_metadata()))
    except Exception as exc:
        status = to_status(exc)
        _count_refused(ingress, rpc, status.code.name)
        return _error(HTTP_STATUS.get(status.code, 500), status.code.name, status.details)
    body = await _body(request, ingress.settings.limits.max_request_bytes)
    if isinstance(body, Response):
        return body
    try:
        if len(body) > PARSE_IN_THREAD_BYTES:
            message = await asyncio.to_thread(json_format.Parse, body, request_cls())
        else:
            message = json_format.Parse(body or b"{}", request_cls())
    except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return _error(400, "INVALID_ARGUMENT", f"the body is not a valid {request_cls.DESCRIPTOR.name} as JSON: {exc}")
    reply = await getattr(ingress, rpc)(message, context)
    rid, label = context.trailer(requests.HEADER) or "", context.trailer(requests.LABEL_HEADER) or ""
    if context.code != grpc.StatusCode.OK:
        return _error(
            HTTP_STATUS.get(context.code, 500),
            context.code.name,
            context.details,
            rid=rid,
            label=label,
            details=context.trailer("grpc-status-details-bin"),
        )
    payload = json_format.MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return JSONResponse(payload, headers={**_SAFE_HEADERS, **_id_headers(rid, label)})


def _id_headers(rid: str, label: str) -> dict[str, str]:
    """The call's id and the caller's label as response headers (none for a call never made)."""
    headers = {HTTP_ID_HEADER: rid} if rid else {}
    if rid and label:
        headers[requests.LABEL_HEADER] = label
    return headers


def _count_refused(ingress, rpc: str, code: str) -> None:
    """A call refused for its key before it reached the handler, in the usage records as the
    handler counts it (never fails the response)."""
    from services.gateway.meter import UNAUTHENTICATED

    try:
        ingress.meter.record(UNAUTHENTICATED, rpc, code)
    except Exception:
        log.exception("usage of a refused HTTP call not counted")


async def _body(request: Request, cap: int) -> bytes | Response:
    """The body, read in the chunks it arrives in and stopped at `cap` (413)."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.strip().isdigit():
        return _error(400, "INVALID_ARGUMENT", f"Content-Length {declared[:40]!r} is not a number of bytes")
    if declared is not None and int(declared) > cap:
        return _error(413, "RESOURCE_EXHAUSTED", f"the request is {int(declared)} bytes; at most {cap}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            return _error(413, "RESOURCE_EXHAUSTED", f"the request is over {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(
    status: int,
    code: str,
    message: str,
    *,
    rid: str = "",
    label: str = "",
    details: bytes | None = None,
    allow: str | None = None,
) -> Response:
    error: dict = {"code": code, "message": message}
    headers = dict(_SAFE_HEADERS)
    if details:
        rich = status_pb2.Status.FromString(details)
        for detail in rich.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                error["field_violations"] = [
                    {"field": v.field, "description": v.description} for v in bad.field_violations
                ]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                error["retry_after_s"] = info.retry_delay.ToMilliseconds() / 1000
                headers["retry-after"] = str(max(1, round(error["retry_after_s"])))
    headers.update(_id_headers(rid, label))
    if allow:
        headers["allow"] = allow
    return JSONResponse({"error": error, "request_id": rid}, status_code=status, headers=headers)


@lru_cache(maxsize=8)
def _read_static(name: str) -> bytes:
    return resources.files("services.web").joinpath("static", name).read_bytes()


def _static(name: str, content_type: str) -> Response:
    headers = {**_SAFE_HEADERS, "cache-control": "no-cache"}
    return Response(_read_static(name), media_type=content_type, headers=headers)
