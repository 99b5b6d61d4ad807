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
"""

from __future__ import annotations

import logging

import grpc
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


def _health(servicer, app_name: str) -> tuple[grpc.GenericRpcHandler, ...]:
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
    return (
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": check}),
        grpc.method_handlers_generic_handler("ray.serve.RayServeAPIService", ray_api),
    )


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
    for add in SERVICERS:
        add(servicer, server)
    server.add_generic_rpc_handlers(_health(servicer, app_name))
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
