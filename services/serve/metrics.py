"""Prometheus metrics of every replica, served on one port by `loupe serve`.

Each replica process (Ingress, Encoder, Transcriber, Answerer) records with
prometheus_client in multiprocess mode: `loupe serve` gives them all one folder
(`PROMETHEUS_MULTIPROC_DIR`, made empty at start) and serves the sum over the folder at
`http://HOST:PORT/metrics` (`metrics.host`, `metrics.port`; port 0: off), so the figures hold
with any number of replicas on the machine. Outside Serve (tests, the CLI) the same calls
record into the process's default registry.

Names and labels follow Prometheus conventions (base units, `_total` counters,
`_seconds` histograms). The client label is the gateway's client id: bounded by the clients
file (open and shared-key modes have one).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.serve import tracing

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Calls from a millisecond (Count) to minutes (Ask on a CPU, hour-long audio).
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

CALLS = Counter("loupe_calls_total", "Calls by RPC, client and status code", ["rpc", "client", "code"])
CALL_SECONDS = Histogram(
    "loupe_call_duration_seconds", "Call latency in the Ingress, by RPC and client", ["rpc", "client"], buckets=_LATENCY
)
STEP_SECONDS = Histogram(
    "loupe_step_duration_seconds",
    "Time per step: decode_image, encode_image, encode_text, search, store, transcribe, ask, and Ask's "
    "ask_input_guards, ask_ocr, ask_retrieval, ask_draft, ask_output_guards",
    ["step"],
    buckets=_LATENCY,
)
RETRIEVAL_STAGE_SECONDS = Histogram(
    "loupe_retrieval_stage_seconds",
    "Time per retriever stage of a search: candidates, fusion, rerank, diversity",
    ["stage"],
    buckets=_LATENCY,
)
BATCH_SIZE = Histogram(
    "loupe_encoder_batch_size", "Inputs per encoder forward pass", ["kind"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
QUEUE_SECONDS = Histogram(
    "loupe_admission_wait_seconds", "Wait for a slot in an admission lane", ["lane"], buckets=_LATENCY
)
ASK_VERDICTS = Counter(
    "loupe_ask_verdicts_total", "Ask answers by verdict, VLM and prompt version", ["verdict", "model", "prompt_version"]
)
GUARD_FAILURES = Counter(
    "loupe_guard_failures_total",
    "Guard checks that failed, by guard, VLM and prompt version",
    ["guard", "model", "prompt_version"],
)
VLM_TOKENS = Counter(
    "loupe_vlm_tokens_total", "VLM tokens by direction (prompt, generated) and model", ["direction", "model"]
)
CACHE_REQUESTS = Counter("loupe_cache_requests_total", "Exact cache lookups by cache and result", ["cache", "result"])
COLLECTION_POINTS = Gauge(
    "loupe_collection_points", "Points stored per collection", ["collection"], multiprocess_mode="livemax"
)


@contextmanager
def step(name: str, *, traced: bool = True) -> Iterator[None]:
    """Time a step (and trace it, when tracing is on). `traced=False` inside a Serve batch,
    which runs for several calls at once: each call traces its own wait for the batch."""
    start = time.perf_counter()
    try:
        with tracing.span(name) if traced else nullcontext():
            yield
    finally:
        STEP_SECONDS.labels(name).observe(time.perf_counter() - start)


def retrieval_stages(stages: dict[str, float], started_ns: int) -> None:
    """A search's stage timings (indexing.retriever, run in order from `started_ns`): the
    histogram, and a span per stage under the current one when tracing is on."""
    for name, seconds in stages.items():
        RETRIEVAL_STAGE_SECONDS.labels(name).observe(seconds)
    tracing.stages(stages, started_ns)


def call(rpc: str, client: str, code: str, seconds: float) -> None:
    CALLS.labels(rpc, client, code).inc()
    CALL_SECONDS.labels(rpc, client).observe(seconds)


def answer(a) -> None:
    """An lmm.types.Answer: its verdict, failed guards, tokens and step timings."""
    ASK_VERDICTS.labels(a.verdict.value, a.model_id, a.prompt_version).inc()
    for g in a.guards:
        if not g.passed:
            GUARD_FAILURES.labels(g.guard, a.model_id, a.prompt_version).inc()
    VLM_TOKENS.labels("prompt", a.model_id).inc(a.tokens_in)
    VLM_TOKENS.labels("generated", a.model_id).inc(a.tokens_out)
    for name, seconds in a.timings.items():
        if name != "total":
            STEP_SECONDS.labels(f"ask_{name}").observe(seconds)


def registry(folder: str) -> CollectorRegistry:
    """The sum over every process that records into `folder` (the exporter's view)."""
    from prometheus_client import multiprocess

    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg, path=folder)
    return reg


def serve_folder(folder: str, host: str, port: int):
    """Start the exporter thread; returns the server (call .shutdown() to stop it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry(folder))
    return server
