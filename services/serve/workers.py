"""Plain-Python workers behind the Serve deployments, usable without Ray (unit tests, CLI).

`EncoderWorker` turns untrusted bytes and texts into vectors; the index side is
`indexing.index.Index` itself. The `*Calls` adapters give both the same async face, so
`services.rpc.api.LoupeApi` runs unchanged over Serve handles or in-process objects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from encoders.clip.encoder import ClipEncoder, TextEmbedding
from encoders.common.errors import InvalidInput, ModelMismatch, NotFound
from encoders.image.decode import decode_image
from encoders.image.thumbnail import thumbnail
from encoders.text.chunking import EmbeddedTranscript, TimedText, embed_transcript
from encoders.whisper.transcribe import TranscriptInfo
from indexing.calibration import Calibrations, Priors
from indexing.fitting import fit
from indexing.ingest import VECTOR_NAME, TextReader, store_recording
from indexing.probes import collect, sample_payloads
from indexing.query import Found, SearchQuery
from indexing.rerank import Reranker, make_reranker
from indexing.retriever import Retriever, SecondStage
from indexing.store.optimizer import Optimizer
from indexing.types import CollectionSchema
from services.cache import open_cache
from services.config import LoupeSettings


@dataclass(frozen=True)
class EncoderInfo:
    model_id: str
    model_version: str
    dim: int
    context_length: int
    profile: str

    def schema(self) -> CollectionSchema:
        return CollectionSchema(
            vector_name=VECTOR_NAME, dim=self.dim, model_id=self.model_id, model_version=self.model_version
        )


@dataclass(frozen=True)
class EncodedImage:
    vector: np.ndarray
    width: int
    height: int
    # Text read by OCR ("" when OCR did not run or found nothing).
    text: str = ""
    # A small JPEG preview (encoders.image.thumbnail).
    thumbnail: bytes = b""


@dataclass(frozen=True)
class PreparedImage:
    """A decoded, checked image ready for the forward pass."""

    pixels: np.ndarray  # (3, H, W) float32, the model's preprocessing
    width: int
    height: int
    text: str
    thumbnail: bytes


class EncoderWorker:
    """Decodes and validates images, then embeds the valid ones in one batch."""

    def __init__(self, settings: LoupeSettings) -> None:
        self.clip = ClipEncoder(settings.clip_options()).load()
        self.image_limits = settings.limits.image_limits()
        self.text_reader = TextReader(settings.ocr.mode, settings.ocr.engine, settings.ocr.threads).load()
        self.ocr_cache = open_cache(settings, "ocr")
        self._info = EncoderInfo(
            self.clip.model_id, self.clip.model_version, self.clip.dim, self.clip.context_length, settings.profile
        )

    def info(self) -> EncoderInfo:
        return self._info

    def encode_images(self, blobs: list[bytes]) -> list[EncodedImage | InvalidInput]:
        """One result per blob, in order: a vector, or the reason the blob was rejected."""
        prepared = self.prepare_images(blobs)
        return self.finish_images(prepared, self.encode_pixels(self.pixels_of(prepared)))

    def prepare_images(self, blobs: list[bytes]) -> list[PreparedImage | InvalidInput]:
        """Everything but the forward pass, per blob: decode and check, the model's own
        preprocessing, OCR and the thumbnail (the service runs this next to another call's
        forward pass)."""
        preprocess = self.clip.preprocessor()
        out: list[PreparedImage | InvalidInput] = []
        for blob in blobs:
            try:
                decoded = decode_image(blob, self.image_limits)
            except InvalidInput as exc:
                out.append(exc)
                continue
            image = decoded.image
            pixels = preprocess(image).numpy()
            out.append(PreparedImage(pixels, decoded.width, decoded.height, self._read(blob, image), thumbnail(image)))
        return out

    def encode_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        """Preprocessed images -> (n, dim) vectors, one forward pass per `batch_size`."""
        if not pixels:
            return np.zeros((0, self._info.dim), np.float32)
        return self.clip.encode_pixels(np.stack(pixels))

    @staticmethod
    def pixels_of(prepared: list) -> list[np.ndarray]:
        """The forward pass's input: the pixels of `prepare_images`'s good results, in order."""
        return [p.pixels for p in prepared if isinstance(p, PreparedImage)]

    @staticmethod
    def finish_images(prepared: list, vectors: np.ndarray) -> list[EncodedImage | InvalidInput]:
        """`prepare_images`'s results with the vectors of the good ones, in order."""
        good = iter(vectors)
        return [
            EncodedImage(next(good), p.width, p.height, p.text, p.thumbnail) if isinstance(p, PreparedImage) else p
            for p in prepared
        ]

    def _read(self, blob: bytes, image) -> str:
        """The image's OCR text, cached by its bytes and the reader's identity."""
        parts = ("ocr", blob, self.text_reader.identity)
        text = self.ocr_cache.get(*parts)
        if text is None:
            text = self.text_reader.read(image)
            self.ocr_cache.put(text, *parts)
        return text

    def encode_texts(self, texts: list[str]) -> TextEmbedding:
        return self.clip.encode_texts(texts)

    def embed_transcript(self, segments: list[TimedText], overlap_tokens: int) -> EmbeddedTranscript:
        """Chunks that fit the CLIP context, their vectors, and one vector for the recording."""
        return embed_transcript(self.clip, segments, overlap_tokens)


@dataclass(frozen=True)
class Transcript:
    info: TranscriptInfo
    segments: list
    sha256: str


class TranscriberWorker:
    """Decodes and validates audio, then runs Whisper on it."""

    def __init__(self, settings: LoupeSettings) -> None:
        from encoders.whisper.transcribe import create_transcriber

        self.options = settings.transcribe_options()
        self.transcriber = create_transcriber(
            settings.transcriber.backend, settings.transcriber.spec, self.options
        ).load()
        self.limits = settings.limits.audio_limits()

    def model_id(self) -> str:
        return self.transcriber.model_id

    def stream(self, data: bytes, language: str | None, word_timestamps: bool | None = None):
        """(info, segment iterator): segments are decoded as the caller iterates."""
        from dataclasses import replace

        from encoders.audio.decode import decode_audio

        audio = decode_audio(data, self.limits)
        options = replace(
            self.options,
            language=language or None,
            word_timestamps=self.options.word_timestamps if word_timestamps is None else word_timestamps,
        )
        info, segments = self.transcriber.transcribe(audio.samples, options)
        return info, segments, audio.sha256

    def transcribe(self, data: bytes, language: str | None) -> Transcript:
        info, segments, sha256 = self.stream(data, language)
        return Transcript(info, list(segments), sha256)


class ThreadCalls:
    """Async face over a local object: each call runs in a worker thread."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str):
        method = getattr(self._target, name)

        async def call(*args, **kwargs):
            return await asyncio.to_thread(method, *args, **kwargs)

        return call


class HandleCalls:
    """Async face over a Serve deployment handle: `await calls.x(...)` is `handle.x.remote(...)`.

    Calls go by value over Serve's gRPC transport between replicas rather than as Ray actor
    calls through the object store: 1.4 ms instead of 3.1 ms per hop, sequential and warm on
    2 cores (benchmarks/bench_hops.py); arguments and results are pickled either way."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle.options(_by_reference=False)

    def __getattr__(self, name: str):
        method = getattr(self._handle, name)

        async def call(*args, **kwargs):
            from ray.serve.exceptions import BackPressureError

            try:
                return await method.remote(*args, **kwargs)
            except BackPressureError as exc:  # the deployment's queue is full
                from encoders.common.errors import Overloaded

                raise Overloaded(f"the service is busy ({exc}); retry shortly", retry_after_s=0.5) from None

        return call


class IndexWorker:
    """Owns the store. Each method is one round trip from the ingress: check, resolve, act."""

    def __init__(self, settings: LoupeSettings) -> None:
        from indexing import open_store
        from indexing.index import Index

        self.backend = "qdrant-client" if settings.qdrant_url else "qdrant-edge"
        self.index = Index(
            open_store(data_dir=settings.data_dir, url=settings.qdrant_url, api_key=settings.qdrant_api_key),
            privacy=settings.privacy_policy(),
        )
        self.optimizer = Optimizer(self.index, settings.optimize_after_points)
        self.calibrations = Calibrations(self.index)
        self.priors = Priors(settings.calibration.prior_files)
        self.retriever = Retriever(self.index, self.calibrations, self.priors)
        self.settings = settings
        self._rerankers: dict[str, Reranker] = {}

    def ping(self) -> str:
        self.index.collections()
        return self.backend

    def add(self, name: str, schema: CollectionSchema, items: list) -> list[tuple[str, bool]]:
        self.index.ensure_collection(name, schema)
        stored = self.index.upsert(name, items, schema)
        self.optimizer.wrote(name, sum(created for _, created in stored))
        return stored

    def stored_content(self, name: str, schema: CollectionSchema, keyed: list[tuple[str, str]]) -> dict[str, dict]:
        """Key -> stored payload, for the (key, sha256) pairs already stored with that content
        and a vector of `schema`'s model version: what need not be decoded or encoded again."""
        if self.index.store.get_schema(name) is None:
            return {}
        found = self.index.encoded(name, list(dict.fromkeys(k for k, _ in keyed)), schema)
        return {k: found[k] for k, sha in keyed if k in found and found[k].get("sha256") == sha}

    def merge(self, name: str, updates: list[tuple[str, str | None, dict]]) -> list[bool]:
        """Sources and metadata merged into stored items, vectors untouched."""
        return self.index.merge_payloads(name, updates)

    def write_token(self, name: str) -> str:
        return self.index.write_token(name)

    def check_model(self, name: str, schema: CollectionSchema) -> None:
        """ModelMismatch if `name` exists and none of its vectors was built by this model (a
        missing collection is fine)."""
        if self.index.store.get_schema(name) is not None:
            self.index.require_collection(name, schema)

    def add_recording(self, name: str, schema: CollectionSchema, recording, segments: list) -> tuple[str, bool]:
        """Store a recording and its segment chunks, replacing segments of an earlier version."""
        self.index.ensure_collection(name, schema)
        public_id, created = store_recording(self.index, name, schema, recording, segments)
        self.optimizer.wrote(name, len(segments) + created)
        return public_id, created

    def search(self, schema: CollectionSchema, query: SearchQuery) -> Found:
        """The page of hits for `query`, in this service's model's vector (indexing.retriever)."""
        return self.retriever.search(schema, query, self._second_stage(query))

    def _second_stage(self, query: SearchQuery) -> SecondStage:
        """The reranker the query names (or its collection's default) and MMR, if asked."""
        r = self.settings.rerank
        name = query.rerank or r.collections.get(query.collection, "none")
        if name == "none":
            return SecondStage(text=query.text, mmr_lambda=query.mmr_lambda, mmr_candidates=r.mmr_candidates)
        if name not in r.rerankers:
            known = ", ".join(sorted(r.rerankers)) or "none configured (settings rerank.rerankers)"
            raise InvalidInput(f"unknown reranker {name!r}; rerankers: {known}", field="options.rerank")
        if name not in self._rerankers:
            self._rerankers[name] = make_reranker(r.rerankers[name].config())
        return SecondStage(
            reranker=self._rerankers[name],
            config=r.rerankers[name].config(query.rerank_candidates),
            label=name,
            text=query.text,
            mmr_lambda=query.mmr_lambda,
            mmr_candidates=r.mmr_candidates,
        )

    def calibration_pool(self, name: str, limit: int) -> list[dict]:
        """Payloads of up to `limit` items spread over the collection: what calibration probes
        are made from."""
        self._require_exists(name)
        return sample_payloads(self.index, name, limit)

    def calibrate(self, name: str, schema: CollectionSchema, probes: list, pool: list[dict], floor: float) -> dict:
        """Fit, store and return (as JSON) the calibration of `name` for `schema`'s model."""
        resolved = self.index.schema_for(name, schema)
        evidence = collect(self.index, name, resolved.vector_name, probes, pool)
        prior = self.priors.prior(resolved.model_id, resolved.model_version)
        cal = fit(evidence, probes, resolved, self.index.store.count(name), floor, prior)
        if not cal.maps:
            raise InvalidInput(
                f"collection {name!r}: too few examples to calibrate ({cal.report['examples']}); "
                "index more items with captions or text, or give labelled cases",
                field="collection",
            )
        self.calibrations.store(name, cal)
        return cal.to_json()

    def calibration_notes(self, schema: CollectionSchema) -> dict[str, str]:
        """Collection -> one line on its calibration for `schema`'s model (status)."""
        notes = {}
        for name in self.index.store.list_collections():
            try:
                resolved = self.index.schema_for(name, schema)
            except (ModelMismatch, NotFound):  # another model's, or deleted meanwhile
                continue
            cal, why = self.calibrations.get(name, resolved)
            notes[name] = cal.summary() if cal is not None else why
        return notes

    def vector_of(self, name: str, schema: CollectionSchema, public_id: str) -> tuple[dict, np.ndarray]:
        return self.index.get_vector(name, public_id, self.index.schema_for(name, schema).vector_name)

    def get(self, name: str, public_id: str) -> dict:
        self._require_exists(name)
        return self.index.get(name, public_id)

    def delete_ids(self, name: str, ids: list[str]) -> int:
        self._require_exists(name)
        return self.index.delete_ids(name, ids)

    def delete_where(self, name: str, conditions: tuple) -> int:
        self._require_exists(name)
        return self.index.delete_where(name, self.index.resolve_filter(name, conditions))

    def count(self, name: str, conditions: tuple, modalities: tuple) -> int:
        self._require_exists(name)
        flt = self.index.resolve_filter(name, conditions) if conditions else None
        return self.index.count(name, flt, modalities)

    def collections(self) -> list[tuple[str, CollectionSchema, int]]:
        return self.index.collections()

    def close(self) -> None:
        self.optimizer.stop()
        self.index.store.close()

    def _require_exists(self, name: str) -> None:
        if self.index.store.get_schema(name) is None:
            names = self.index.store.list_collections()
            raise NotFound(f"collection {name!r} does not exist", field="collection", existing=tuple(names))
