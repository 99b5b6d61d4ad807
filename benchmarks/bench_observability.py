"""The cost of metrics, logs, traces and feedback records per call: the same calls on a
service with all of them off (metrics port 0, logs at WARNING, no tracing endpoint,
feedback.record false) and one with all on (metrics, a JSON log line per call, spans exported
to an OTLP receiver in this process, a copy of every search response kept for feedback),
both running, calls interleaved in one run. Prints a table and writes benchmarks/results/observability.json.

    python -m benchmarks.bench_observability            # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks.bench_gateway import RUNS, calls
from services.cli.launch import ServiceProcess
from services.client import LoupeClient
from tests.fixtures.otlp import OtlpReceiver

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=300, help="sequential calls per RPC and setting")
    p.add_argument("--out", default=str(RESULTS / "observability.json"))
    args = p.parse_args()
    base = {"LOUPE_OCR__MODE": "never", "LOUPE_AUDIO": "false", "LOUPE_ASK__ENABLED": "false"}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        otlp = stack.enter_context(OtlpReceiver())
        settings = {
            # LOUPE_* beats the harness's --metrics-port: 0 turns the endpoint off.
            "off": {
                **base,
                "LOUPE_LOGS__LEVEL": "WARNING",
                "LOUPE_METRICS__PORT": "0",
                "LOUPE_FEEDBACK__RECORD": "false",
            },
            "on": {**base, "LOUPE_TRACING__ENDPOINT": otlp.url},
        }
        setups = {}
        for name, env in settings.items():
            svc = stack.enter_context(
                ServiceProcess(
                    ["--bundled-models", "--data-dir", str(root / f"data-{name}")],
                    log_path=root / f"{name}.log",
                    env=env,
                )
            )
            setups[name] = stack.enter_context(LoupeClient(svc.target))
        report = calls(setups, args.rounds)
        report["spans_received"] = len(otlp.spans)
    print(f"\n{'call (sequential, warm, ms)':30} {'off p50':>9} {'p99':>7} {'on p50':>9} {'p99':>7}")
    for label in RUNS:
        o, n = report["off"][label], report["on"][label]
        print(f"{label:30} {o['p50_ms']:9.2f} {o['p99_ms']:7.2f} {n['p50_ms']:9.2f} {n['p99_ms']:7.2f}")
    report["median_added_p50_ms"] = statistics.median(
        report["on"][k]["p50_ms"] - report["off"][k]["p50_ms"] for k in RUNS
    )
    print(
        f"metrics + logs + traces add (median over the calls, p50): {report['median_added_p50_ms']:.2f} ms; "
        f"{report['spans_received']} spans received"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
