"""The gRPC port as the Ingress serves it (services.serve.grpcserver), without Ray: binding,
one owner per port, the request size cap, a body that is not the message (INVALID_ARGUMENT),
draining on stop, and the call time bound."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray.serve.generated import serve_pb2, serve_pb2_grpc

from encoders.common.errors import InvalidInput, TimedOut
from protos.loupe.v1 import audio_pb2, audio_pb2_grpc, index_pb2, index_pb2_grpc
from services.config import load_settings
from services.serve import grpcserver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Servicer:
    """Every RPC answers after `delay` seconds; Check says SERVING; Count counts its calls;
    Transcribe streams two empty messages (an async generator, as the Ingress's is)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.counted = delay, 0

    async def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Count(self, request, context):
        await asyncio.sleep(self.delay)
        self.counted += 1
        return index_pb2.CountResponse(count=self.counted)

    async def Transcribe(self, request, context):
        for _ in range(2):
            yield audio_pb2.TranscribeResponse()

    def __getattr__(self, name: str):  # the other RPCs of the contract: not used here
        async def unused(request, context):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, name)

        return unused


def _settings(port: int, **grpc_args):
    return load_settings({"grpc": {"port": port, **grpc_args}, "limits": {"max_request_bytes": 1024}})


def test_serves_health_and_the_rpcs_on_loopback_and_refuses_a_second_owner_of_the_port() -> None:
    async def run() -> None:
        port = _free_port()
        server = await grpcserver.start(Servicer(), _settings(port))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                counted = await index_pb2_grpc.IndexServiceStub(channel).Count(index_pb2.CountRequest(), timeout=5)
                assert counted.count == 1
                ray_api = serve_pb2_grpc.RayServeAPIServiceStub(channel)
                assert (await ray_api.Healthz(serve_pb2.HealthzRequest(), timeout=5)).message == "success"
                apps = await ray_api.ListApplications(serve_pb2.ListApplicationsRequest(), timeout=5)
                assert list(apps.application_names) == ["loupe"]
            # No SO_REUSEPORT with one Ingress replica: a second server cannot share the port.
            with pytest.raises(InvalidInput) as err:
                await grpcserver.start(Servicer(), _settings(port))
            assert f"127.0.0.1:{port}" in err.value.reason and err.value.field == "grpc.port"
        finally:
            await grpcserver.stop(server, 0)

    asyncio.run(run())


def test_a_request_over_the_size_cap_is_refused_before_it_reaches_the_servicer() -> None:
    async def run() -> None:
        port, servicer = _free_port(), Servicer()
        server = await grpcserver.start(servicer, _settings(port))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                big = index_pb2.CountRequest(collection="x" * 4096)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await index_pb2_grpc.IndexServiceStub(channel).Count(big, timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert servicer.counted == 0
        finally:
            await grpcserver.stop(server, 0)

    asyncio.run(run())


def test_stop_lets_calls_in_flight_finish_and_refuses_new_ones() -> None:
    async def run() -> None:
        port = _free_port()
        server = await grpcserver.start(Servicer(delay=0.5), _settings(port))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = index_pb2_grpc.IndexServiceStub(channel)
            in_flight = asyncio.ensure_future(stub.Count(index_pb2.CountRequest(), timeout=5))
            await asyncio.sleep(0.2)
            stopping = asyncio.ensure_future(grpcserver.stop(server, 5))
            await asyncio.sleep(0.05)
            assert (await in_flight).count == 1
            await stopping
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Count(index_pb2.CountRequest(), timeout=2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(run())


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self):
        return self.remaining


@pytest.mark.parametrize(("server_bound", "deadline", "expected"), [(0.2, None, 0.2), (30, 0.2, 0.2)])
def test_a_call_ends_at_the_server_bound_or_the_callers_deadline_whichever_comes_first(
    server_bound, deadline, expected
) -> None:
    from services.serve.deployments import Ingress

    class Host:
        settings = load_settings({"grpc": {"request_timeout_s": server_bound}})
        _bounded = Ingress.func_or_class._bounded

    async def run() -> float:
        start = time.monotonic()
        with pytest.raises(TimedOut) as err:
            async with Host()._bounded(_Context(deadline)):
                await asyncio.sleep(5)
        assert "grpc.request_timeout_s" in err.value.reason
        return time.monotonic() - start

    assert expected <= asyncio.run(run()) < expected + 1.5


def test_an_error_of_the_call_itself_is_not_taken_for_the_bound() -> None:
    from services.serve.deployments import Ingress

    class Host:
        settings = load_settings({})
        _bounded = Ingress.func_or_class._bounded

    async def run() -> None:
        with pytest.raises(TimeoutError):
            async with Host()._bounded(_Context(None)):
                raise TimeoutError("the store's own timeout")

    asyncio.run(run())


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/loupe.v1.IndexService/Count", "loupe.v1.CountRequest"),
        ("/loupe.v1.SearchService/SearchText", "loupe.v1.SearchTextRequest"),
        ("/loupe.v1.AudioService/Transcribe", "loupe.v1.TranscribeRequest"),
        ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
    ],
)
def test_bytes_that_are_not_the_methods_message_are_invalid_argument_and_the_server_goes_on(path, message) -> None:
    async def run() -> None:
        port, servicer = _free_port(), Servicer()
        server = await grpcserver.start(servicer, _settings(port))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                # No serializers: the bytes go as they are (0xff 0xff 0xff is a truncated tag).
                if path.endswith("/Transcribe"):
                    call = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
                    garbage = call(b"\xff\xff\xff", timeout=5)
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        [_ async for _ in garbage]
                    good = audio_pb2_grpc.AudioServiceStub(channel).Transcribe(audio_pb2.TranscribeRequest(), timeout=5)
                    assert len([_ async for _ in good]) == 2
                else:
                    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call(b"\xff\xff\xff", timeout=5)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert err.value.details().startswith(f"the request is not a valid {message} message: ")
                counted = await index_pb2_grpc.IndexServiceStub(channel).Count(index_pb2.CountRequest(), timeout=5)
                assert counted.count == 1  # the server still answers, and only the good call reached it
        finally:
            await grpcserver.stop(server, 0)

    asyncio.run(run())
