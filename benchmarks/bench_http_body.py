"""Do large HTTP bodies stall other callers? gRPC Count latency while nothing else runs, and
while a large POST arrives on the HTTP port: without a key (refused from its headers, never
read), and with a key (read in chunks up to the cap and parsed in a worker thread). Prints a
table and writes benchmarks/results/http_body.json.

    python -m benchmarks.bench_http_body                 # ~2 min on 2 cores
    python -m benchmarks.bench_http_body --mb 48 --rounds 200
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import threading
import time
from pathlib import Path

import yaml

from benchmarks.bench_load import pct
from services.cli.launch import ServiceProcess
from services.client import LoupeClient, TextInput
from services.gateway.clients import hash_key, new_key
from tests.security.wire import post

RESULTS = Path(__file__).resolve().parent / "results"
COLLECTION = "bench-body"


def body_of(mb: int) -> bytes:
    """An IndexImages request of about `mb` MB whose one image is not an image (refused after parsing)."""
    blob = base64.b64encode(b"\0" * (mb * 1024 * 1024 * 3 // 4)).decode()
    return json.dumps({"collection": COLLECTION, "items": [{"data": blob}]}).encode()


def count_latencies(target: str, key: str, rounds: int, busy: threading.Thread | None = None) -> list[float]:
    """At least `rounds` Count calls, one after another, and more while `busy` runs."""
    out = []
    with LoupeClient(target, api_key=key) as client:
        while len(out) < rounds or (busy is not None and busy.is_alive()):
            started = time.perf_counter()
            client.count(collection=COLLECTION)
            out.append((time.perf_counter() - started) * 1000)
    return out


def under_upload(proc, key: str, body: bytes, send_key: str | None, rounds: int) -> tuple[dict, int, float]:
    """Count latencies while one POST of `body` is sent; (percentiles, its status, its seconds)."""
    result: dict = {}

    def upload() -> None:
        started = time.perf_counter()
        result["status"], _ = post(proc.web_url, "IndexImages", None, send_key, raw=body)
        result["s"] = time.perf_counter() - started

    thread = threading.Thread(target=upload)
    thread.start()
    samples = count_latencies(proc.target, key, rounds, thread)
    thread.join()
    return pct(samples), result["status"], round(result["s"], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=48, help="size of the large body")
    parser.add_argument("--rounds", type=int, default=200, help="Count calls per condition")
    args = parser.parse_args()
    key = new_key()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        entry = {"id": "bench", "keys": [{"sha256": hash_key(key)}], "rights": ["admin"], "collections": ["*"]}
        (root / "clients.yaml").write_text(yaml.safe_dump({"clients": [entry]}))
        serve_args = ["--bundled-models", "--data-dir", str(root / "data"), "--clients", str(root / "clients.yaml")]
        env = {"LOUPE_AUDIO": "false", "LOUPE_ASK__ENABLED": "false"}
        with ServiceProcess(serve_args, log_path=root / "serve.log", env=env) as proc:
            with LoupeClient(proc.target, api_key=key) as client:
                client.index_texts([TextInput("a red circle")], collection=COLLECTION)
            body = body_of(args.mb)
            rows = {"idle": (pct(count_latencies(proc.target, key, args.rounds)), None, None)}
            rows["unauthenticated POST"] = under_upload(proc, key, body, None, args.rounds)
            rows["authenticated POST"] = under_upload(proc, key, body, key, args.rounds)
    print(f"gRPC Count latency (ms) while one {len(body) / 1e6:.0f} MB POST arrives on the HTTP port")
    print(f"{'condition':24} {'p50':>8} {'p95':>8} {'max':>8}  POST status, seconds")
    for name, (p, status, seconds) in rows.items():
        tail = f"  {status}, {seconds}" if status else ""
        print(f"{name:24} {p['p50_ms']:8.2f} {p['p95_ms']:8.2f} {p['max_ms']:8.2f}{tail}")
    RESULTS.mkdir(exist_ok=True)
    out = {
        name: {"count_ms": p, "post_status": status, "post_s": seconds} for name, (p, status, seconds) in rows.items()
    }
    (RESULTS / "http_body.json").write_text(json.dumps({"mb": args.mb, "rows": out}, indent=2))


if __name__ == "__main__":
    main()
