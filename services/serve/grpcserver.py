"""The gRPC port, served by the Ingress replica itself.

Serve's own gRPC proxy would put one more process hop in front of every call (about 9 ms
on a 2-core machine, `benchmarks/bench_hops.py`) and can only listen on every interface.
Instead each Ingress replica runs a `grpc.aio` server on its event loop, registered with the
same generated servicer functions: the Ingress's methods are named as the RPCs and take
`(request, context)`.

What the proxy did is done here: the request size cap (`limits.max_request_bytes`, refused
with RESOURCE_EXHAUSTED before the message is read into memory), the call bound
(`grpc.request_timeout_s`, applied by the Ingress), a cap on calls in progress
(`grpc.max_concurrent_calls`), and draining on stop (`stop()`). SO_REUSEPORT is set only
when several Ingress replicas share the port; with one, a second server on the port fails
to bind instead of sharing the calls.

Requests are parsed inside each method's handler (`_parsed`), not by grpc's deserializer: a
deserializer that raises ends the call with UNKNOWN and no reason, while bytes that are not
the method's message are the caller's mistake (INVALID_ARGUMENT, naming the message type).
"""

from __future__ import annotations

import inspect
import logging

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from encoders.common.errors import InvalidInput
from protos.loupe.v1 import (
    admin_pb2_grpc,
    audio_pb2_grpc,
    feedback_pb2_grpc,
    index_pb2_grpc,
    qa_pb2_grpc,
    search_pb2_grpc,
)
from services.config import LoupeSettings

log = logging.getLogger("loupe")

# Every service the port serves; the Ingress implements each of their RPCs.
SERVICERS = (
    index_pb2_grpc.add_IndexServiceServicer_to_server,
    search_pb2_grpc.add_SearchServiceServicer_to_server,
    audio_pb2_grpc.add_AudioServiceServicer_to_server,
    qa_pb2_grpc.add_QAServiceServicer_to_server,
    admin_pb2_grpc.add_AdminServiceServicer_to_server,
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server,
)


def _unary(handler, request_class, response_class):
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=request_class.FromString, response_serializer=response_class.SerializeToString
    )


def _health(servicer, app_name: str) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
    """grpc.health.v1.Health/Check (Watch and List answer UNIMPLEMENTED), and Ray Serve's own
    `ray.serve.RayServeAPIService` Healthz and ListApplications, as its proxy answered them."""
    from ray.serve.generated import serve_pb2

    async def healthz(request, context):
        return serve_pb2.HealthzResponse(message="success")

    async def list_applications(request, context):
        return serve_pb2.ListApplicationsResponse(application_names=[app_name])

    check = _unary(servicer.Check, health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse)
    ray_api = {
        "Healthz": _unary(healthz, serve_pb2.HealthzRequest, serve_pb2.HealthzResponse),
        "ListApplications": _unary(
            list_applications, serve_pb2.ListApplicationsRequest, serve_pb2.ListApplicationsResponse
        ),
    }
    return {"grpc.health.v1.Health": {"Check": check}, "ray.serve.RayServeAPIService": ray_api}


class _Collected:
    """Stands in for the server while a generated `add_*Servicer_to_server` runs, keeping its
    method handlers by service so that they are wrapped (`_parsed`) before the server has them."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Not kept: the generated code passes the same methods by name too (below), and those
        are what gets wrapped; `_servicer_handlers` refuses code that registers none by name."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = handlers


def _servicer_handlers(servicer) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
    collected = _Collected()
    for add in SERVICERS:
        before = len(collected.services)
        add(servicer, collected)
        # Code from an old grpcio-tools registers generic handlers only: their methods would
        # be silently unserved here, so stop at start-up instead.
        if len(collected.services) == before:
            raise RuntimeError(
                f"{add.__name__} registered no methods by name; regenerate protos (python -m protos.generate)"
            )
    return collected.services


def _message_name(deserializer) -> str:
    # A message class's FromString is bound to the class, which knows its full proto name.
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "request"


def _parsed(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` receiving the raw request bytes and parsing them itself: a body that is not the
    method's message ends the call with INVALID_ARGUMENT. Client-streaming methods (none in the
    contract) are left as they are."""
    parse = handler.request_deserializer
    if handler.request_streaming or parse is None:
        return handler
    name = _message_name(parse)

    async def request_of(raw: bytes, context):
        try:
            return parse(raw)
        except DecodeError as exc:
            # abort() raises: the servicer never sees the call.
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {name} message: {exc}")

    if not handler.response_streaming:
        return handler._replace(request_deserializer=None, unary_unary=_unary_parsed(handler.unary_unary, request_of))
    return handler._replace(request_deserializer=None, unary_stream=_stream_parsed(handler.unary_stream, request_of))


def _unary_parsed(behavior, request_of):
    if not inspect.iscoroutinefunction(behavior):
        raise TypeError(f"{behavior!r}: the gRPC port serves async methods only")

    async def call(raw, context):
        return await behavior(await request_of(raw, context), context)

    return call


def _stream_parsed(behavior, request_of):
    # grpc.aio takes a stream either as an async generator or as a coroutine that calls
    # context.write(); the wrapper keeps whichever form the method has.
    if inspect.isasyncgenfunction(behavior):

        async def stream(raw, context):
            async for reply in behavior(await request_of(raw, context), context):
                yield reply

        return stream
    return _unary_parsed(behavior, request_of)


def _serve(server: grpc.aio.Server, services: dict[str, dict[str, grpc.RpcMethodHandler]]) -> None:
    for service, handlers in services.items():
        wrapped = {method: _parsed(handler) for method, handler in handlers.items()}
        # Generic for any caller; by name too, as the generated code does, for callers whose
        # stubs mark the method registered (grpc's faster path).
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        server.add_registered_method_handlers(service, wrapped)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start(servicer, settings: LoupeSettings, app_name: str = "loupe") -> grpc.aio.Server:
    """Serve every RPC of `servicer` on `settings.grpc.host:port`; raises InvalidInput (a
    start-up error `loupe serve` reports at once) when the port cannot be bound."""
    g = settings.grpc
    options = [
        ("grpc.max_receive_message_length", settings.limits.max_request_bytes),
        ("grpc.so_reuseport", 1 if settings.ingress_replicas > 1 else 0),
    ]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=g.max_concurrent_calls)
    _serve(server, _servicer_handlers(servicer) | _health(servicer, app_name))
    where = address(g.host, g.port)
    try:
        server.add_insecure_port(where)
    except RuntimeError as exc:
        raise InvalidInput(
            f"the gRPC port {where} cannot be bound ({exc}): another program holds it, or the host is not "
            "an address of this machine; free it or set grpc.port / grpc.host (loupe serve --port)",
            field="grpc.port",
        ) from None
    await server.start()
    log.info("gRPC on %s", where)
    return server


async def stop(server: grpc.aio.Server | None, drain_s: float) -> None:
    """Refuse new calls at once; calls in flight get `drain_s` to finish, then are cancelled."""
    if server is not None:
        await server.stop(drain_s)
