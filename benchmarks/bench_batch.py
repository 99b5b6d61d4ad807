"""Batch indexing benchmark: prints figures and writes benchmarks/results/batch.json.

    python -m benchmarks.bench_batch                       # 10k images, then 1 vs 2 workers on 2k
    python -m benchmarks.bench_batch --images 2000 --scaling-images 500   # quicker
    python -m benchmarks.bench_batch --images 1000 --skip-scaling        # runtimes only

Each encoder runtime (--runtimes torch onnx onnx-int8) is measured raw and through the pipeline.

With a randomly initialised ViT-B-32 (real architecture, real cost) on generated 512x512
JPEGs (cached in benchmarks/results/catalog-512/):
1. raw encoder throughput in this process (decoded images, the model's preprocessing and
   forward pass, batch 32, all CPUs), measured right before the pipeline runs;
2. throughput of `run_batch` (read, hash, plan, decode, preprocess, encode on the actor
   pool, write into a fresh embedded store) after its start-up, and from its first encoded batch
   on (the encode actors' model load and the pipeline fill excluded: the figure a longer
   catalog approaches), each as a ratio to (1);
3. scaling from 1 to 2 encode workers (1 torch thread each) on a smaller catalog;
4. peak resident memory of the driver plus every Ray process, sampled each second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from encoders.clip.encoder import ClipEncoder, ClipOptions
from indexing.batch.pipeline import BatchOptions, run_batch
from indexing.batch.writer import StoreSpec
from tests.fixtures.catalog import image_bytes

MODEL = "ViT-B-32/random"
RESULTS = Path(__file__).resolve().parent / "results"


def catalog(n: int, size: int = 512) -> Path:
    root = RESULTS / f"catalog-{size}"
    for i in range(n):
        path = root / f"part-{i // 1000:03d}" / f"item-{i:06d}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image_bytes(i, size))
    return root


def subset(root: Path, n: int) -> Path:
    """A manifest of the first n images, so smaller runs reuse the same files."""
    files = sorted(root.rglob("*.jpg"))[:n]
    manifest = RESULTS / f"manifest-{n}.csv"
    manifest.write_text("uri\n" + "".join(f"{p}\n" for p in files))
    return manifest


def raw_encoder(root: Path, n: int = 256, threads: int = 0, runtime: str = "torch") -> float:
    """Images/s of the bare encoder, measured in a child process so this one (the pipeline's
    driver, whose memory is counted) never holds a model."""
    code = (
        f"from pathlib import Path; from benchmarks.bench_batch import _raw; "
        f"print(_raw(Path({str(root)!r}), {n}, {threads}, {runtime!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _raw(root: Path, n: int, threads: int, runtime: str = "torch") -> float:
    from PIL import Image

    encoder = ClipEncoder(
        ClipOptions(model=MODEL, device="cpu", threads=threads or os.cpu_count(), batch_size=32, runtime=runtime)
    ).load()
    images = [Image.open(p).convert("RGB") for p in sorted(root.rglob("*.jpg"))[:n]]
    encoder.encode_images(images[:32])  # warm-up
    start = time.perf_counter()
    encoder.encode_images(images)
    return n / (time.perf_counter() - start)


class PeakRss:
    """Peak of (this process + all Ray processes) resident memory, sampled every second."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(1.0):
            total = 0
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if p.pid == me.pid or "ray" in cmd:
                        total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak_mib = max(self.peak_mib, total / 2**20)


def pipeline(source: Path, actors: int, threads: int, runtime: str = "torch") -> dict:
    import ray

    with tempfile.TemporaryDirectory() as data_dir, PeakRss() as rss:
        clip = ClipOptions(model=MODEL, device="cpu", runtime=runtime)
        options = BatchOptions(
            collection="bench",
            clip=clip,
            encode_actors=actors,
            encode_threads=threads,
            ocr="never",
            error_report=None,
            optimize=False,
        )
        summary = run_batch(source, StoreSpec(data_dir=data_dir), options, progress_every_s=30)
        ray.shutdown()
    busy = summary.seconds - summary.startup_s
    return {
        "images": summary.total,
        "indexed": summary.counts["indexed"],
        "failed": summary.failed,
        "seconds": round(summary.seconds, 1),
        "startup_s": round(summary.startup_s, 1),
        "images_per_s": round(summary.done / busy, 2),
        "images_per_s_incl_startup": round(summary.done / summary.seconds, 2),
        # From the first encoded batch on: models loaded, every step running.
        "first_batch_encoded_s": round(summary.first_encoded_s, 1),
        "steady_images_per_s": round(summary.steady_items_per_s, 2),
        "peak_rss_mib": round(rss.peak_mib),
        "actors": actors,
        "threads": threads,
        "runtime": runtime,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--scaling-images", type=int, default=2_000)
    p.add_argument("--skip-main", action="store_true")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnx", "onnx-int8"])
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    root = catalog(max(args.images, args.scaling_images))
    cpus = os.cpu_count() or 1
    results: dict = {"cpus": cpus, "model": MODEL}
    if not args.skip_main:
        results["runtimes"] = {}
        for rt in args.runtimes:
            raw = round(raw_encoder(root, runtime=rt), 2)
            main_run = pipeline(subset(root, args.images), actors=1, threads=cpus, runtime=rt)
            results["runtimes"][rt] = {
                "raw_images_per_s": raw,
                "pipeline": main_run,
                "ratio": round(main_run["images_per_s"] / raw, 3),
                "steady_ratio": round(main_run["steady_images_per_s"] / raw, 3),
            }
            print(json.dumps({rt: results["runtimes"][rt]}, indent=2), flush=True)
    if args.skip_scaling:
        (RESULTS / "batch.json").write_text(json.dumps(results, indent=2))
        return
    small = subset(root, args.scaling_images)
    results["raw_1_thread_images_per_s"] = round(raw_encoder(root, threads=1), 2)
    results["scaling"] = [pipeline(small, actors=n, threads=1) for n in (1, 2)]
    results["scaling_speedup"] = round(results["scaling"][1]["images_per_s"] / results["scaling"][0]["images_per_s"], 3)
    print(json.dumps(results, indent=2))
    (RESULTS / "batch.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
