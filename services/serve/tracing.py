"""OpenTelemetry spans per step, exported over OTLP/HTTP when `tracing.endpoint` is set.

Off by default (no endpoint: `span()` costs a context manager and nothing else). On, every
replica exports its own spans (service name `loupe`, attribute `loupe.deployment`) to
`<endpoint>/v1/traces`. Serve's handle calls carry no trace context, so the trace id is derived
from the call's request id (sha256, first 128 bits): every span a call causes, in the Ingress,
Encoder, Transcriber and Answerer (the store's steps are the Ingress's), lands in one trace, and each carries
`loupe.request_id`. Steps are those `services.serve.metrics.step` times, plus one span per RPC.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from services.serve import requests

_tracer = None


def configure(tracing, deployment: str) -> None:
    """Once per replica: export to `tracing.endpoint` (nothing when it is empty)."""
    global _tracer
    if not tracing.endpoint or _tracer is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "loupe", "loupe.deployment": deployment}))
    endpoint = tracing.endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=500))
    _tracer = provider.get_tracer("loupe")


def trace_id_of(rid: str) -> int:
    return int.from_bytes(hashlib.sha256(rid.encode()).digest()[:16], "big") or 1


@contextmanager
def _span(name: str, attributes: dict) -> Iterator[None]:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    rid = requests.current()
    context = None
    if rid and trace.get_current_span().get_span_context().trace_id != trace_id_of(rid):
        root = SpanContext(trace_id_of(rid), random.getrandbits(64) or 1, is_remote=True, trace_flags=TraceFlags(1))
        context = trace.set_span_in_context(NonRecordingSpan(root))
    with _tracer.start_as_current_span(name, context=context) as span:
        if rid:
            span.set_attribute("loupe.request_id", rid)
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key, value)
        yield


def stages(timings: dict[str, float], started_ns: int) -> None:
    """Spans for steps timed elsewhere (a worker thread's retriever stages), laid end to end
    from `started_ns` in the order they ran, as children of the current span."""
    if _tracer is None:
        return
    rid = requests.current()
    at = started_ns
    for name, seconds in timings.items():
        end = at + int(seconds * 1e9)
        span = _tracer.start_span(f"retrieval.{name}", start_time=at)
        if rid:
            span.set_attribute("loupe.request_id", rid)
        span.end(end_time=end)
        at = end


def span(name: str, **attributes):
    """A span around a step of the current call; a no-op while tracing is off."""
    if _tracer is None:
        return nullcontext()
    return _span(name, attributes)
