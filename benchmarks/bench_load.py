"""Load and per-call overhead benchmark: prints tables and writes benchmarks/results/load.json.

    python -m benchmarks.bench_load                      # overhead table + sweep (~4 min on 2 cores)
    python -m benchmarks.bench_load --levels 1 8 64 400 --seconds 10
    python -m benchmarks.bench_load --target localhost:9000    # a running service
    python -m benchmarks.bench_load --skip-sweep --dashboard   # memory with the Ray dashboard

Loopback only, bounded by count and time. Starts `loupe serve --bundled-models` (OCR, audio
and Ask off: this measures the search path) on free ports unless --target is given, and
indexes 50 items (25 images, 25 captions).

1. Sequential per-call overhead, warm: p50/p95 of Count, GetItem, SearchImage by id,
   SearchText dense and keyword over gRPC, next to the same RPC logic in this process
   (services.rpc.api.LoupeApi over plain threads, same model, same items: no Serve hop, no
   proto on the wire) and the bare in-process text encode. The gap is what serving adds.
2. Concurrency sweep of SearchText (closed loop: each of N callers sends its next call when
   the last ends; client deadline 30 s): calls/s, p50/p95/p99/max latency and status counts
   per level. Every call should end in OK or RESOURCE_EXHAUSTED within a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COLLECTION = "load"


def pct(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    if not s:
        return {"n": 0}

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 2)

    return {
        "p50_ms": round(statistics.median(s), 2),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": round(s[-1], 2),
        "n": len(s),
    }


def items(n: int = 25):
    import io

    from encoders.clip.bundled.shapes import make_pairs

    images, captions = [], []
    for i, (img, caption) in enumerate(make_pairs(n, seed=99, size=64)):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        images.append((f"img{i}", buf.getvalue()))
        captions.append((f"txt{i}", caption))
    return images, captions


# -- 1. sequential overhead ----------------------------------------------------------------
def _calls(search_pb2, index_pb2):
    opts = search_pb2.SearchOptions(collection=COLLECTION, limit=10)
    keyword = search_pb2.SearchOptions(collection=COLLECTION, limit=10, mode=search_pb2.SEARCH_MODE_KEYWORD)
    return {
        "Count": ("count", index_pb2.CountRequest(collection=COLLECTION)),
        "GetItem": ("get_item", index_pb2.GetItemRequest(collection=COLLECTION, id="img3")),
        "SearchImage by id": ("search_image", search_pb2.SearchImageRequest(id="img3", options=opts)),
        "SearchText dense": ("search_text", search_pb2.SearchTextRequest(query="a red circle", options=opts)),
        # A new text each call: no embedding cache hit, every call pays the Encoder.
        "SearchText dense, new text": (
            "search_text",
            lambda i: search_pb2.SearchTextRequest(query=f"a red circle number {i}", options=opts),
        ),
        "SearchText keyword": ("search_text", search_pb2.SearchTextRequest(query="red circle", options=keyword)),
    }


def grpc_sequential(target: str, rounds: int) -> dict:
    import grpc

    from protos.loupe.v1 import index_pb2, index_pb2_grpc, search_pb2, search_pb2_grpc

    stubs = {}
    with grpc.insecure_channel(target) as channel:
        index, search = index_pb2_grpc.IndexServiceStub(channel), search_pb2_grpc.SearchServiceStub(channel)
        stubs = {
            "count": index.Count,
            "get_item": index.GetItem,
            "search_image": search.SearchImage,
            "search_text": search.SearchText,
        }
        out = {"gRPC + Ingress only": _ingress_only(channel, rounds)}
        for label, (method, request) in _calls(search_pb2, index_pb2).items():
            call, make = stubs[method], _maker(request)
            for i in range(20):  # warm-up
                call(make(-1 - i), timeout=30)
            samples = []
            for i in range(rounds):
                req = make(i)
                start = time.perf_counter()
                call(req, timeout=30)
                samples.append((time.perf_counter() - start) * 1000)
            out[label] = pct(samples)
        return out


def _maker(request):
    """Call i's request: the same one each time, or a new one per call."""
    return request if callable(request) else lambda _i: request


def _ingress_only(channel, rounds: int) -> dict:
    """A health check of an unknown service: answered by the Ingress alone (NOT_FOUND), so its
    time is the gRPC call into the Ingress, with no store and no downstream deployment."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    check = health_pb2_grpc.HealthStub(channel).Check
    samples = []
    for i in range(rounds + 20):
        start = time.perf_counter()
        try:
            check(health_pb2.HealthCheckRequest(service="none"), timeout=30)
        except grpc.RpcError:
            pass
        if i >= 20:
            samples.append((time.perf_counter() - start) * 1000)
    return pct(samples)


def in_process(rounds: int, imgs, caps) -> dict:
    """The same RPC logic without Serve: LoupeApi over threads, its own store with the same items."""
    from protos.loupe.v1 import index_pb2, search_pb2
    from services.config import load_settings
    from services.rpc.api import LoupeApi
    from services.serve.workers import EncoderWorker, IndexWorker, ThreadCalls

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            {
                "profile": "bundled",
                "data_dir": tmp,
                "ocr": {"mode": "never"},
                "audio": False,
                "ask": {"enabled": False},
                "encoder": {"threads": 2},
            }
        )
        encoder, index = EncoderWorker(settings), IndexWorker(settings)
        api = LoupeApi(settings, ThreadCalls(encoder), ThreadCalls(index))

        async def run() -> dict:
            await _fill_api(api, imgs, caps)
            out = {}
            for label, (method, request) in _calls(search_pb2, index_pb2).items():
                call, make = getattr(api, method), _maker(request)
                for i in range(20):
                    await call(make(-1 - i))
                samples = []
                for i in range(rounds):
                    req = make(i)
                    start = time.perf_counter()
                    await call(req)
                    samples.append((time.perf_counter() - start) * 1000)
                out[label] = pct(samples)
            samples = []
            for _ in range(rounds):
                start = time.perf_counter()
                encoder.encode_texts(["a red circle"])
                samples.append((time.perf_counter() - start) * 1000)
            out["text encode (bare)"] = pct(samples)
            return out

        try:
            return asyncio.run(run())
        finally:
            index.close()


async def _fill_api(api, imgs, caps) -> None:
    from protos.loupe.v1 import index_pb2

    await api.index_images(
        index_pb2.IndexImagesRequest(collection=COLLECTION, items=[index_pb2.ImageItem(id=i, data=d) for i, d in imgs])
    )
    await api.index_texts(
        index_pb2.IndexTextsRequest(collection=COLLECTION, items=[index_pb2.TextItem(id=i, text=t) for i, t in caps])
    )


def fill_service(target: str, imgs, caps) -> None:
    from services.client.sdk import ImageInput, LoupeClient, TextInput

    with LoupeClient(target, timeout_s=120) as client:
        client.index_images([ImageInput(d, id=i) for i, d in imgs], collection=COLLECTION)
        client.index_texts([TextInput(t, id=i) for i, t in caps], collection=COLLECTION)


# -- 2. concurrency sweep ------------------------------------------------------------------
async def _level(target: str, concurrency: int, seconds: float, max_calls: int) -> dict:
    import grpc

    from protos.loupe.v1 import search_pb2, search_pb2_grpc

    codes: Counter = Counter()
    latencies: list[float] = []
    retry_hints = 0
    request = search_pb2.SearchTextRequest(
        query="a blue square on a white background", options=search_pb2.SearchOptions(collection=COLLECTION, limit=10)
    )
    deadline = time.monotonic() + seconds
    sent = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)

        async def caller() -> None:
            nonlocal sent, retry_hints
            while time.monotonic() < deadline and sent < max_calls:
                sent += 1
                start = time.perf_counter()
                try:
                    await stub.SearchText(request, timeout=30)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                    trailing = exc.trailing_metadata() or ()
                    retry_hints += any(k == "grpc-status-details-bin" for k, _ in trailing)
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "calls": sum(codes.values()),
        "ok_per_s": round(codes["OK"] / wall, 1),
        "calls_per_s": round(sum(codes.values()) / wall, 1),
        "codes": dict(codes),
        "refusals_with_retry_info": retry_hints,
        "latency": pct(latencies),
        "wall_s": round(wall, 1),
    }


def sweep(target: str, levels: list[int], seconds: float, max_calls: int) -> list[dict]:
    out = []
    for n in levels:
        row = asyncio.run(_level(target, n, seconds, max_calls))
        print(
            f"  {n:>5} callers: {row['ok_per_s']:>7} OK/s  p50 {row['latency'].get('p50_ms')} ms  "
            f"p99 {row['latency'].get('p99_ms')} ms  max {row['latency'].get('max_ms')} ms  {row['codes']}",
            flush=True,
        )
        out.append(row)
        time.sleep(1.0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=None, help="a running service (host:port); default: start one")
    p.add_argument("--rounds", type=int, default=200, help="sequential calls per RPC")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64, 200, 400])
    p.add_argument("--seconds", type=float, default=8.0, help="per sweep level")
    p.add_argument("--max-calls", type=int, default=20_000, help="per sweep level")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--dashboard", action="store_true", help="start the service with the Ray dashboard (memory)")
    p.add_argument("--out", default=str(RESULTS / "load.json"))
    args = p.parse_args()
    imgs, caps = items()
    report: dict = {"in_process": in_process(args.rounds, imgs, caps)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.target:
            report["grpc"] = grpc_sequential(args.target, args.rounds)
            if not args.skip_sweep:
                report["sweep"] = sweep(args.target, args.levels, args.seconds, args.max_calls)
        else:
            from services.cli.launch import ServiceProcess

            env = {"LOUPE_OCR__MODE": "never", "LOUPE_AUDIO": "false", "LOUPE_ASK__ENABLED": "false"}
            serve_args = ["--bundled-models", "--data-dir", str(Path(tmp) / "data")]
            with ServiceProcess(
                serve_args + (["--dashboard"] if args.dashboard else []), log_path=Path(tmp) / "serve.log", env=env
            ) as svc:
                from benchmarks.bench_search import service_memory_mb

                fill_service(svc.target, imgs, caps)
                report["memory_mb"] = service_memory_mb()
                print("service memory (RSS, MiB):", report["memory_mb"])
                report["grpc"] = grpc_sequential(svc.target, args.rounds)
                print_overhead(report)
                if not args.skip_sweep:
                    print("\nSearchText concurrency sweep (closed loop, client deadline 30 s)")
                    report["sweep"] = sweep(svc.target, args.levels, args.seconds, args.max_calls)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.target:
        print_overhead(report)


def print_overhead(r: dict) -> None:
    print("\nsequential, warm (p50 / p95 ms)")
    print(f"  {'call':26} {'gRPC p50':>9} {'gRPC p95':>9} {'in-proc p50':>12} {'serving adds':>13}")
    for label, g in r["grpc"].items():
        local = r["in_process"].get(label, {"p50_ms": 0.0})
        print(
            f"  {label:26} {g['p50_ms']:>9} {g['p95_ms']:>9} {local['p50_ms']:>12} "
            f"{round(g['p50_ms'] - local['p50_ms'], 2):>13}"
        )
    enc = r["in_process"]["text encode (bare)"]
    print(f"  {'text encode (bare)':26} {'':>9} {'':>9} {enc['p50_ms']:>12}")


if __name__ == "__main__":
    main()
