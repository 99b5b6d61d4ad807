"""A small typed Python client for Loupe's gRPC API (the CLI uses it too).

    from services.client.sdk import LoupeClient
    with LoupeClient("localhost:9000") as loupe:
        loupe.index_images([ImageInput(open("cat.jpg", "rb").read(), source="cat.jpg")])
        for hit in loupe.search_text("a cat on a sofa", limit=5, where={"colour": "red"}):
            print(hit.score, hit.id, hit.sources)

`where` filters are dicts: {"field": value} is equality, {"field": [a, b]} set membership,
{"field": {"gte": 1, "lt": 5}} a numeric range; all must hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.loupe.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audio_pb2,
    audio_pb2_grpc,
    common_pb2,
    feedback_pb2,
    feedback_pb2_grpc,
    index_pb2,
    index_pb2_grpc,
    qa_pb2,
    qa_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from services.rpc.errors import field_violations, retry_delay_s

MODALITIES = {
    "image": common_pb2.MODALITY_IMAGE,
    "text": common_pb2.MODALITY_TEXT,
    "audio_segment": common_pb2.MODALITY_AUDIO_SEGMENT,
    "audio": common_pb2.MODALITY_AUDIO,
}
MODES = {
    "dense": search_pb2.SEARCH_MODE_DENSE,
    "keyword": search_pb2.SEARCH_MODE_KEYWORD,
    "hybrid": search_pb2.SEARCH_MODE_HYBRID,
}
_MODALITY_NAMES = {v: k for k, v in MODALITIES.items()}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class LoupeCallError(Exception):
    """A failed call: the status code name, the server's reason and any bad fields."""

    def __init__(self, error: grpc.RpcError) -> None:
        self.code: grpc.StatusCode = error.code()
        self.reason: str = error.details() or ""
        self.violations: list[tuple[str, str]] = field_violations(error)
        # When to try again (RetryInfo), for RESOURCE_EXHAUSTED: overload, a rate limit, a quota.
        self.retry_after_s: float | None = retry_delay_s(error)
        # The call's id in the service's logs (trailing metadata x-request-id).
        self.request_id: str = dict(getattr(error, "trailing_metadata", lambda: ())() or ()).get("x-request-id", "")
        super().__init__(f"{self.code.name}: {self.reason}")


def tls_credentials(ca_file: str | None, cert_file: str | None, key_file: str | None) -> grpc.ChannelCredentials:
    """Channel credentials from PEM files; a missing or unreadable file is an error that names it."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs both cert_file and key_file")

    def read(path: str | None, what: str) -> bytes | None:
        if not path:
            return None
        try:
            return Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the {what} {path}: {exc.strerror}") from None

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file, "CA file"),
        private_key=read(key_file, "client key"),
        certificate_chain=read(cert_file, "client certificate"),
    )


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    id: str = ""
    source: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextInput:
    text: str
    id: str = ""
    source: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    id: str
    modality: str
    sources: list[str]
    metadata: dict[str, Any]
    text: str
    model_id: str
    width: int = 0
    height: int = 0
    # Audio: the recording a segment belongs to, its span, language and the recording's length.
    parent_id: str = ""
    start_s: float = 0.0
    end_s: float = 0.0
    language: str = ""
    duration_s: float = 0.0
    # A small JPEG preview, when asked for (with_thumbnails) and the caller may see it.
    thumbnail: bytes = b""
    # The content digest (sha256 of the bytes; keyed for texts holding personal data).
    sha256: str = ""

    @classmethod
    def from_proto(cls, m: common_pb2.Item) -> Item:
        return cls(
            id=m.id,
            modality=_MODALITY_NAMES.get(m.modality, "unspecified"),
            sources=list(m.sources),
            metadata=MessageToDict(m.metadata),
            text=m.text,
            model_id=m.model_id,
            width=m.width,
            height=m.height,
            parent_id=m.parent_id,
            start_s=m.start_s,
            end_s=m.end_s,
            language=m.language,
            duration_s=m.duration_s,
            thumbnail=m.thumbnail,
            sha256=m.sha256,
        )


@dataclass(frozen=True)
class Hit:
    item: Item
    score: float
    # Probability (0..1) that the hit is relevant; None where the collection is not calibrated.
    confidence: float | None = None
    # The reranker's score (its own scale); None where the hit was not reranked.
    rerank_score: float | None = None

    @property
    def id(self) -> str:
        return self.item.id


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    model_id: str
    next_offset: int
    query_truncated: bool = False
    # The call's id in the service's logs (and for feedback).
    request_id: str = ""
    # Calibrated collection and nothing reached the confidence floor: nothing matches.
    no_match: bool = False
    calibrated: bool = False
    # Why the hits carry no confidence (when not calibrated).
    calibration: str = ""
    # The rerank stage ("reranked by ...", "skipped: ...", "failed: ..."; "" when none ran),
    # the diversity stage, and milliseconds per retriever stage.
    rerank: str = ""
    diversity: str = ""
    stage_ms: dict[str, float] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)


class LoupeClient:
    def __init__(
        self,
        target: str = "localhost:9000",
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        application: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_name: str | None = None,
    ) -> None:
        """`tls`: speak TLS (to the TLS proxy in front of the service, README "TLS"), trusting
        `ca_file` (default: the system's roots); `cert_file` + `key_file`: a client certificate
        for a proxy that asks for one; `server_name`: the name to check the certificate against
        when it differs from the target's host."""
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls or ca_file or cert_file:
            self.channel = grpc.secure_channel(target, tls_credentials(ca_file, cert_file, key_file), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.timeout_s = timeout_s
        self._metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        if application:  # picks the Serve app when several are deployed
            self._metadata.append(("application", application))
        self._index = index_pb2_grpc.IndexServiceStub(self.channel)
        self._search = search_pb2_grpc.SearchServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._audio = audio_pb2_grpc.AudioServiceStub(self.channel)
        self._qa = qa_pb2_grpc.QAServiceStub(self.channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self._feedback = feedback_pb2_grpc.FeedbackServiceStub(self.channel)

    def __enter__(self) -> LoupeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request, timeout_s: float | None = None):
        try:
            return method(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise LoupeCallError(error) from None

    # -- indexing ---------------------------------------------------------------------------
    def index_images(self, items: Iterable[ImageInput], *, collection: str = "") -> list[tuple[str, bool]]:
        request = index_pb2.IndexImagesRequest(collection=collection)
        for it in items:
            msg = request.items.add(data=it.data, id=it.id, source=it.source)
            msg.metadata.update(dict(it.metadata))
        return [(r.id, r.created) for r in self._call(self._index.IndexImages, request).items]

    def index_texts(self, items: Iterable[TextInput], *, collection: str = "") -> list[tuple[str, bool]]:
        request = index_pb2.IndexTextsRequest(collection=collection)
        for it in items:
            msg = request.items.add(text=it.text, id=it.id, source=it.source)
            msg.metadata.update(dict(it.metadata))
        return [(r.id, r.created) for r in self._call(self._index.IndexTexts, request).items]

    def index_audio(
        self,
        data: bytes,
        *,
        id: str = "",
        source: str = "",
        metadata: Mapping[str, Any] | None = None,
        language: str = "",
        collection: str = "",
    ) -> index_pb2.IndexAudioResponse:
        request = index_pb2.IndexAudioRequest(collection=collection, data=data, id=id, source=source, language=language)
        request.metadata.update(dict(metadata or {}))
        return self._call(self._index.IndexAudio, request)

    def transcribe(self, data: bytes, *, language: str = "", word_timestamps: bool = False):
        """Yields the TranscriptInfo first, then each TranscriptSegment as the server decodes it, then
        the TranscriptControls (what the repetition and hallucination controls removed)."""
        request = audio_pb2.TranscribeRequest(data=data, language=language, word_timestamps=word_timestamps)
        try:
            for message in self._audio.Transcribe(request, timeout=self.timeout_s, metadata=self._metadata):
                yield getattr(message, message.WhichOneof("kind"))
        except grpc.RpcError as error:
            raise LoupeCallError(error) from None

    def get(self, id: str, *, collection: str = "", with_thumbnail: bool = False) -> Item:
        request = index_pb2.GetItemRequest(collection=collection, id=id, with_thumbnail=with_thumbnail)
        return Item.from_proto(self._call(self._index.GetItem, request))

    def delete(self, ids: Iterable[str] = (), *, where: Mapping[str, Any] | None = None, collection: str = "") -> int:
        request = index_pb2.DeleteRequest(collection=collection)
        if where:
            request.filter.CopyFrom(build_filter(where))
        else:
            request.ids.ids.extend(ids)
        return self._call(self._index.Delete, request).deleted

    def count(
        self, *, where: Mapping[str, Any] | None = None, modalities: Iterable[str] = (), collection: str = ""
    ) -> int:
        request = index_pb2.CountRequest(
            collection=collection, filter=build_filter(where or {}), modalities=[MODALITIES[m] for m in modalities]
        )
        return self._call(self._index.Count, request).count

    def status(self) -> index_pb2.StatusResponse:
        return self._call(self._index.GetStatus, index_pb2.GetStatusRequest())

    def calibrate(
        self,
        *,
        collection: str = "",
        cases: Iterable[tuple[str | bytes, Iterable[str]]] = (),
        sample_items: int | None = None,
    ) -> index_pb2.CalibrateResponse:
        """Fit the collection's confidence calibration. `cases`: (query text or image bytes,
        relevant ids) pairs; an empty id list marks a query nothing should match."""
        request = calibrate_request(collection, cases, sample_items)
        return self._call(self._index.Calibrate, request, timeout_s=max(self.timeout_s, 600.0))

    def usage(self, *, client: str = "", since: str = "") -> list[admin_pb2.UsageRow]:
        """Usage rows per day, client, RPC and status code (needs the admin right)."""
        return list(self._call(self._admin.GetUsage, admin_pb2.UsageRequest(client=client, since=since)).rows)

    def audit(self, *, client: str = "", since: str = "", limit: int = 0) -> list[admin_pb2.AuditRecord]:
        """Audit records of writes and deletes, oldest first (needs the admin right)."""
        request = admin_pb2.AuditRequest(client=client, since=since, limit=limit)
        return list(self._call(self._admin.GetAudit, request).records)

    # -- feedback ---------------------------------------------------------------------------
    def feedback(
        self,
        request_id: str,
        *,
        vote: str | None = None,
        stars: int = 0,
        comment: str = "",
        used_ids: Iterable[str] = (),
        corrected_answer: str = "",
    ) -> feedback_pb2.FeedbackResponse:
        """Rate a search or an answer by its response's `request_id`: `vote` "up" / "down", or
        `stars` 1..5; `used_ids`: the hits (or cited items) you used; `corrected_answer`: Ask only."""
        if vote not in (None, "up", "down"):
            raise ValueError(f"vote must be 'up' or 'down', not {vote!r}")
        request = feedback_pb2.FeedbackRequest(
            request_id=request_id,
            vote={None: feedback_pb2.VOTE_UNSPECIFIED, "up": feedback_pb2.VOTE_UP, "down": feedback_pb2.VOTE_DOWN}[
                vote
            ],
            stars=stars,
            comment=comment,
            used_ids=list(used_ids),
            corrected_answer=corrected_answer,
        )
        return self._call(self._feedback.Submit, request)

    def list_feedback(
        self, view: str = "review", *, since: str = "", limit: int = 0, with_uploads: bool = False
    ) -> list[feedback_pb2.FeedbackRecord]:
        """view "review": what needs a human (abstained, blocked, down-voted, not yet reviewed);
        "rated": every rated call and every abstention. Newest first; needs the admin right."""
        views = {"review": feedback_pb2.FEEDBACK_VIEW_REVIEW, "rated": feedback_pb2.FEEDBACK_VIEW_RATED}
        if view not in views:
            raise ValueError(f"view must be one of {', '.join(views)}, not {view!r}")
        request = feedback_pb2.ListFeedbackRequest(
            view=views[view], since=since, limit=limit, with_uploads=with_uploads
        )
        return list(self._call(self._feedback.ListFeedback, request).records)

    def mark_reviewed(self, request_id: str, note: str = "") -> str:
        """Take a call off the review queue; returns when (needs the admin right)."""
        request = feedback_pb2.MarkReviewedRequest(request_id=request_id, note=note)
        return self._call(self._feedback.MarkReviewed, request).reviewed_at

    def health(self, service: str = "") -> str:
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    # -- ask --------------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        images: Iterable[bytes] = (),
        *,
        k: int = 0,
        collection: str = "",
        where: Mapping[str, Any] | None = None,
        mode: str | None = None,
    ) -> qa_pb2.AskResponse:
        """Ask about uploaded images and/or the `k` best indexed images. The response carries
        the verdict (answered / abstained / blocked), citations and every guard's result."""
        retrieval = qa_pb2.Retrieval(k=k, collection=collection, filter=build_filter(where or {}))
        if mode is not None:
            retrieval.mode = MODES[mode]
        return self._call(self._qa.Ask, qa_pb2.AskRequest(question=question, images=list(images), retrieval=retrieval))

    # -- search -----------------------------------------------------------------------------
    def search_text(self, query: str, **options) -> SearchResult:
        request = search_pb2.SearchTextRequest(query=query, options=search_options(**options))
        return _result(self._call(self._search.SearchText, request))

    def search_image(self, image: bytes | None = None, *, id: str | None = None, **options) -> SearchResult:
        request = search_pb2.SearchImageRequest(options=search_options(**options))
        if id is not None:
            request.id = id
        else:
            request.image = image or b""
        return _result(self._call(self._search.SearchImage, request))


def search_options(
    *,
    limit: int | None = None,
    offset: int = 0,
    modalities: Iterable[str] = (),
    where: Mapping[str, Any] | None = None,
    score_threshold: float | None = None,
    collection: str = "",
    mode: str = "dense",
    min_confidence: float | None = None,
    exact: bool = False,
    with_thumbnails: bool = False,
    rerank: str | None = None,
    rerank_candidates: int | None = None,
    mmr_lambda: float | None = None,
) -> search_pb2.SearchOptions:
    opts = search_pb2.SearchOptions(
        collection=collection,
        offset=offset,
        mode=MODES[mode],
        modalities=[MODALITIES[m] for m in modalities],
        filter=build_filter(where or {}),
    )
    if limit is not None:
        opts.limit = limit
    if score_threshold is not None:
        opts.score_threshold = score_threshold
    if min_confidence is not None:
        opts.min_confidence = min_confidence
    opts.exact = exact
    opts.with_thumbnails = with_thumbnails
    if rerank is not None:
        opts.rerank = rerank
    if rerank_candidates is not None:
        opts.rerank_candidates = rerank_candidates
    if mmr_lambda is not None:
        opts.mmr_lambda = mmr_lambda
    return opts


def calibrate_request(
    collection: str = "", cases: Iterable[tuple] = (), sample_items: int | None = None
) -> index_pb2.CalibrateRequest:
    """`cases`: (query, relevant ids) or (query, relevant ids, not-relevant ids); a query is a
    text or image bytes."""
    request = index_pb2.CalibrateRequest(collection=collection)
    for query, relevant, *rest in cases:
        case = request.cases.add(relevant_ids=list(relevant), not_relevant_ids=list(rest[0] if rest else ()))
        if isinstance(query, bytes):
            case.image = query
        else:
            case.text = query
    if sample_items is not None:
        request.sample_items = sample_items
    return request


def build_filter(where: Mapping[str, Any]) -> common_pb2.Filter:
    flt = common_pb2.Filter()
    for name, value in where.items():
        cond = flt.must.add(field=name)
        if isinstance(value, Mapping):
            for bound, number in value.items():
                setattr(cond.range, bound, number)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                cond.any_of.values.add().CopyFrom(_value(v))
        else:
            cond.equals.CopyFrom(_value(value))
    return flt


def _value(v: Any):
    from google.protobuf import struct_pb2

    out = struct_pb2.Value()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, (int, float)):
        out.number_value = v
    else:
        out.string_value = str(v)
    return out


def _result(response: search_pb2.SearchResponse) -> SearchResult:
    return SearchResult(
        hits=[
            Hit(
                Item.from_proto(h.item),
                h.score,
                h.confidence if h.HasField("confidence") else None,
                h.rerank_score if h.HasField("rerank_score") else None,
            )
            for h in response.hits
        ],
        model_id=response.model_id,
        next_offset=response.next_offset,
        query_truncated=response.query_truncated,
        request_id=response.request_id,
        no_match=response.no_match,
        calibrated=response.calibrated,
        calibration=response.calibration,
        rerank=response.rerank,
        diversity=response.diversity,
        stage_ms=dict(response.stage_ms),
    )
