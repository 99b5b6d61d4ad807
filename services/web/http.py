"""The HTTP/JSON transport: the web page, and the gRPC API as JSON, on Serve's HTTP port.

    GET  /                         the page (services/web/static/), with a strict CSP
    GET  /static/NAME              its script, style and icon
    GET  /api/openapi.json         the OpenAPI 3.1 schema of everything below
    GET  /api/v1/health            {"status": "SERVING" | "NOT_SERVING"}
    POST /api/v1/RPC               every unary RPC of protos/loupe/v1 by its name
                                   (SearchText, Ask, Submit, GetStatus, ...): the request
                                   message as proto3 JSON, the response message as JSON

A POST runs the Ingress's own handler for that RPC (the same gateway, rights, limits,
admission, validation, accounting and error table as gRPC) with `HttpContext` standing in for
the gRPC context: headers are its metadata (`authorization: Bearer KEY` or `x-api-key`,
`x-request-id`), its status code becomes the HTTP status (the usual gRPC-to-HTTP mapping),
and errors come back as {"error": {"code", "message", "field_violations", "retry_after_s"},
"request_id"}. Bytes fields (images, audio) are base64, as proto3 JSON says.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.serve import requests

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
        if method != "POST":
            return _error(405, "INVALID_ARGUMENT", f"{rpc} is called with POST and a JSON body", allow="POST")
        return await _call(ingress, request, rpc)
    return _error(404, "NOT_FOUND", f"nothing at {path}; the page is at /, the API under /api/v1/")


async def _call(ingress, request: Request, rpc: str) -> Response:
    request_cls, _, _ = unary_rpcs()[rpc]
    cap = ingress.settings.limits.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        return _error(413, "RESOURCE_EXHAUSTED", f"the request is {int(declared)} bytes; at most {cap}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            return _error(413, "RESOURCE_EXHAUSTED", f"the request is over {cap} bytes")
    try:
        message = json_format.Parse(body or b"{}", request_cls())
    except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
        return _error(400, "INVALID_ARGUMENT", f"the body is not a valid {request_cls.DESCRIPTOR.name} as JSON: {exc}")
    context = HttpContext(request.headers)
    reply = await getattr(ingress, rpc)(message, context)
    rid = context.trailer(requests.HEADER) or ""
    if context.code != grpc.StatusCode.OK:
        return _error(
            HTTP_STATUS.get(context.code, 500),
            context.code.name,
            context.details,
            rid=rid,
            details=context.trailer("grpc-status-details-bin"),
        )
    payload = json_format.MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return JSONResponse(payload, headers={**_SAFE_HEADERS, requests.HEADER: rid})


def _error(
    status: int,
    code: str,
    message: str,
    *,
    rid: str = "",
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
    if rid:
        headers[requests.HEADER] = rid
    if allow:
        headers["allow"] = allow
    return JSONResponse({"error": error, "request_id": rid}, status_code=status, headers=headers)


@lru_cache(maxsize=8)
def _read_static(name: str) -> bytes:
    return resources.files("services.web").joinpath("static", name).read_bytes()


def _static(name: str, content_type: str) -> Response:
    headers = {**_SAFE_HEADERS, "cache-control": "no-cache"}
    return Response(_read_static(name), media_type=content_type, headers=headers)
