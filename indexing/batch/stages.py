"""The steps of a batch run, each a function of a batch of rows (Ray Data map_batches).

    read      bytes from the URI, sha256, media kind sniffed from the bytes
    plan      ask the writer what is already stored (skip, merge payload, or encode)
    decode    validate and decode the image, the model's preprocessing, OCR if enabled
    encode    CLIP forward pass on an actor pool (the model loads once per actor)
    write     the writer stores the vectors

A row that fails a step gets status "failed" with the step and a reason, and every later
step passes it through untouched; rows carry their bytes only as far as they are needed.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from encoders.common.errors import InvalidInput, LoupeError
from encoders.image.decode import ImageLimits, decode_image
from encoders.image.thumbnail import thumbnail
from indexing.batch.catalog import media_kind
from indexing.ingest import TextReader

FAILED = "failed"
ROW_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("uri", pa.string()),
        ("meta", pa.string()),
        ("status", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("sha256", pa.string()),
        ("kind", pa.string()),
        ("known", pa.bool_()),
        ("data", pa.binary()),
        ("crop", pa.binary()),
        ("pixels", pa.binary()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("text", pa.string()),
        # A small JPEG preview (encoders.image.thumbnail).
        ("thumbnail", pa.binary()),
        ("vector", pa.binary()),
        ("modality", pa.string()),
        # A recording's items (indexing.recordings.recording_items), pickled.
        ("items", pa.binary()),
        # Wall-clock time the row's batch left the encode step (the run's steady pace).
        ("encoded_at", pa.float64()),
    ]
)
# What reaches the driver: no bytes.
RESULT_COLUMNS = ("row", "uri", "status", "stage", "reason", "sha256", "encoded_at")
_HTTP_TIMEOUT_S = 30


def rows_of(batch: pa.Table) -> list[dict[str, Any]]:
    return batch.to_pylist()


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def pending(row: dict[str, Any]) -> bool:
    return not row.get("status")


def fail(row: dict[str, Any], stage: str, reason: str) -> None:
    row.update(
        status=FAILED,
        stage=stage,
        reason=reason,
        data=None,
        crop=None,
        pixels=None,
        vector=None,
        items=None,
        thumbnail=None,
    )


# -- read --------------------------------------------------------------------------------------


def read_batch(batch: pa.Table, *, max_bytes: int, audio: bool) -> pa.Table:
    rows = rows_of(batch)
    for row in rows:
        if not pending(row):
            continue
        try:
            data = read_uri(row["uri"], max_bytes)
        except (OSError, ValueError) as e:
            fail(row, "read", str(e))
            continue
        kind = media_kind(data)
        if kind is None:
            fail(
                row,
                "read",
                "not an image or audio file (its first bytes match no supported format)"
                if data
                else "the file is empty (0 bytes)",
            )
            continue
        if kind == "audio" and not audio:
            fail(row, "read", "an audio file, and audio indexing is off for this run")
            continue
        row.update(data=data, kind=kind, sha256=hashlib.sha256(data).hexdigest())
    return table(rows)


def read_uri(uri: str, max_bytes: int) -> bytes:
    """Bytes of a local path, file:// or http(s):// URI; ValueError/OSError say why not."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        with urllib.request.urlopen(uri, timeout=_HTTP_TIMEOUT_S) as response:  # noqa: S310 (scheme checked)
            data = response.read(max_bytes + 1)
    elif parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # "C:\\..." has a one-letter scheme
        path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        if os.path.getsize(path) > max_bytes:
            raise ValueError(f"file is {os.path.getsize(path):,} bytes, over the limit of {max_bytes:,}")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    else:
        raise ValueError(f"unsupported URI scheme {parsed.scheme!r}: use a local path, file:// or http(s)://")
    if len(data) > max_bytes:
        raise ValueError(f"over the limit of {max_bytes:,} bytes")
    return data


# -- plan --------------------------------------------------------------------------------------


class Plan:
    """Asks the writer actor (looked up by name) which rows still need encoding."""

    def __init__(self, writer: str) -> None:
        import ray

        self.writer = ray.get_actor(writer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        rows = rows_of(batch)
        todo = [r for r in rows if pending(r)]
        if todo:
            asked = [{"sha256": r["sha256"], "uri": r["uri"], "meta": r["meta"]} for r in todo]
            for row, answer in zip(todo, ray.get(self.writer.plan.remote(asked))):
                row.update(status=answer.get("status", ""), known=answer["known"])
        for row in rows:
            if not pending(row):
                row["data"] = None
        return table(rows)


# -- decode ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeOptions:
    limits: ImageLimits
    # "auto": OCR images that look like screenshots or documents; "always"; "never".
    ocr_mode: str = "auto"
    ocr_engine: str = ""
    # Side of the square the model's transform resizes and crops to, when it is the usual
    # Resize(S, bicubic) + CenterCrop(S) (`square_side`): decoding does that step itself with
    # PIL and sends S x S RGB bytes (4x smaller than tensors, and no torch in this step).
    side: int | None = None
    # Otherwise the whole transform (`ClipEncoder.preprocessor()`), pickled, run here.
    preprocess: bytes | None = None


def square_side(preprocess: Any) -> int | None:
    """S if `preprocess` starts Resize(S, bicubic, no max_size) + CenterCrop(S), else None."""
    steps = list(getattr(preprocess, "transforms", ()))
    if len(steps) < 2 or type(steps[0]).__name__ != "Resize" or type(steps[1]).__name__ != "CenterCrop":
        return None
    resize, crop = steps[0], steps[1]
    size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
    bicubic = str(getattr(resize.interpolation, "value", resize.interpolation)) == "bicubic"
    if size is None or not bicubic or resize.max_size is not None or tuple(crop.size) != (size, size):
        return None
    return int(size)


def fit_square(image: Image.Image, side: int) -> Image.Image:
    """Shortest side to `side` (bicubic), then the centre `side` x `side`: the same pixels as
    torchvision's Resize(side) + CenterCrop(side) on a PIL image, so vectors match the service's."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(side * long / short)
    size = (side, new_long) if w <= h else (new_long, side)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    w, h = image.size
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return image.crop((left, top, left + side, top + side))


# One reader per worker process and OCR setting; the engine loads on the first image that needs it.
_text_readers: dict[tuple[str, str], TextReader] = {}


def decode_batch(batch: pa.Table, *, options: DecodeOptions) -> pa.Table:
    rows = rows_of(batch)
    for row in rows:
        if not pending(row) or row["kind"] != "image":
            continue
        try:
            decoded = decode_image(row["data"], options.limits, field="file")
            key = (options.ocr_mode, options.ocr_engine)
            reader = _text_readers.get(key) or _text_readers.setdefault(key, TextReader(*key))
            text = reader.read(decoded.image)
        except InvalidInput as e:
            fail(row, "decode", e.reason)
            continue
        except LoupeError as e:
            fail(row, "ocr", e.reason)
            continue
        if options.side:
            row["crop"] = np.asarray(fit_square(decoded.image, options.side), dtype=np.uint8).tobytes()
        else:
            row["pixels"] = (
                _transform(options.preprocess)(decoded.image).numpy().astype(np.float32, copy=False).tobytes()
            )
        row.update(
            data=None,
            width=decoded.width,
            height=decoded.height,
            text=text or None,
            thumbnail=thumbnail(decoded.image),
            modality="image",
        )
    return table(rows)


_transforms: dict[bytes, Any] = {}


def _transform(pickled: bytes | None) -> Any:
    if pickled is None:
        raise ValueError("DecodeOptions needs `side` or `preprocess`")
    if pickled not in _transforms:
        import pickle

        import torch

        # Decode tasks share the CPUs with the encode actors; torch's default of a thread
        # per core in every task process would oversubscribe them.
        torch.set_num_threads(1)
        _transforms[pickled] = pickle.loads(pickled)  # noqa: S301 (made by our own driver)
    return _transforms[pickled]


# -- encode ------------------------------------------------------------------------------------


class Encode:
    """One CLIP model per actor; encodes the batch's decoded images in one forward pass."""

    # int8 passed its gate on the shipped probes; the first batch checks it on this catalog too.
    _drift_checked = False

    def __init__(self, clip_options: Any) -> None:
        from encoders.clip.encoder import ClipEncoder

        self.clip = ClipEncoder(clip_options).load()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = rows_of(batch)
        crops = [r for r in rows if pending(r) and r.get("crop")]
        if crops:
            side = int(round((len(crops[0]["crop"]) // 3) ** 0.5))
            images = [Image.fromarray(np.frombuffer(r["crop"], np.uint8).reshape(side, side, 3)) for r in crops]
            self._check_drift(images=images[:64])
            self._store(crops, self.clip.encode_images(images))
        tensors = [r for r in rows if pending(r) and r.get("pixels")]
        if tensors:
            side = int(round((len(tensors[0]["pixels"]) // 12) ** 0.5))  # 3 float32 channels, square
            pixels = np.stack([np.frombuffer(r["pixels"], np.float32).reshape(3, side, side) for r in tensors])
            self._check_drift(pixels=pixels[:64])
            self._store(tensors, self.clip.encode_pixels(pixels))
        return table(rows)

    def _check_drift(self, **sample) -> None:
        if self.clip.runtime == "onnx-int8" and not self._drift_checked:
            self.clip.check_drift(**sample)  # ModelUnavailable: the job stops with the reason
            self._drift_checked = True

    @staticmethod
    def _store(rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
        import time

        now = time.time()
        for row, vector in zip(rows, vectors):
            row.update(crop=None, pixels=None, vector=vector.astype(np.float32).tobytes(), encoded_at=now)


# -- audio ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioOptions:
    # Whisper backend and model spec (encoders.whisper.transcribe, encoders.whisper.models).
    backend: str
    model: str
    # encoders.whisper.transcribe.TranscribeOptions
    transcribe: Any
    # encoders.audio.decode.AudioLimits
    limits: Any
    # Words of overlap between consecutive chunks, in CLIP tokens.
    chunk_overlap_tokens: int = 4


class Transcribe:
    """Audio rows -> a recording and its chunks, transcribed and CLIP-encoded; both models
    load on the first audio row, so a catalog of images never pays for Whisper."""

    def __init__(self, clip_options: Any, audio: AudioOptions) -> None:
        self.clip_options, self.audio = clip_options, audio
        self.clip = self.transcriber = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = rows_of(batch)
        for row in rows:
            if pending(row) and row["kind"] == "audio":
                self._recording(row)
        return table(rows)

    def _recording(self, row: dict[str, Any]) -> None:
        import json
        import pickle

        from encoders.audio.decode import decode_audio
        from encoders.text.chunking import embed_transcript, timed_texts
        from indexing.recordings import recording_items

        try:
            audio = decode_audio(row["data"], self.audio.limits, field="file")
        except InvalidInput as e:
            fail(row, "decode", e.reason)
            return
        self._load()
        try:
            info, segments = self.transcriber.transcribe(audio.samples)
            segments = list(segments)
        except LoupeError as e:
            fail(row, "transcribe", e.reason)
            return
        embedded = embed_transcript(self.clip, timed_texts(segments), self.audio.chunk_overlap_tokens)
        items = recording_items(
            public_id=None,
            sha256=row["sha256"],
            source=row["uri"],
            metadata=json.loads(row["meta"]) if row["meta"] else {},
            embedded=embedded,
            full_text=" ".join(seg.text.strip() for seg in segments),
            language=info.language,
            duration_s=info.duration_s,
        )
        row.update(data=None, items=pickle.dumps(items), modality="audio")

    def _load(self) -> None:
        if self.transcriber is None:
            from encoders.clip.encoder import ClipEncoder
            from encoders.whisper.transcribe import create_transcriber

            self.clip = ClipEncoder(self.clip_options).load()
            self.transcriber = create_transcriber(self.audio.backend, self.audio.model, self.audio.transcribe).load()


# -- write -------------------------------------------------------------------------------------


class Write:
    """Hands encoded rows to the writer actor (looked up by name); returns outcome columns only."""

    def __init__(self, writer: str) -> None:
        import ray

        self.writer = ray.get_actor(writer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        rows = rows_of(batch)
        todo = [r for r in rows if pending(r) and (r.get("vector") or r.get("items"))]
        if todo:
            sent = [
                {
                    k: r[k]
                    for k in (
                        "sha256",
                        "uri",
                        "meta",
                        "known",
                        "vector",
                        "width",
                        "height",
                        "text",
                        "modality",
                        "items",
                    )
                }
                for r in todo
            ]
            try:
                answers = ray.get(self.writer.write.remote(sent))
            except LoupeError as e:  # the store refused the whole batch (e.g. unavailable)
                answers = [{"status": FAILED, "stage": "store", "reason": getattr(e, "reason", str(e))} for _ in todo]
            for row, answer in zip(todo, answers):
                row.update(status=answer["status"], stage=answer.get("stage"), reason=answer.get("reason"))
        for row in rows:
            if pending(row):
                fail(row, row.get("kind") or "pipeline", "was not processed by any step (unsupported kind)")
        return pa.Table.from_pylist(
            [{k: r.get(k) for k in RESULT_COLUMNS} for r in rows],
            schema=pa.schema([ROW_SCHEMA.field(k) for k in RESULT_COLUMNS]),
        )
