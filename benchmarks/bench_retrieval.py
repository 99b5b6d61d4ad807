"""Retrieval-stage benchmark with the bundled tiny CLIP, in process (LoupeApi without Ray).

    python -m benchmarks.bench_retrieval            # ~2 min on 2 cores
    python -m benchmarks.bench_retrieval --quick    # ~20 s smoke run (tiny sizes)
    python -m benchmarks.bench_retrieval --big 30000   # a smaller synthetic collection

Prints one table per part and writes benchmarks/results/retrieval.json (all figures, the
machine, the date):
1. stages: per retrieval stage (`stage_ms`: candidates, fusion) and end to end (wall time of
   the call), p50/p95 ms, for text queries in dense, keyword and hybrid mode on a calibrated
   collection of `--items` shapes items (OCR off) (half pictures with caption metadata, half the caption
   texts). Query vectors are cached by the service, so the timed rows exclude text encoding;
   the "dense, first call" row is the same dense search with the encoding (cache cold).
2. second stage: the rerank stage and the whole search at 20, 50 and 100 candidates, for the
   scripted HTTP rerank server (tests/fixtures/rerank_server.py, a local round trip) and the
   tiny cross-encoder (tests/fixtures/tiny_cross_encoder.py) in process; MMR at lambda 0.7
   over 50 candidates; plain dense beside them. These searches ask min_confidence 0 so every
   candidate reaches the second stage. "whole search" also holds what no stage times: reading
   the window's payloads and masking the candidates' texts before the reranker reads them.
3. calibration: `client.calibrate` on 1k items indexed through the normal path, and on a
   `--big` collection (default 100k) of synthetic points written straight into the store:
   vectors drawn around the real items' vectors with noise, payloads copied from them (modality,
   caption metadata and thumbnail for pictures, text and keyword vector for texts). Calibration
   samples `calibration.sample_items` items (default 300) whatever the size, so what grows with
   the collection is each probe's search, not the number of probes. Also dense and hybrid search
   p50 on the big collection (after `Index.optimize`, timed too).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from encoders.clip.bundled.shapes import all_scenes, make_pairs
from encoders.text.keywords import keyword_vector
from indexing.payloads import NewItem
from indexing.types import Modality
from services.config import load_settings
from services.serve.workers import EncoderWorker
from tests.fixtures import shapes_eval
from tests.fixtures.inprocess import ApiClient
from tests.fixtures.rerank_server import ScriptedRerankServer
from tests.fixtures.tiny_cross_encoder import build_tiny_cross_encoder

RESULTS = Path(__file__).resolve().parent / "results"
MAIN, SMALL, BIG = "bench", "cal1k", "big"
MODES = ("dense", "keyword", "hybrid")
CANDIDATES = (20, 50, 100)


def percentiles(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    return {
        "p50_ms": round(statistics.median(s), 2),
        "p95_ms": round(s[min(len(s) - 1, int(0.95 * len(s)))], 2),
        "n": len(s),
    }


def shapes_items(n: int, seed: int, prefix: str) -> list[dict]:
    """`n` items: n/2 scene pictures with caption metadata and their n/2 captions as texts."""
    items = []
    for i, (image, caption) in enumerate(make_pairs(n // 2, seed=seed, size=64)):
        _, colour, shape, *_ = caption.split()
        meta = {"caption": caption, "shape": shape, "colour": colour, "background": caption.split()[-2]}
        items.append(
            {
                "id": f"{prefix}img-{i}",
                "modality": "image",
                "data": shapes_eval.png(image),
                "source": f"{prefix}shape-{i}.png",
                "metadata": meta,
            }
        )
        items.append({"id": f"{prefix}cap-{i}", "modality": "text", "text": caption, "source": f"{prefix}c-{i}"})
    for it in items:
        it.setdefault("metadata", {})
    return items


def queries(n: int, seed: int = 7) -> list[str]:
    """Distinct caption queries (the world has 336 captions; past that, shorter phrasings)."""
    scenes = all_scenes()
    random.Random(seed).shuffle(scenes)
    texts = [s.caption for s in scenes] + [f"a {s.colour} {s.shape}" for s in scenes]
    return texts[:n]


def timed_search(client: ApiClient, query: str, **options) -> tuple[float, dict[str, float], object]:
    start = time.perf_counter()
    result = client.search_text(query, **options)
    return (time.perf_counter() - start) * 1000, dict(result.stage_ms), result


def stage_rows(client: ApiClient, collection: str, qs: list[str], modes=MODES, **options) -> dict[str, dict]:
    """Per mode: each stage's and the whole call's percentiles. The first dense pass fills the
    query-vector cache and is reported as "dense, first call"."""
    rows: dict[str, dict] = {}
    passes = [("dense, first call", "dense")] + [(m, m) for m in modes]
    for label, mode in passes:
        wall, stages = [], {}
        for q in qs:
            ms, st, _ = timed_search(client, q, collection=collection, mode=mode, limit=10, **options)
            wall.append(ms)
            for k, v in st.items():
                stages.setdefault(k, []).append(v)
        rows[label] = {"stages": {k: percentiles(v) for k, v in stages.items()}, "end_to_end": percentiles(wall)}
    return rows


# -- 2. second stage -------------------------------------------------------------------------
def second_stage_rows(client: ApiClient, qs: list[str]) -> dict[str, dict]:
    variants: list[tuple[str, dict]] = [("none (plain dense)", {})]
    for name in ("http", "ce"):
        variants += [(f"{name} @{n}", {"rerank": name, "rerank_candidates": n}) for n in CANDIDATES]
    variants.append(("mmr 0.7 @50", {"mmr_lambda": 0.7}))
    rows: dict[str, dict] = {}
    for label, options in variants:
        client.search_text(qs[0], collection=MAIN, mode="dense", limit=10, min_confidence=0.0, **options)  # warm
        wall, first, stage, status = [], [], [], ""
        for q in qs:
            ms, st, result = timed_search(
                client, q, collection=MAIN, mode="dense", limit=10, min_confidence=0.0, **options
            )
            wall.append(ms)
            first.append(st["candidates"])
            if "rerank" in st or "diversity" in st:
                stage.append(st.get("rerank", st.get("diversity")))
            status = result.rerank or result.diversity
        rows[label] = {
            "candidates": percentiles(first),
            "stage": percentiles(stage) if stage else None,
            "search": percentiles(wall),
            "status": status,
            **options,
        }
    return rows


def rerank_settings(server_url: str, ce_folder: Path) -> dict:
    common = {"candidates": max(CANDIDATES), "timeout_s": 30.0}
    return {
        "rerankers": {
            "http": {"kind": "http", "url": server_url, **common},
            "ce": {"kind": "cross-encoder", "model": str(ce_folder), **common},
        }
    }


# -- 3. calibration --------------------------------------------------------------------------
def timed_calibrate(client: ApiClient, collection: str) -> dict:
    start = time.perf_counter()
    fit = client.calibrate(collection=collection)
    seconds = time.perf_counter() - start
    return {"calibrate_s": round(seconds, 2), "positives": fit.positives, "negatives": fit.negatives}


def base_points(client: ApiClient, items: list[dict]) -> list[tuple[dict, np.ndarray]]:
    index = client.index.index
    return [index.get_vector(MAIN, it["id"]) for it in items]


def synthetic_items(bases: list[tuple[dict, np.ndarray]], lo: int, n: int, rng, noise: float) -> list[NewItem]:
    """Points around random real items: the base vector plus Gaussian noise, renormalised,
    and the base's payload (a picture's caption metadata and thumbnail, a text's keywords)."""
    picks = rng.integers(0, len(bases), n)
    dim = bases[0][1].shape[0]
    vectors = np.stack([bases[i][1] for i in picks]) + rng.normal(0, noise / np.sqrt(dim), (n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    out = []
    for j, (i, vector) in enumerate(zip(picks, vectors)):
        payload = bases[i][0]
        k = lo + j
        image = payload.get("modality") == Modality.IMAGE.value
        text = None if image else payload.get("text")
        thumb = payload.get("thumbnail")
        out.append(
            NewItem(
                public_id=f"syn-{k}",
                sha256=f"{k:064x}",
                modality=Modality.IMAGE if image else Modality.TEXT,
                vector=vector,
                source=f"synthetic-{k}",
                metadata=dict(payload.get("meta") or {}) | {"bucket": k % 10},
                text=text,
                width=64 if image else None,
                height=64 if image else None,
                keywords=keyword_vector(text) if text else None,
                thumbnail=base64.b64decode(thumb) if image and thumb else None,
            )
        )
    return out


def build_big(client: ApiClient, bases, n: int, noise: float) -> dict:
    index = client.index.index
    schema = index.schema(MAIN)
    rng = np.random.default_rng(11)
    start = time.perf_counter()
    for lo in range(0, n, 1000):
        index.upsert(BIG, synthetic_items(bases, lo, min(1000, n - lo), rng, noise), schema)
    upsert_s = time.perf_counter() - start
    start = time.perf_counter()
    index.optimize(BIG)
    return {"points": n, "upsert_s": round(upsert_s, 1), "optimize_s": round(time.perf_counter() - start, 1)}


def big_search(client: ApiClient, qs: list[str]) -> dict:
    out = {}
    for mode in ("dense", "hybrid"):
        out[mode] = percentiles([timed_search(client, q, collection=BIG, mode=mode, limit=10)[0] for q in qs])
    return out


# -- report ----------------------------------------------------------------------------------
def machine() -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def print_stages(rows: dict, items: int) -> None:
    print(f"\n1. text search stages, calibrated collection of {items} items, top 10 (p50 / p95 ms)")
    print(f"  {'mode':18} {'candidates':>15} {'fusion':>15} {'end to end':>15}")
    for label, r in rows.items():
        cells = []
        for key in ("candidates", "fusion"):
            s = r["stages"].get(key)
            cells.append(f"{s['p50_ms']:.2f} / {s['p95_ms']:.2f}" if s else "-")
        e = r["end_to_end"]
        print(f"  {label:18} {cells[0]:>15} {cells[1]:>15} {e['p50_ms']:.2f} / {e['p95_ms']:.2f}".rstrip())


def print_second(rows: dict) -> None:
    print("\n2. second stage, dense top 10 (p50 / p95 ms); http = scripted server, ce = tiny cross-encoder")
    print(f"  {'variant':20} {'candidates':>17} {'rerank / mmr':>17} {'whole search':>17}  status")
    for label, r in rows.items():
        cells = [
            f"{v['p50_ms']:>7.2f} / {v['p95_ms']:<7.2f}" if v else f"{'-':>7}   {'':7}"
            for v in (r["candidates"], r["stage"], r["search"])
        ]
        print(f"  {label:20} {' '.join(cells)}  {r['status']}".rstrip())


def print_calibration(cal: dict) -> None:
    print("\n3. calibration (client.calibrate; samples calibration.sample_items = 300 items at any size)")
    print(f"  {'collection':24} {'points':>8} {'calibrate s':>12} {'pos':>6} {'neg':>6}  build")
    for key in ("small", "big"):
        r = cal[key]
        build = r.get("build", {})
        note = (
            f"indexed {build.get('index_s', '')} s"
            if key == "small"
            else (f"synthetic upsert {build.get('upsert_s')} s, optimize {build.get('optimize_s')} s")
        )
        print(
            f"  {r['how']:24} {r['points']:>8} {r['calibrate_s']:>12.2f} {r['positives']:>6} {r['negatives']:>6}  {note}"
        )
    s = cal["big"]["search"]
    print(
        f"  search on {cal['big']['points']} points, p50 / p95 ms: dense {s['dense']['p50_ms']} / "
        f"{s['dense']['p95_ms']}, hybrid {s['hybrid']['p50_ms']} / {s['hybrid']['p95_ms']}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=3000, help="items in the stage-latency collection")
    p.add_argument("--small", type=int, default=1000, help="items calibrated through the normal path")
    p.add_argument("--big", type=int, default=100_000, help="synthetic points of the big collection")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--noise", type=float, default=0.5, help="norm of the noise added to a base vector")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    p.add_argument("--out", default=str(RESULTS / "retrieval.json"))
    args = p.parse_args()
    if args.quick:
        args.items, args.small, args.big, args.queries = 200, 200, 2000, 10
    started = time.perf_counter()
    qs = queries(args.queries)
    # OCR off: "auto" reads every 64 px shapes picture (~0.2 s each on 2 cores), which would
    # be most of the indexing and calibration time; this measures retrieval.
    encoder = EncoderWorker(
        load_settings({"profile": "bundled", "encoder": {"threads": args.threads}, "ocr": {"mode": "never"}})
    )
    report: dict = {
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory() as tmp, ScriptedRerankServer() as server:
        ce = build_tiny_cross_encoder(Path(tmp) / "tiny-ce", steps=30 if args.quick else 300)
        data = Path(tmp) / "data"
        with ApiClient.open(str(data), encoder, rerank=rerank_settings(server.url, ce)) as client:
            items = shapes_items(args.items, seed=1_000_003, prefix="")
            start = time.perf_counter()
            shapes_eval.index_catalog(client, MAIN, items)
            report["index_s"] = round(time.perf_counter() - start, 1)
            report["calibrate_main"] = timed_calibrate(client, MAIN)
            report["stages"] = stage_rows(client, MAIN, qs)
            print_stages(report["stages"], args.items)
            report["second_stage"] = second_stage_rows(client, qs)
            print_second(report["second_stage"])
            report["calibration"] = calibration(client, args, items, qs)
            print_calibration(report["calibration"])
    report["total_s"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\ntotal {report['total_s']} s on {report['machine']['cores']} x {report['machine']['cpu']}; wrote {args.out}"
    )


def calibration(client: ApiClient, args, items: list[dict], qs: list[str]) -> dict:
    small_items = shapes_items(args.small, seed=2_000_003, prefix="s")
    start = time.perf_counter()
    shapes_eval.index_catalog(client, SMALL, small_items)
    small = {
        "how": "indexed (normal path)",
        "points": args.small,
        "build": {"index_s": round(time.perf_counter() - start, 1)},
    }
    small |= timed_calibrate(client, SMALL)
    bases = base_points(client, items)
    big = {"how": "synthetic (store)", "build": build_big(client, bases, args.big, args.noise)}
    big |= {"points": args.big, **timed_calibrate(client, BIG), "search": big_search(client, qs)}
    return {"small": small, "big": big}


if __name__ == "__main__":
    main()
