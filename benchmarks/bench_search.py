"""Search-service benchmark: prints a table and writes benchmarks/results/search.json.

    python -m benchmarks.bench_search                 # everything (about 15-25 min on 2 cores)
    python -m benchmarks.bench_search --sizes 10000   # smaller run
    python -m benchmarks.bench_search --skip-store    # only the service figures
    python -m benchmarks.bench_search --skip-store --sizes 1000 --queries 50   # runtimes, quick

Measures, with a randomly initialised ViT-B-32 (real architecture, real cost), for each
encoder runtime (--runtimes torch onnx onnx-int8):
1. image encoding throughput through the gRPC service (IndexImages, 32 JPEGs per call)
   vs the raw forward pass of the same runtime in this process at the same batch size;
2. search latency p50/p99 inside the store (Qdrant Edge, qdrant-client local mode) and
   over gRPC (Edge, the embedded default) at each size;
3. resident memory of the running service's processes.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from indexing import open_store
from indexing.index import Index, NewItem
from indexing.types import CollectionSchema, Modality

MODEL = "ViT-B-32/random"
SCHEMA = CollectionSchema(
    vector_name="clip", dim=512, model_id="open_clip:ViT-B-32/random", model_version="random-init"
)
RESULTS = Path(__file__).resolve().parent / "results"


def percentiles(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    return {
        "p50_ms": round(statistics.median(s), 2),
        "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))], 2),
        "n": len(s),
    }


def jpegs(n: int, size: int = 512, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        # Smooth random pictures compress like photos; pure noise would not.
        small = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# -- 1. raw forward pass -------------------------------------------------------------------
def raw_throughput(images: list[bytes], batch: int, threads: int, runtime: str = "torch") -> dict:
    from encoders.clip.encoder import ClipEncoder, ClipOptions
    from encoders.image.decode import decode_image

    enc = ClipEncoder(ClipOptions(model=MODEL, device="cpu", threads=threads, batch_size=batch, runtime=runtime)).load()
    pixels = np.stack([enc.preprocessor()(decode_image(b).image).numpy() for b in images[:batch]])
    enc.encode_pixels(pixels)  # warm-up
    rounds, start = 4, time.perf_counter()
    for _ in range(rounds):
        enc.encode_pixels(pixels)
    forward_s = time.perf_counter() - start
    # The same work including JPEG decode + the model's preprocessing, still in one process.
    start = time.perf_counter()
    for i in range(0, 2 * batch, batch):
        enc.encode_images([decode_image(b).image for b in images[i : i + batch]])
    full_s = time.perf_counter() - start
    return {
        "forward_images_per_s": round(rounds * batch / forward_s, 2),
        "decode_preprocess_forward_images_per_s": round(2 * batch / full_s, 2),
        "batch": batch,
        "threads": threads,
        "runtime": runtime,
    }


# -- 2. store latency ----------------------------------------------------------------------
def seed_collection(index: Index, name: str, n: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    index.ensure_collection(name, SCHEMA)
    start = time.perf_counter()
    for lo in range(0, n, 1000):
        vecs = rng.standard_normal((min(1000, n - lo), 512)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        items = [
            NewItem(
                public_id=f"p{lo + i}",
                sha256=f"{lo + i:064x}",
                modality=Modality.IMAGE,
                vector=v,
                source=f"s{lo + i}",
                metadata={"bucket": (lo + i) % 10},
                text=None,
                width=1,
                height=1,
            )
            for i, v in enumerate(vecs)
        ]
        index.upsert(name, items, SCHEMA)
    return n / (time.perf_counter() - start)


def store_latency(backend: str, n: int, queries: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "qdrant-edge":
            store = open_store(data_dir=tmp)
        else:
            from indexing.store.qdrant import QdrantStore

            store = QdrantStore(path=tmp)
        index = Index(store)
        rate = seed_collection(index, "bench", n)
        start = time.perf_counter()
        index.optimize("bench")
        opt_s = time.perf_counter() - start
        rng = np.random.default_rng(1)
        qs = rng.standard_normal((queries, 512)).astype(np.float32)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        flt = index.resolve_filter("bench", _bucket_condition())
        plain, filtered = [], []
        for q in qs:
            start = time.perf_counter()
            index.search("bench", q, limit=10, offset=0, modalities=(), filter=None, score_threshold=None)
            plain.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            index.search("bench", q, limit=10, offset=0, modalities=(Modality.IMAGE,), filter=flt, score_threshold=None)
            filtered.append((time.perf_counter() - start) * 1000)
        store.close()
        return {
            "backend": backend,
            "points": n,
            "upsert_points_per_s": round(rate),
            "optimize_s": round(opt_s, 1),
            "search": percentiles(plain),
            "filtered_search": percentiles(filtered),
        }


def _bucket_condition():
    from indexing.types import Condition

    return (Condition(key="bucket", equals=3),)


# -- 3. the service ------------------------------------------------------------------------
def service_figures(
    images: list[bytes], batch: int, sizes: list[int], queries: int, workdir: Path, runtime: str = "torch"
) -> dict:
    from services.cli.launch import ServiceProcess
    from services.client.sdk import ImageInput, LoupeClient

    data_dir = workdir / f"data-{runtime}"
    index = Index(open_store(data_dir=str(data_dir)))
    for n in sizes:
        seed_collection(index, f"bench{n}", n)
        index.optimize(f"bench{n}")
    index.store.close()
    out: dict = {}
    # The bundled profile keeps the service offline (Whisper, VLM); --model swaps in ViT-B-32.
    args = ["--bundled-models", "--model", MODEL, "--data-dir", str(data_dir)]
    # OCR off: this measures the CLIP path (OCR has its own benchmark, bench_ocr).
    env = {"LOUPE_OCR__MODE": "never", "LOUPE_ENCODER__RUNTIME": runtime}
    with ServiceProcess(args, log_path=workdir / f"serve-{runtime}.log", env=env) as svc:
        with LoupeClient(svc.target, timeout_s=600) as client:
            calls = [[ImageInput(b) for b in images[i : i + batch]] for i in range(0, len(images), batch)]
            client.index_images(calls[0], collection="throughput")  # warm-up
            start = time.perf_counter()
            _run_concurrently(lambda c: client.index_images(c, collection="throughput"), calls[1:], workers=2)
            elapsed = time.perf_counter() - start
            out["service_images_per_s"] = round(batch * (len(calls) - 1) / elapsed, 2)
            out["memory_mb"] = service_memory_mb()
            for n in sizes:
                out[f"grpc_{n}"] = grpc_latency(client, f"bench{n}", queries, n)
    return out


def _run_concurrently(fn, jobs: list, workers: int) -> None:
    lock, queue = threading.Lock(), list(jobs)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                job = queue.pop()
            fn(job)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def grpc_latency(client, collection: str, queries: int, points: int) -> dict:
    by_id, by_text = [], []
    for i in range(queries):
        start = time.perf_counter()
        client.search_image(id=f"p{(i * 37) % points}", limit=10, collection=collection)
        by_id.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        client.search_text(f"a photo of item {i}", limit=10, collection=collection)
        by_text.append((time.perf_counter() - start) * 1000)
    return {"search_by_id": percentiles(by_id), "search_text_incl_encoding": percentiles(by_text)}


def service_memory_mb() -> dict:
    import psutil

    groups: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        for key in (
            "ServeReplica:loupe:Encoder",
            "ServeReplica:loupe:Index",
            "ServeReplica:loupe:Ingress",
            "ServeReplica:loupe:Transcriber",
            "ServeReplica:loupe:Answerer",
            "ProxyActor",
            "ServeController",
            "raylet",
            "gcs_server",
            "dashboard",
            "DashboardAgent",
            "RuntimeEnvAgent",
            "services.serve.driver",
            "loupe serve",
        ):
            if key in cmd and proc.info["memory_info"]:
                groups[key] = groups.get(key, 0) + proc.info["memory_info"].rss / 2**20
                break
    groups = {k: round(v) for k, v in groups.items()}
    groups["total"] = sum(groups.values())
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--images", type=int, default=32 * 9)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--backends", nargs="+", default=["qdrant-edge", "qdrant-client-local"])
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=["torch", "onnx", "onnx-int8"],
        help="encoder runtimes to measure, raw and through the service",
    )
    args = parser.parse_args()
    images = jpegs(args.images)
    previous = json.loads((RESULTS / "search.json").read_text()) if (RESULTS / "search.json").exists() else {}
    report = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(), "cpu": _cpu_name()},
        "model": MODEL,
        "raw": {rt: raw_throughput(images, args.batch, args.threads, rt) for rt in args.runtimes},
        # Rows of earlier runs stay unless this run measures the same backend and size.
        "store": previous.get("store", []),
    }
    save(report)
    if not args.skip_store:
        for n in args.sizes:
            for backend in args.backends:
                row = store_latency(backend, n, args.queries)
                report["store"] = [r for r in report["store"] if (r["backend"], r["points"]) != (backend, n)] + [row]
                report["store"].sort(key=lambda r: (r["points"], r["backend"]))
                save(report)  # a long run keeps what it measured so far
    if not args.skip_service:
        report["service"], report["raw_after"], report["service_vs_raw_forward"] = {}, {}, {}
        for rt in args.runtimes:
            with tempfile.TemporaryDirectory() as tmp:
                report["service"][rt] = service_figures(images, args.batch, args.sizes, args.queries, Path(tmp), rt)
            # Raw again after the service: the ratio uses the mean of both, so drift shows.
            report["raw_after"][rt] = raw_throughput(images, args.batch, args.threads, rt)
            raw = (report["raw"][rt]["forward_images_per_s"] + report["raw_after"][rt]["forward_images_per_s"]) / 2
            report["service_vs_raw_forward"][rt] = round(report["service"][rt]["service_images_per_s"] / raw, 3)
            save(report)
        base = report["service"].get("torch", {}).get("service_images_per_s")
        if base:
            report["service_vs_torch_service"] = {
                rt: round(v["service_images_per_s"] / base, 3) for rt, v in report["service"].items()
            }
        save(report)
    print_table(report)


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def save(report: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search.json").write_text(json.dumps(report, indent=2))


def print_table(r: dict) -> None:
    first = next(iter(r["raw"].values()))
    print(f"\nimage encoding, {r['model']}, batch {first['batch']}, {first['threads']} threads, {r['machine']['cpu']}")
    print(
        f"  {'runtime':10} {'raw fwd':>9} {'raw after':>10} {'raw full':>9} {'service':>9} {'svc/raw':>8} "
        f"{'svc/torch svc':>14}   (images/s)"
    )
    for rt, raw in r["raw"].items():
        after = r.get("raw_after", {}).get(rt, {}).get("forward_images_per_s", "")
        svc = r.get("service", {}).get(rt, {}).get("service_images_per_s", "")
        print(
            f"  {rt:10} {raw['forward_images_per_s']:>9} {after:>10} {raw['decode_preprocess_forward_images_per_s']:>9} "
            f"{svc:>9} {r.get('service_vs_raw_forward', {}).get(rt, ''):>8} "
            f"{r.get('service_vs_torch_service', {}).get(rt, ''):>14}"
        )
    print("\nstore search latency (top 10, 512-d cosine)")
    print(f"  {'backend':22} {'points':>7} {'upsert/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'filt p50':>9} {'filt p99':>9}")
    for s in r["store"]:
        print(
            f"  {s['backend']:22} {s['points']:>7} {s['upsert_points_per_s']:>9} {s['search']['p50_ms']:>8} "
            f"{s['search']['p99_ms']:>8} {s['filtered_search']['p50_ms']:>9} {s['filtered_search']['p99_ms']:>9}"
        )
    for rt, service in r.get("service", {}).items():
        print(f"\ngRPC search latency (qdrant-edge, runtime {rt})")
        for key, v in service.items():
            if key.startswith("grpc_"):
                print(
                    f"  {key[5:]:>7} points: by id p50 {v['search_by_id']['p50_ms']} ms p99 "
                    f"{v['search_by_id']['p99_ms']} ms; by text (incl. encoding) p50 "
                    f"{v['search_text_incl_encoding']['p50_ms']} ms p99 {v['search_text_incl_encoding']['p99_ms']} ms"
                )
        print("  service memory (RSS, MiB):", service["memory_mb"])


if __name__ == "__main__":
    main()
