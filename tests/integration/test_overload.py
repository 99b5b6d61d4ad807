"""Overload and over-size requests, on a second service with a tight queue and a small cap."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import yaml

from encoders.clip.bundled.shapes import make_pairs
from protos.loupe.v1 import index_pb2, index_pb2_grpc
from services.cli.launch import ServiceProcess
from services.cli.main import DEFAULT_CONFIG
from services.client.sdk import ImageInput, LoupeCallError, LoupeClient, TextInput

pytestmark = pytest.mark.slow

REQUEST_CAP = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def tight_service(tmp_path_factory):
    root = tmp_path_factory.mktemp("tight")
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    app = cfg["applications"][0]
    app["args"]["limits"]["max_request_bytes"] = REQUEST_CAP
    # Tight lanes: one index call and two searches at a time, one second of waiting at most.
    app["args"]["admission"].update(max_wait_s=1.0, index=1, search=2)
    for dep in app["deployments"]:
        if dep["name"] == "Ingress":
            dep["max_ongoing_requests"], dep["max_queued_requests"] = 64, 4
    config = root / "tight.yaml"
    config.write_text(yaml.safe_dump(cfg))
    args = ["--config", str(config), "--bundled-models", "--data-dir", str(root / "data")]
    with ServiceProcess(args, log_path=root / "serve.log") as svc:
        yield svc


def _batch(seed: int) -> list[ImageInput]:
    out = []
    for img, _ in make_pairs(48, seed=seed, size=256):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(ImageInput(buf.getvalue()))
    return out


def test_overload_is_resource_exhausted_not_a_hang(tight_service):
    batches = [_batch(seed) for seed in range(12)]

    def send(batch):
        with LoupeClient(tight_service.target, timeout_s=120) as client:
            try:
                return len(client.index_images(batch, collection="load"))
            except LoupeCallError as exc:
                return exc

    with ThreadPoolExecutor(len(batches)) as pool:
        outcomes = list(pool.map(send, batches))
    rejected = [o for o in outcomes if isinstance(o, LoupeCallError)]
    stored = [o for o in outcomes if isinstance(o, int)]
    assert rejected and stored, outcomes
    assert all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED for e in rejected), rejected
    with LoupeClient(tight_service.target) as client:
        assert client.health() == "SERVING"
        assert client.count(collection="load") <= sum(stored)  # shapes may repeat across batches


def test_search_flood_ends_in_ok_or_refusal_within_seconds(tight_service):
    """Many more callers than slots: none waits out its deadline; refusals say when to retry."""
    import time

    from google.rpc import error_details_pb2, status_pb2

    from protos.loupe.v1 import search_pb2, search_pb2_grpc

    with LoupeClient(tight_service.target) as client:
        client.index_texts([TextInput(f"a red circle number {i}") for i in range(20)], collection="flood")

    def caller(n):
        outcomes = []
        with grpc.insecure_channel(tight_service.target) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            stop = time.monotonic() + 6
            while time.monotonic() < stop:
                start = time.monotonic()
                # Each call a new text: cached query vectors would make the flood lighter.
                request = search_pb2.SearchTextRequest(
                    query=f"a red circle {n}.{len(outcomes)}",
                    options=search_pb2.SearchOptions(collection="flood", limit=5),
                )
                try:
                    stub.SearchText(request, timeout=20)
                    outcomes.append(("OK", time.monotonic() - start, None))
                except grpc.RpcError as exc:
                    rich = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
                    retry = None
                    if rich:
                        for d in status_pb2.Status.FromString(rich).details:
                            info = error_details_pb2.RetryInfo()
                            if d.Is(info.DESCRIPTOR) and d.Unpack(info):
                                retry = info.retry_delay.ToMilliseconds()
                    outcomes.append((exc.code().name, time.monotonic() - start, retry))
        return outcomes

    with ThreadPoolExecutor(48) as pool:
        outcomes = [o for per in pool.map(caller, range(48)) for o in per]
    codes = {code for code, _, _ in outcomes}
    assert codes <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes
    slowest = max(t for _, t, _ in outcomes)
    assert slowest < 8, slowest  # the admission bound is 1 s; never the 20 s deadline
    # Admission's refusals carry RetryInfo (Serve's own queue-full refusals may not).
    assert any(retry for code, _, retry in outcomes if code == "RESOURCE_EXHAUSTED")
    with LoupeClient(tight_service.target) as client:
        assert client.health() == "SERVING" and client.count(collection="flood") == 20


def test_request_over_the_size_cap(tight_service):
    big = 8 * 1024 * 1024
    options = [("grpc.max_send_message_length", 2 * big)]
    with grpc.insecure_channel(tight_service.target, options=options) as channel:
        stub = index_pb2_grpc.IndexServiceStub(channel)
        request = index_pb2.IndexImagesRequest(items=[index_pb2.ImageItem(data=b"\xff" * big)])
        with pytest.raises(grpc.RpcError) as info:
            stub.IndexImages(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    with LoupeClient(tight_service.target) as client:
        assert client.health() == "SERVING"
