"""Ray Serve deployments: gRPC ingress, batched CLIP encoder, and the store owner.

The ingress implements every RPC of `loupe.v1` plus `grpc.health.v1.Health/Check`; the
Serve proxy routes by method name, so method names here are the RPC names.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time

import grpc
from grpc_health.v1 import health_pb2
from ray import serve

from encoders.clip.encoder import TextEmbedding
from indexing.query import Found, SearchQuery
from indexing.types import CollectionSchema
from protos.loupe.v1 import admin_pb2, common_pb2, feedback_pb2, index_pb2, qa_pb2, search_pb2
from services.config import LoupeSettings
from services.events.feedback import FeedbackStore, ShownWriter
from services.events.store import EventStore
from services.gateway.gate import Gateway, collection_of
from services.gateway.limits import RateLimiter, check_quota
from services.gateway.meter import AUDITED, UNAUTHENTICATED, Meter, audit_of, usage_of
from services.gateway.redact import redact_request, redact_response, sees_personal_data
from services.rpc import admin, feedback
from services.rpc.api import LoupeApi
from services.rpc.errors import to_status
from services.serve import calllog, metrics, requests, tracing
from services.serve.admission import Admission
from services.serve.workers import EncoderWorker, HandleCalls, IndexWorker, TranscriberWorker

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
        batch, wait = settings.encoder.batch_size, settings.encoder.batch_wait_timeout_s
        for method in (self._images, self._texts):
            method.set_max_batch_size(batch)
            method.set_batch_wait_timeout_s(wait)

    def info(self):
        return self.worker.info()

    async def embed_transcript(self, segments, overlap_tokens: int):
        return await asyncio.to_thread(self.worker.embed_transcript, segments, overlap_tokens)

    async def encode_images(self, blobs: list[bytes]) -> list:
        with tracing.span("decode_encode_image", **{"loupe.items": len(blobs)}):
            return await self._images(blobs)

    async def encode_texts(self, texts: list[str]) -> TextEmbedding:
        with tracing.span("encode_text", **{"loupe.items": len(texts)}):
            return await self._texts(texts)

    # Requests carry lists; a batch is a list of those lists, run as one forward pass.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _images(self, requests: list[list[bytes]]) -> list[list]:
        flat = [blob for blobs in requests for blob in blobs]
        metrics.BATCH_SIZE.labels("image").observe(len(flat))
        with metrics.step("decode_encode_image", traced=False):
            results = await asyncio.to_thread(self.worker.encode_images, flat)
        return _split(results, [len(r) for r in requests])

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


@serve.deployment(name="Index")
class IndexDeployment:
    """The single owner of the embedded store (keep num_replicas at 1 for Qdrant Edge).

    Each method is one IndexWorker call in a worker thread: `indexing.Index` serialises writes
    itself, reads run in parallel.
    """

    def __init__(self, settings: LoupeSettings) -> None:
        _observe(settings, "Index")
        self.worker = IndexWorker(settings)

    async def ping(self) -> str:
        return await asyncio.to_thread(self.worker.ping)

    async def add(self, name: str, schema: CollectionSchema, items: list) -> list[tuple[str, bool]]:
        with metrics.step("store"):
            return await asyncio.to_thread(self.worker.add, name, schema, items)

    async def add_recording(self, name: str, schema: CollectionSchema, recording, segments: list) -> tuple[str, bool]:
        return await asyncio.to_thread(self.worker.add_recording, name, schema, recording, segments)

    async def stored_content(self, name: str, schema: CollectionSchema, keyed: list) -> dict[str, dict]:
        return await asyncio.to_thread(self.worker.stored_content, name, schema, keyed)

    async def merge(self, name: str, updates: list) -> list[bool]:
        with metrics.step("store"):
            return await asyncio.to_thread(self.worker.merge, name, updates)

    async def write_token(self, name: str) -> str:
        return await asyncio.to_thread(self.worker.write_token, name)

    async def check_model(self, name: str, schema: CollectionSchema) -> None:
        return await asyncio.to_thread(self.worker.check_model, name, schema)

    async def search(self, schema: CollectionSchema, query: SearchQuery) -> Found:
        with metrics.step("search"):
            return await asyncio.to_thread(self.worker.search, schema, query)

    async def calibration_pool(self, name: str, limit: int) -> list[dict]:
        return await asyncio.to_thread(self.worker.calibration_pool, name, limit)

    async def calibrate(
        self, name: str, schema: CollectionSchema, probes: list, pool: list[dict], floor: float
    ) -> dict:
        return await asyncio.to_thread(self.worker.calibrate, name, schema, probes, pool, floor)

    async def calibration_notes(self, schema: CollectionSchema) -> dict[str, str]:
        return await asyncio.to_thread(self.worker.calibration_notes, schema)

    async def get(self, name: str, public_id: str) -> dict:
        return await asyncio.to_thread(self.worker.get, name, public_id)

    async def delete_ids(self, name: str, ids: list[str]) -> int:
        return await asyncio.to_thread(self.worker.delete_ids, name, ids)

    async def delete_where(self, name: str, conditions: tuple) -> int:
        return await asyncio.to_thread(self.worker.delete_where, name, conditions)

    async def count(self, name: str, conditions: tuple, modalities: tuple) -> int:
        return await asyncio.to_thread(self.worker.count, name, conditions, modalities)

    async def collections(self) -> list[tuple[str, CollectionSchema, int]]:
        found = await asyncio.to_thread(self.worker.collections)
        for name, _schema, count in found:
            metrics.COLLECTION_POINTS.labels(name).set(count)
        return found


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
    """VLM + OCR + guardrails; retrieves context through the Encoder and Index deployments."""

    def __init__(self, settings: LoupeSettings, encoder, index) -> None:
        _observe(settings, "Answerer")
        from services.serve.ask import AnswerWorker

        self.worker = AnswerWorker(settings, HandleCalls(encoder), HandleCalls(index))

    def model_id(self) -> str:
        return self.worker.model_id

    def identity(self) -> dict:
        return self.worker.identity()

    async def ask(self, question: str, images: list[bytes], k: int, retrieval: dict, reveal_retrieved: bool = False):
        return await self.worker.ask(question, images, k, retrieval, reveal_retrieved)


@serve.deployment(name="Ingress")
class Ingress:
    def __init__(self, settings: LoupeSettings, encoder, index, transcriber=None, answerer=None) -> None:
        _observe(settings, "Ingress")
        self.settings = settings
        self._transcriber = transcriber
        self.api = LoupeApi(
            settings,
            HandleCalls(encoder),
            HandleCalls(index),
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
        self.privacy = settings.privacy.policy()
        log.info("%s", self.gateway.describe())

    async def _run(self, call, request, grpc_context, empty, rpc: str, *, with_client: bool = False):
        """One unary RPC: the gateway's checks, admission, the call, then usage and audit."""
        client, result, code, started = None, None, "OK", time.perf_counter()
        metadata, rid = _begin(grpc_context)
        try:
            client = self.gateway.authenticate(metadata)
            self._allow(client, rpc, request)  # a refusal is counted against this client
            redact_request(self.privacy, client, rpc, request)
            with tracing.span(rpc, **{"rpc.system": "grpc", "rpc.method": rpc, "loupe.client": client.id}):
                async with self.admission.enter(rpc):
                    result = await (call(request, client) if with_client else call(request))
                grpc_context.set_trailing_metadata([(requests.HEADER, rid)])
                return requests.stamp(redact_response(self.privacy, client, rpc, request, result), rid)
        except Exception as exc:  # every error leaves through the one table
            code = to_status(exc).code.name
            _set_status(grpc_context, self.gateway.shown(client, exc) if client else exc, rid)
            return empty
        finally:
            self._done(rpc, client, request, result, code, started)
            await self._account(client, rpc, request, result, code, rid)

    @staticmethod
    def _done(rpc: str, client, request, result, code: str, started: float) -> None:
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

    def _allow(self, client, rpc: str, request) -> None:
        """The gateway's checks beyond the key: rights, collection, rate limits, quotas."""
        self.gateway.authorize(client, rpc, request)
        self.limiter.check(client, rpc)
        check_quota(client, rpc, lambda: self.meter.used_today(client.id), dt.datetime.now(dt.UTC))

    def __del__(self) -> None:
        """Serve calls this when it stops the replica: write the last second of usage and shown records."""
        for writer in (getattr(self, "meter", None), getattr(self, "shown", None)):
            if writer is not None:
                writer.close()

    async def _account(self, client, rpc: str, request, result, code: str, rid: str) -> None:
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
        self.shown.add(functools.partial(feedback.shown_of, rpc, client.id, rid, request, result, at))

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
        client, code, info, started = None, "OK", None, time.perf_counter()
        metadata, rid = _begin(grpc_context)
        grpc_context.set_trailing_metadata([(requests.HEADER, rid)])
        try:
            client = self.gateway.authenticate(metadata)
            self._allow(client, "Transcribe", request)
            async with self.admission.enter("Transcribe"):
                async for message in self.api.transcribe(request, self._stream_transcript):
                    if info is None and message.WhichOneof("kind") == "info":
                        info = message.info  # its duration counts as audio seconds
                    yield message
        except Exception as exc:  # every error leaves through the one table
            code = to_status(exc).code.name
            _set_status(grpc_context, exc, rid)
            # A stream only ends with the code set above when the handler raises (Serve then
            # sends that code and reason; the trace stays in the server log).
            raise StreamFailed(to_status(exc).details) from exc
        finally:
            self._done("Transcribe", client, request, info, code, started)
            await self._account(client, "Transcribe", request, info, code, rid)

    def _stream_transcript(self, data: bytes, language, word_timestamps: bool):
        return self._transcriber.options(stream=True).stream.remote(data, language, word_timestamps)

    async def Ask(self, request, grpc_context):
        return await self._run(
            lambda req, client: self.api.ask(req, reveal_retrieved=sees_personal_data(client)),
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
            lambda req: feedback.list_feedback(self.shown, req),
            request,
            grpc_context,
            feedback_pb2.ListFeedbackResponse(),
            "ListFeedback",
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


def _begin(grpc_context) -> tuple[dict[str, str], str]:
    """A call's metadata and request id, the id made the current Serve request's."""
    metadata = dict(grpc_context.invocation_metadata())
    rid = requests.request_id(metadata)
    requests.carry(rid)
    return metadata, rid


def _observe(settings: LoupeSettings, deployment: str) -> None:
    """Logs and traces of this replica, as the settings say."""
    calllog.configure(settings.logs)
    tracing.configure(settings.tracing, deployment)


class StreamFailed(Exception):
    """Ends a server stream after its status code has been set on the context."""


def _set_status(grpc_context, exc: BaseException, rid: str = "") -> None:
    status = to_status(exc)
    grpc_context.set_code(status.code)
    grpc_context.set_details(status.details)
    grpc_context.set_trailing_metadata(list(status.trailing_metadata) + ([(requests.HEADER, rid)] if rid else []))


def _split(results: list, sizes: list[int]) -> list[list]:
    out, start = [], 0
    for size in sizes:
        out.append(results[start : start + size])
        start += size
    return out
