"""Ray Serve deployments: the Ingress (gRPC port and store owner), the batched CLIP encoder,
Whisper and the VLM.

The Ingress implements every RPC of `loupe.v1` plus `grpc.health.v1.Health/Check` and serves
them on the gRPC port itself (services.serve.grpcserver), so method names here are the RPC
names. It also owns the store: reads and writes run in its own process, in worker threads,
with no hop to another replica (services.serve.workers.ThreadCalls).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from contextlib import asynccontextmanager

import grpc
from grpc_health.v1 import health_pb2
from ray import serve

from encoders.clip.encoder import TextEmbedding
from encoders.common.errors import TimedOut
from indexing.query import Found, SearchQuery
from indexing.types import CollectionSchema
from protos.loupe.v1 import admin_pb2, common_pb2, feedback_pb2, index_pb2, qa_pb2, search_pb2
from services.config import LoupeSettings
from services.events.feedback import FeedbackStore, ShownWriter
from services.events.store import EventStore
from services.gateway.gate import Gateway, collection_of
from services.gateway.limits import AUDIO_RPCS, RateLimiter, call_adds, check_quota, declared_audio_s
from services.gateway.meter import AUDITED, UNAUTHENTICATED, Meter, audit_of, usage_of
from services.gateway.redact import redact_request, redact_response, sees_personal_data
from services.rpc import admin, feedback
from services.rpc.api import LoupeApi
from services.rpc.errors import to_status
from services.serve import calllog, grpcserver, metrics, requests, tracing
from services.serve.admission import Admission
from services.serve.workers import (
    EncoderWorker,
    HandleCalls,
    IndexWorker,
    ThreadCalls,
    TranscriberWorker,
)

log = logging.getLogger("loupe")

HEALTH_SERVICES = (
    "",
    "loupe.v1.IndexService",
    "loupe.v1.SearchService",
    "loupe.v1.AudioService",
    "loupe.v1.QAService",
    "loupe.v1.AdminService",
    "loupe.v1.FeedbackService",
)


@serve.deployment(name="Encoder")
class EncoderDeployment:
    def __init__(self, settings: LoupeSettings) -> None:
        _observe(settings, "Encoder")
        self.worker = EncoderWorker(settings)
        self._lone_texts = 0
        batch, wait = settings.encoder.batch_size, settings.encoder.batch_wait_timeout_s
        for method in (self._images, self._texts):
            method.set_max_batch_size(batch)
            method.set_batch_wait_timeout_s(wait)

    def info(self):
        return self.worker.info()

    async def embed_transcript(self, segments, overlap_tokens: int):
        return await asyncio.to_thread(self.worker.embed_transcript, segments, overlap_tokens)

    async def encode_images(self, blobs: list[bytes]) -> list:
        """Decode, preprocess, OCR and thumbnail per call in a worker thread, then the forward
        pass in a batch: one call's decoding runs while another call's batch is encoded."""
        with tracing.span("decode_encode_image", **{"loupe.items": len(blobs)}):
            with metrics.step("decode_image"):
                prepared = await asyncio.to_thread(self.worker.prepare_images, blobs)
            pixels = self.worker.pixels_of(prepared)
            vectors = await self._images(pixels) if pixels else []
            return self.worker.finish_images(prepared, vectors)

    async def encode_texts(self, texts: list[str]) -> TextEmbedding:
        with tracing.span("encode_text", **{"loupe.items": len(texts)}):
            if self._lone_texts:  # another call is being encoded: queue for the next batch
                return await self._texts(texts)
            self._lone_texts += 1  # nothing to batch with: run now, without the batch queue
            try:
                metrics.BATCH_SIZE.labels("text").observe(len(texts))
                with metrics.step("encode_text", traced=False):
                    return await asyncio.to_thread(self.worker.encode_texts, texts)
            finally:
                self._lone_texts -= 1

    # Requests carry lists; a batch is a list of those lists, run as one forward pass.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _images(self, requests: list[list]) -> list[list]:
        flat = [p for pixels in requests for p in pixels]
        metrics.BATCH_SIZE.labels("image").observe(len(flat))
        with metrics.step("encode_image", traced=False):
            vectors = await asyncio.to_thread(self.worker.encode_pixels, flat)
        return _split(list(vectors), [len(r) for r in requests])

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _texts(self, requests: list[list[str]]) -> list[TextEmbedding]:
        flat = [text for texts in requests for text in texts]
        metrics.BATCH_SIZE.labels("text").observe(len(flat))
        with metrics.step("encode_text", traced=False):
            embedded = await asyncio.to_thread(self.worker.encode_texts, flat)
        out, start = [], 0
        for texts in requests:
            end = start + len(texts)
            out.append(TextEmbedding(embedded.vectors[start:end], embedded.truncated[start:end]))
            start = end
        return out


@serve.deployment(name="Transcriber")
class TranscriberDeployment:
    """Whisper in its own replica, so a long recording does not hold up image search."""

    def __init__(self, settings: LoupeSettings) -> None:
        _observe(settings, "Transcriber")
        self.worker = TranscriberWorker(settings)

    def model_id(self) -> str:
        return self.worker.model_id()

    def transcribe(self, data: bytes, language: str | None):
        with metrics.step("transcribe"):
            return self.worker.transcribe(data, language)

    def stream(self, data: bytes, language: str | None, word_timestamps: bool):
        """Sync generator (Serve runs it in a thread): info, segments as decoded, then controls."""
        info, segments, _ = self.worker.stream(data, language, word_timestamps)
        yield info
        yield from segments
        yield info.controls  # complete now that every segment is decoded


@serve.deployment(name="Answerer")
class AnswererDeployment:
    """VLM + OCR + guardrails; retrieves context through the Encoder and the Ingress (the store's
    owner: `Ingress.search`)."""

    def __init__(self, settings: LoupeSettings, encoder) -> None:
        _observe(settings, "Answerer")
        from services.serve.ask import AnswerWorker

        # The Ingress binds this deployment, so it cannot be bound here: look it up by name.
        ingress = serve.get_deployment_handle("Ingress", serve.get_replica_context().app_name)
        self.worker = AnswerWorker(settings, HandleCalls(encoder), HandleCalls(ingress))

    def model_id(self) -> str:
        return self.worker.model_id

    def identity(self) -> dict:
        return self.worker.identity()

    async def ask(self, question: str, images: list[bytes], k: int, retrieval: dict, reveal_retrieved: bool = False):
        return await self.worker.ask(question, images, k, retrieval, reveal_retrieved)


@serve.deployment(name="Ingress")
class Ingress:
    async def __init__(self, settings: LoupeSettings, encoder, transcriber=None, answerer=None) -> None:
        _observe(settings, "Ingress")
        self.settings = settings
        self._transcriber = transcriber
        self.store = StoreCalls(IndexWorker(settings))
        self.api = LoupeApi(
            settings,
            HandleCalls(encoder),
            self.store,
            HandleCalls(transcriber) if transcriber is not None else None,
            HandleCalls(answerer) if answerer is not None else None,
        )
        self.admission = Admission(settings.admission.lanes(), settings.admission.max_wait_s)
        self.gateway = Gateway.from_settings(settings)
        self.limiter = RateLimiter(settings.ingress_replicas)
        events = EventStore(settings.events_store_url())
        self.meter = Meter(events)
        f = settings.feedback
        self.shown = ShownWriter(FeedbackStore(events), keep_days=f.keep_days, upload_keep_hours=f.upload_keep_hours)
        self.privacy = settings.privacy_policy()
        log.info("%s", self.gateway.describe())
        self.server = await grpcserver.start(self, settings, serve.get_replica_context().app_name)

    async def search(self, schema: CollectionSchema, query: SearchQuery) -> Found:
        """The store's search, for the Answerer's retrieval (a handle call, not an RPC)."""
        return await self.store.search(schema, query)

    async def _run(self, call, request, grpc_context, empty, rpc: str, *, with_client: bool = False):
        """One unary RPC: the gateway's checks, admission, the call, then usage and audit."""
        client, result, code, started, claim = None, None, "OK", time.perf_counter(), None
        metadata, rid, label = _begin(grpc_context)
        try:
            client = self.gateway.authenticate(metadata)
            claim = await self._allow(client, rpc, request)  # a refusal is counted against this client
            redact_request(self.privacy, client, rpc, request)
            attrs = {"rpc.system": "grpc", "rpc.method": rpc, "loupe.client": client.id}
            with tracing.span(rpc, **attrs, **({"loupe.client_request_id": label} if label else {})):
                async with self.admission.enter(rpc), self._bounded(grpc_context):
                    result = await (call(request, client) if with_client else call(request))
                grpc_context.set_trailing_metadata(_ids(rid, label))
                return requests.stamp(redact_response(self.privacy, client, rpc, request, result), rid)
        except asyncio.CancelledError:  # the caller went away (or its deadline passed)
            code = "CANCELLED"
            raise
        except Exception as exc:  # every error leaves through the one table
            code = to_status(exc).code.name
            _set_status(grpc_context, self.gateway.shown(client, exc) if client else exc, rid, label)
            return empty
        finally:
            self.meter.release(claim)  # counted from here on by the usage record
            self._done(rpc, client, request, result, code, started, label)
            await self._account(client, rpc, request, result, code, rid, label)

    @staticmethod
    def _done(rpc: str, client, request, result, code: str, started: float, label: str = "") -> None:
        """A finished call: its metrics and its log line (never fails the call)."""
        seconds = time.perf_counter() - started
        who = client.id if client else UNAUTHENTICATED
        try:
            metrics.call(rpc, who, code, seconds)
            if not calllog.CALLS.isEnabledFor(logging.INFO):
                return
            try:
                collection = collection_of(rpc, request)
            except Exception:  # a malformed name: the call's own error says so
                collection = None
            fields = {
                "client": who,
                "client_request_id": label or None,
                "rpc": rpc,
                "collection": collection,
                "code": code,
                "latency_ms": round(seconds * 1000, 2),
                "request_bytes": request.ByteSize() if hasattr(request, "ByteSize") else None,
                "response_bytes": result.ByteSize() if hasattr(result, "ByteSize") else None,
            }
            if hasattr(result, "hits"):
                fields["hits"] = len(result.hits)
            calllog.call(**fields)
        except Exception:
            log.exception("metrics or log line for %s not written", rpc)

    async def _allow(self, client, rpc: str, request) -> int | None:
        """The gateway's checks beyond the key: rights, collection, rate limits, quotas (with
        what this call adds, claimed until it ends: the caller releases the claim)."""
        self.gateway.authorize(client, rpc, request)
        self.limiter.check(client, rpc)
        adds = call_adds(rpc, request)
        if rpc in AUDIO_RPCS and client.limits.audio_seconds_per_day:  # the headers' length
            limits = self.settings.limits.audio_limits()
            adds["audio_s"] = await asyncio.to_thread(declared_audio_s, request.data, limits)
        # No await from the check to the claim: two calls at once cannot both pass on one budget.
        check_quota(client, rpc, lambda: self.meter.used_today(client.id), dt.datetime.now(dt.UTC), adds)
        return self.meter.claim(client.id, adds)

    @asynccontextmanager
    async def _bounded(self, grpc_context):
        """The call's time bound: the server's `grpc.request_timeout_s`, or the caller's deadline
        when that comes first (TimedOut: DEADLINE_EXCEEDED)."""
        bound = self.settings.grpc.request_timeout_s
        left = grpc_context.time_remaining()
        if left is not None:
            bound = min(bound, max(left, 0.0))
        try:
            async with asyncio.timeout(bound) as timer:
                yield
        except TimeoutError:
            if not timer.expired():
                raise
            raise TimedOut(
                f"the call did not finish within {bound:.3g} s (grpc.request_timeout_s or the call's deadline)"
            ) from None

    async def __del__(self) -> None:
        """Serve calls this when it stops the replica: drain the gRPC port, then write the last
        second of usage and shown records and close the store."""
        await grpcserver.stop(getattr(self, "server", None), self.settings.grpc.drain_s)
        for writer in (getattr(self, "meter", None), getattr(self, "shown", None)):
            if writer is not None:
                writer.close()
        if getattr(self, "store", None) is not None:
            await asyncio.to_thread(self.store.close)

    async def _account(self, client, rpc: str, request, result, code: str, rid: str, label: str = "") -> None:
        """Usage, audit, and the copy of what the user saw (for feedback): never fails the call."""
        try:
            usage = usage_of(rpc, result)
            self.meter.record(client.id if client else UNAUTHENTICATED, rpc, code, **usage)
            if client is not None and rpc in AUDITED:
                collection, count, target = audit_of(rpc, request, result)
                await asyncio.to_thread(self.meter.audit, client.id, rpc, collection, code, count, target)
        except Exception:  # accounting must never fail a call that ran
            log.exception("usage or audit record for %s not written now; kept for the next flush", rpc)
        if code != "OK" or client is None or rpc not in feedback.RECORDED or not self.settings.feedback.record:
            return
        at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        # Made by the writer's thread at its next flush: the messages are not changed after this.
        self.shown.add(functools.partial(feedback.shown_of, rpc, client.id, rid, request, result, at, label))

    async def IndexImages(self, request, grpc_context):
        return await self._run(self.api.index_images, request, grpc_context, index_pb2.IndexResponse(), "IndexImages")

    async def IndexTexts(self, request, grpc_context):
        return await self._run(self.api.index_texts, request, grpc_context, index_pb2.IndexResponse(), "IndexTexts")

    async def IndexAudio(self, request, grpc_context):
        return await self._run(
            self.api.index_audio, request, grpc_context, index_pb2.IndexAudioResponse(), "IndexAudio"
        )

    async def Transcribe(self, request, grpc_context):
        """Server streaming: errors before or during the stream end it with a status code."""
        client, code, info, started, claim = None, "OK", None, time.perf_counter(), None
        metadata, rid, label = _begin(grpc_context)
        grpc_context.set_trailing_metadata(_ids(rid, label))
        try:
            client = self.gateway.authenticate(metadata)
            claim = await self._allow(client, "Transcribe", request)
            # Not under grpc.request_timeout_s: a stream runs as long as its recording
            # (limits.audio_max_duration_s bounds that); the caller's deadline still ends it.
            async with self.admission.enter("Transcribe"):
                async for message in self.api.transcribe(request, self._stream_transcript):
                    if info is None and message.WhichOneof("kind") == "info":
                        info = message.info  # its duration counts as audio seconds
                    yield message
        except Exception as exc:  # every error leaves through the one table
            status = to_status(exc)
            code = status.code.name
            # abort() ends the stream with this code, reason and details (it raises to do so).
            await grpc_context.abort(status.code, status.details, _trailers(status, rid, label))
        finally:
            self.meter.release(claim)
            self._done("Transcribe", client, request, info, code, started, label)
            await self._account(client, "Transcribe", request, info, code, rid, label)

    def _stream_transcript(self, data: bytes, language, word_timestamps: bool):
        return self._transcriber.options(stream=True).stream.remote(data, language, word_timestamps)

    async def Ask(self, request, grpc_context):
        return await self._run(
            lambda req, client: self.api.ask(req, reveal_retrieved=sees_personal_data(client), client_id=client.id),
            request,
            grpc_context,
            qa_pb2.AskResponse(),
            "Ask",
            with_client=True,
        )

    async def GetItem(self, request, grpc_context):
        return await self._run(self.api.get_item, request, grpc_context, common_pb2.Item(), "GetItem")

    async def Delete(self, request, grpc_context):
        return await self._run(self.api.delete, request, grpc_context, index_pb2.DeleteResponse(), "Delete")

    async def Count(self, request, grpc_context):
        return await self._run(self.api.count, request, grpc_context, index_pb2.CountResponse(), "Count")

    async def GetStatus(self, request, grpc_context):
        # A client sees only its own collections.
        return await self._run(
            lambda req, client: self.api.get_status(req, visible=client.sees),
            request,
            grpc_context,
            index_pb2.StatusResponse(),
            "GetStatus",
            with_client=True,
        )

    async def Calibrate(self, request, grpc_context):
        return await self._run(self.api.calibrate, request, grpc_context, index_pb2.CalibrateResponse(), "Calibrate")

    async def GetUsage(self, request, grpc_context):
        return await self._run(
            lambda req, client: admin.get_usage(self.meter, client, req),
            request,
            grpc_context,
            admin_pb2.UsageResponse(),
            "GetUsage",
            with_client=True,
        )

    async def GetAudit(self, request, grpc_context):
        return await self._run(
            lambda req, client: admin.get_audit(self.meter, client, req),
            request,
            grpc_context,
            admin_pb2.AuditResponse(),
            "GetAudit",
            with_client=True,
        )

    async def Submit(self, request, grpc_context):
        return await self._run(
            lambda req, client: feedback.submit(self.shown, client, req),
            request,
            grpc_context,
            feedback_pb2.FeedbackResponse(),
            "Submit",
            with_client=True,
        )

    async def ListFeedback(self, request, grpc_context):
        return await self._run(
            lambda req, client: feedback.list_feedback(self.shown, client, req),
            request,
            grpc_context,
            feedback_pb2.ListFeedbackResponse(),
            "ListFeedback",
            with_client=True,
        )

    async def MarkReviewed(self, request, grpc_context):
        return await self._run(
            lambda req, client: feedback.mark_reviewed(self.shown, client, req),
            request,
            grpc_context,
            feedback_pb2.MarkReviewedResponse(),
            "MarkReviewed",
            with_client=True,
        )

    async def SearchText(self, request, grpc_context):
        return await self._run(self.api.search_text, request, grpc_context, search_pb2.SearchResponse(), "SearchText")

    async def SearchImage(self, request, grpc_context):
        return await self._run(self.api.search_image, request, grpc_context, search_pb2.SearchResponse(), "SearchImage")

    async def __call__(self, request):
        """HTTP (Serve's HTTP port): the web page and the same RPCs as JSON (services.web.http)."""
        from services.web import http

        return await http.handle(self, request)

    async def Check(self, request, grpc_context):
        """grpc.health.v1: SERVING only once the model and the store answer."""
        if request.service not in HEALTH_SERVICES:
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service {request.service!r}; known: {', '.join(HEALTH_SERVICES[1:])}")
            return health_pb2.HealthCheckResponse()
        try:
            await asyncio.wait_for(self.api.healthy(), timeout=5)
            status = health_pb2.HealthCheckResponse.SERVING
        except Exception as exc:  # not ready yet, or a dependency is down
            log.info("health check: not serving (%s)", exc)
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


def _begin(grpc_context) -> tuple[dict[str, str], str, str]:
    """A call's metadata, its new request id (made the current Serve request's) and the
    caller's own label for it (services.serve.requests)."""
    metadata = dict(grpc_context.invocation_metadata())
    rid, label = requests.request_id(metadata)
    requests.carry(rid)
    return metadata, rid, label


def _ids(rid: str, label: str) -> tuple:
    """The trailing metadata that names the call: our id, and the caller's label if any."""
    return ((requests.HEADER, rid),) + (((requests.LABEL_HEADER, label),) if label else ())


def _observe(settings: LoupeSettings, deployment: str) -> None:
    """Logs and traces of this replica, as the settings say."""
    calllog.configure(settings.logs)
    tracing.configure(settings.tracing, deployment)


class StoreCalls(ThreadCalls):
    """The store (IndexWorker) in this process, each call in a worker thread, with the store's
    step timings and the points gauge."""

    _STEPS = {"add": "store", "merge": "store", "search": "search"}

    def __getattr__(self, name: str):
        call, step = super().__getattr__(name), self._STEPS.get(name)
        if step is None:
            return call

        async def timed(*args, **kwargs):
            with metrics.step(step):
                started = time.time_ns()
                result = await call(*args, **kwargs)
                if name == "search":
                    metrics.retrieval_stages(result.stages, started)
                return result

        return timed

    async def collections(self) -> list[tuple[str, CollectionSchema, int]]:
        found = await asyncio.to_thread(self._target.collections)
        for name, _schema, count in found:
            metrics.COLLECTION_POINTS.labels(name).set(count)
        return found

    def close(self) -> None:
        self._target.close()


def _trailers(status, rid: str, label: str = "") -> tuple:
    """The status's details and the request ids (a tuple: grpc.aio's abort takes no list)."""
    return tuple(status.trailing_metadata) + (_ids(rid, label) if rid else ())


def _set_status(grpc_context, exc: BaseException, rid: str = "", label: str = "") -> None:
    status = to_status(exc)
    grpc_context.set_code(status.code)
    grpc_context.set_details(status.details)
    grpc_context.set_trailing_metadata(_trailers(status, rid, label))


def _split(results: list, sizes: list[int]) -> list[list]:
    out, start = [], 0
    for size in sizes:
        out.append(results[start : start + size])
        start += size
    return out
