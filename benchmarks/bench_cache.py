"""Caches off vs on, in one run, through the real service (`loupe serve --bundled-models`).

    python -m benchmarks.bench_cache                 # ~5 min on 2 cores
    python -m benchmarks.bench_cache --images 300

Two services, one after the other, on their own data folders: `cache.enabled: false`, then
the defaults (in-process caches; `--redis URL` for the Redis backend). On each:
- index N generated images (64 px shapes) over gRPC in batches of 50, then index the same N
  again (a catalog re-run): seconds and images/s;
- the same SearchText 50 times (p50 ms) and 50 different texts (the miss cost);
- the same Ask about an uploaded screenshot 5 times, against the scripted OpenAI-compatible
  VLM of the tests (it answers at once, so what a hit saves here is OCR, retrieval and the
  guards; with a real VLM the draft's seconds are saved too);
- the cache hit and miss counts from the service's /metrics.
Writes benchmarks/results/cache.json.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from encoders.clip.bundled.shapes import make_pairs
from services.cli.launch import ServiceProcess
from services.client import ImageInput, LoupeClient
from tests.fixtures.scripted_vlm import ScriptedVlmServer

RESULTS = Path(__file__).resolve().parent / "results"
SHOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "screenshots" / "printer_e42_tray_empty.png"


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def hits(metrics_url: str) -> dict[str, dict[str, float]]:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out: dict[str, dict[str, float]] = {}
    for m in re.finditer(r'^loupe_cache_requests_total\{cache="(\w+)",result="(\w+)"\} ([0-9.e+]+)$', text, re.M):
        out.setdefault(m.group(1), {})[m.group(2)] = float(m.group(3))
    return out


def one_service(label: str, env: dict[str, str], images: list[bytes], vlm_url: str) -> dict:
    env = {
        **env,
        "LOUPE_AUDIO": "false",
        "LOUPE_ASK__BACKEND": "openai",
        "LOUPE_ASK__BASE_URL": vlm_url,
        "LOUPE_ASK__MODEL": "scripted-vlm",
    }
    out: dict = {"label": label}
    with tempfile.TemporaryDirectory() as root:
        args = ["--bundled-models", "--data-dir", f"{root}/data"]
        with (
            ServiceProcess(args, log_path=f"{root}/serve.log", env=env) as svc,
            LoupeClient(svc.target, timeout_s=600) as c,
        ):
            for run in ("first", "again"):
                start = time.perf_counter()
                reused = 0
                for i in range(0, len(images), 50):
                    batch = [ImageInput(b, source=f"{run}-{i + n}.png") for n, b in enumerate(images[i : i + 50])]
                    reused += sum(not created for _, created in c.index_images(batch, collection="bench"))
                seconds = time.perf_counter() - start
                out[f"index_{run}"] = {
                    "seconds": round(seconds, 2),
                    "images_per_s": round(len(images) / seconds, 1),
                    "not_created": reused,
                }
            same = []
            for _ in range(50):
                t = time.perf_counter()
                c.search_text("a red circle on a blue background", collection="bench", limit=10)
                same.append((time.perf_counter() - t) * 1000)
            different = []
            for n in range(50):
                t = time.perf_counter()
                c.search_text(f"a red circle on a blue background number {n}", collection="bench", limit=10)
                different.append((time.perf_counter() - t) * 1000)
            out["search_same_p50_ms"] = round(statistics.median(same[1:]), 2)
            out["search_different_p50_ms"] = round(statistics.median(different), 2)
            shot = SHOT.read_bytes()
            asks = []
            for _ in range(5):
                t = time.perf_counter()
                answer = c.ask("What error does the printer show?", [shot])
                asks.append(((time.perf_counter() - t) * 1000, answer.cached, answer.verdict))
            out["ask_ms"] = [round(ms, 1) for ms, _, _ in asks]
            out["ask_cached"] = [cached for _, cached, _ in asks]
            out["cache_requests"] = hits(svc.metrics_url)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--redis", default="", help="redis://host:port/db for the cache-on service")
    p.add_argument("--out", default=str(RESULTS / "cache.json"))
    args = p.parse_args()
    images = [png(img) for img, _ in make_pairs(args.images, seed=99, size=64)]
    on_env = {"LOUPE_CACHE__REDIS_URL": args.redis} if args.redis else {}
    with ScriptedVlmServer() as vlm:
        off = one_service("cache off", {"LOUPE_CACHE__ENABLED": "false"}, images, vlm.url)
        on = one_service("cache on" + (" (redis)" if args.redis else " (in-process)"), on_env, images, vlm.url)
    for r in (off, on):
        print(f"\n{r['label']}:")
        print(
            f"  index {args.images} new images: {r['index_first']['seconds']} s ({r['index_first']['images_per_s']}/s)"
        )
        print(
            f"  index the same {args.images} again: {r['index_again']['seconds']} s "
            f"({r['index_again']['images_per_s']}/s), not created {r['index_again']['not_created']}"
        )
        print(
            f"  SearchText p50: same text {r['search_same_p50_ms']} ms, different texts {r['search_different_p50_ms']} ms"
        )
        print(f"  Ask x5 on one screenshot (ms): {r['ask_ms']}, cached {r['ask_cached']}")
        for name, counts in sorted(r["cache_requests"].items()):
            total = sum(counts.values())
            print(f"  cache {name}: {counts.get('hit', 0):.0f} hits / {total:.0f} lookups")
    ratio = off["index_again"]["seconds"] / on["index_again"]["seconds"]
    ask_ratio = statistics.median(off["ask_ms"][1:]) / statistics.median(on["ask_ms"][1:])
    print(f"\nre-indexing stored images: {ratio:.1f}x faster with the cache; repeated Ask: {ask_ratio:.1f}x")
    RESULTS.mkdir(exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"off": off, "on": on, "reindex_speedup": ratio, "ask_speedup": ask_ratio}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
