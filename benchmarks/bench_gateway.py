"""The gateway's cost per call: the same calls without it (open service) and with it (a
clients file: key check, rights, collection scope, rate limit, quota, usage, personal data
masked), and over TLS through nginx when it is installed. Prints a table and writes
benchmarks/results/gateway.json.

    python -m benchmarks.bench_gateway              # ~4 min on 2 cores
    python -m benchmarks.bench_gateway --rounds 100

Also times the gateway's own work in this process (no network), per call.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

from benchmarks.bench_search import percentiles
from services.cli.launch import ServiceProcess
from services.client import LoupeClient, TextInput
from services.gateway.clients import hash_key, load_clients, new_key

RESULTS = Path(__file__).resolve().parent / "results"
COLLECTION = "bench-docs"
TEXT = "Receipt {i}: order GV-{i:05d}, sent to customer{i}@example.net, total ${i}.99"


def clients_file(folder: Path, key: str) -> Path:
    entry = {
        "id": "bench",
        "keys": [{"sha256": hash_key(key)}],
        "rights": ["search", "index"],  # no personal_data: hits get their e-mails masked
        "collections": ["bench-*"],
        "limits": {"rate": 100000, "burst": 100000},
        "quotas": {"items_per_day": 10_000_000},
    }
    path = folder / "clients.yaml"
    path.write_text(
        yaml.safe_dump({"clients": [entry, {**entry, "id": "other", "keys": [{"sha256": hash_key(new_key())}]}]})
    )
    return path


RUNS = {
    "Count": lambda c: c.count(collection=COLLECTION),
    "GetItem": lambda c: c.get("r7", collection=COLLECTION),
    "SearchText keyword, 10 hits": lambda c: c.search_text(
        "receipt order total", mode="keyword", limit=10, collection=COLLECTION
    ),
}


def calls(setups: dict[str, LoupeClient], rounds: int, block: int = 25) -> dict:
    """p50/p99 per setting and RPC, the settings' calls interleaved in blocks, so that a
    machine slowing down or speeding up during the run shows in all of them alike."""
    samples: dict = {name: {label: [] for label in RUNS} for name in setups}
    for c in setups.values():  # idempotent: the same ids and texts again change nothing
        c.index_texts([TextInput(TEXT.format(i=i), id=f"r{i}") for i in range(50)], collection=COLLECTION)
        for fn in RUNS.values():
            for _ in range(20):
                fn(c)
    for label, fn in RUNS.items():
        for _ in range(0, rounds, block):
            for name, c in setups.items():
                for _ in range(block):
                    t = time.perf_counter()
                    fn(c)
                    samples[name][label].append((time.perf_counter() - t) * 1000)
    return {name: {label: percentiles(s) for label, s in runs.items()} for name, runs in samples.items()}


def in_process(rounds: int, clients: Path, key: str) -> dict:
    """The gateway's own work for one SearchText with 10 hits, without the network."""
    import datetime as dt

    from indexing.privacy import Privacy
    from protos.loupe.v1 import common_pb2, search_pb2
    from services.events.store import EventStore
    from services.gateway.gate import Gateway
    from services.gateway.limits import RateLimiter, check_quota
    from services.gateway.meter import Meter
    from services.gateway.redact import redact_request, redact_response

    gate, limiter, privacy = Gateway(load_clients(clients)), RateLimiter(), Privacy()
    with tempfile.TemporaryDirectory() as tmp:
        meter = Meter(EventStore(f"sqlite:///{tmp}/e.db"))
        meta = {"authorization": f"Bearer {key}"}
        samples = []
        for _ in range(rounds + 50):
            req = search_pb2.SearchTextRequest(
                query="receipt order total", options=search_pb2.SearchOptions(collection=COLLECTION)
            )
            resp = search_pb2.SearchResponse()
            for i in range(10):
                resp.hits.add(item=common_pb2.Item(id=f"r{i}", text=TEXT.format(i=i)), score=1.0)
            t = time.perf_counter()
            client = gate.authenticate(meta)
            gate.authorize(client, "SearchText", req)
            limiter.check(client, "SearchText")
            check_quota(client, "SearchText", lambda c=client: meter.used_today(c.id), dt.datetime.now(dt.UTC))
            redact_request(privacy, client, "SearchText", req)
            redact_response(privacy, client, "SearchText", req, resp)
            meter.record(client.id, "SearchText", "OK")
            samples.append((time.perf_counter() - t) * 1000)
        meter.close()
    return percentiles(samples[50:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tls_proxy(target: str, folder: Path):
    """(TLS target in front of `target`, its CA file) via loupe tls-proxy; None without nginx."""
    if shutil.which("nginx") is None:
        print("nginx not installed: no TLS figures")
        yield None
        return
    from tests.fixtures.tls import Authority

    ca = Authority(folder)
    cert, cert_key = ca.issue("server", server=True)
    port = free_port()
    cmd = [sys.executable, "-m", "services.cli.main", "tls-proxy", "--cert", str(cert), "--key", str(cert_key)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--upstream", target, "--run", "--run-dir", str(folder / "nginx")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"localhost:{port}", str(ca.pem)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=300, help="sequential calls per RPC and setting")
    p.add_argument("--out", default=str(RESULTS / "gateway.json"))
    args = p.parse_args()
    key = new_key()
    env = {"LOUPE_OCR__MODE": "never", "LOUPE_AUDIO": "false", "LOUPE_ASK__ENABLED": "false"}
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        clients = clients_file(root, key)
        report["in_process_gateway"] = in_process(args.rounds * 10, clients, key)
        # Both services run at once; their calls alternate (see `calls`).
        services = {
            name: stack.enter_context(
                ServiceProcess(
                    ["--bundled-models", "--data-dir", str(root / f"data-{name}"), *extra],
                    log_path=root / f"{name}.log",
                    env=env,
                )
            )
            for name, extra in (("open", []), ("clients", ["--clients", str(clients)]))
        }
        setups = {
            "open": stack.enter_context(LoupeClient(services["open"].target)),
            "clients": stack.enter_context(LoupeClient(services["clients"].target, api_key=key)),
        }
        tls = stack.enter_context(tls_proxy(services["clients"].target, root))
        if tls:
            setups["clients_over_tls"] = stack.enter_context(LoupeClient(tls[0], api_key=key, tls=True, ca_file=tls[1]))
        report.update(calls(setups, args.rounds))
    g = report["in_process_gateway"]
    print(f"\ngateway work in process (SearchText, 10 hits): p50 {g['p50_ms']:.3f} ms, p99 {g['p99_ms']:.3f} ms")
    print(f"\n{'call (sequential, warm, ms)':30} " + " ".join(f"{n + ' p50':>22} {'p99':>7}" for n in setups))
    for label in RUNS:
        cells = " ".join(f"{report[n][label]['p50_ms']:22.2f} {report[n][label]['p99_ms']:7.2f}" for n in setups)
        print(f"{label:30} {cells}")
    report["median_added_p50_ms"] = statistics.median(
        report["clients"][k]["p50_ms"] - report["open"][k]["p50_ms"] for k in RUNS
    )
    print(f"gateway adds (median over the calls, p50): {report['median_added_p50_ms']:.2f} ms")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
