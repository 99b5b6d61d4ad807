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

from encoders.errors import InvalidInput, LoupeError
from encoders.media import ImageLimits, decode_image
from indexing.batch.catalog import media_kind

FAILED = "failed"
ROW_SCHEMA = pa.schema([
    ("row", pa.int64()), ("uri", pa.string()), ("meta", pa.string()),
    ("status", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
    ("sha256", pa.string()), ("kind", pa.string()), ("known", pa.bool_()),
    ("data", pa.binary()), ("pixels", pa.binary()), ("width", pa.int64()), ("height", pa.int64()),
    ("text", pa.string()), ("vector", pa.binary()), ("modality", pa.string()),
])
# What reaches the driver: no bytes.
RESULT_COLUMNS = ("row", "uri", "status", "stage", "reason", "sha256")
_HTTP_TIMEOUT_S = 30


def rows_of(batch: pa.Table) -> list[dict[str, Any]]:
    return batch.to_pylist()


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def pending(row: dict[str, Any]) -> bool:
    return not row.get("status")


def fail(row: dict[str, Any], stage: str, reason: str) -> None:
    row.update(status=FAILED, stage=stage, reason=reason, data=None, pixels=None, vector=None)


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
            fail(row, "read", "not an image or audio file (its first bytes match no supported format)"
                 if data else "the file is empty (0 bytes)")
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
    # The model's own image transform (`ClipEncoder.preprocessor()`), applied here.
    preprocess: Any
    limits: ImageLimits
    # "auto": OCR images that look like screenshots or documents; "always"; "never".
    ocr_mode: str = "auto"
    ocr_engine: str = ""


_ocr_engines: dict[str, Any] = {}


def decode_batch(batch: pa.Table, *, options: DecodeOptions) -> pa.Table:
    rows = rows_of(batch)
    for row in rows:
        if not pending(row) or row["kind"] != "image":
            continue
        try:
            decoded = decode_image(row["data"], options.limits, field="file")
            text = _read_text(decoded.image, options)
        except InvalidInput as e:
            fail(row, "decode", e.reason)
            continue
        except LoupeError as e:
            fail(row, "ocr", e.reason)
            continue
        pixels = options.preprocess(decoded.image).numpy().astype(np.float32, copy=False)
        row.update(data=None, pixels=pixels.tobytes(), width=decoded.width, height=decoded.height,
                   text=text or None, modality="image")
    return table(rows)


def _read_text(image, options: DecodeOptions) -> str:
    if options.ocr_mode == "never":
        return ""
    from encoders.ocr import create_ocr, looks_like_text_image

    if options.ocr_mode == "auto" and not looks_like_text_image(image):
        return ""
    # One engine per worker process, loaded on the first image that needs it.
    engine = _ocr_engines.get(options.ocr_engine)
    if engine is None:
        engine = _ocr_engines[options.ocr_engine] = create_ocr(options.ocr_engine or None).load()
    return engine.read(image).text


# -- encode ------------------------------------------------------------------------------------

class Encode:
    """One CLIP model per actor; encodes the batch's decoded images in one forward pass."""

    def __init__(self, clip_options: Any) -> None:
        from encoders.clip import ClipEncoder

        self.clip = ClipEncoder(clip_options).load()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = rows_of(batch)
        todo = [r for r in rows if pending(r) and r.get("pixels")]
        if todo:
            side = int(round((len(todo[0]["pixels"]) // 12) ** 0.5))  # 3 float32 channels, square
            pixels = np.stack([np.frombuffer(r["pixels"], np.float32).reshape(3, side, side) for r in todo])
            for row, vector in zip(todo, self.clip.encode_pixels(pixels)):
                row.update(pixels=None, vector=vector.astype(np.float32).tobytes())
        return table(rows)


# -- write -------------------------------------------------------------------------------------

class Write:
    """Hands encoded rows to the writer actor (looked up by name); returns outcome columns only."""

    def __init__(self, writer: str) -> None:
        import ray

        self.writer = ray.get_actor(writer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        rows = rows_of(batch)
        todo = [r for r in rows if pending(r) and r.get("vector")]
        if todo:
            sent = [{k: r[k] for k in ("sha256", "uri", "meta", "known", "vector", "width", "height", "text",
                                      "modality")} for r in todo]
            try:
                answers = ray.get(self.writer.write.remote(sent))
            except LoupeError as e:  # the store refused the whole batch (e.g. unavailable)
                answers = [{"status": FAILED, "stage": "store", "reason": getattr(e, "reason", str(e))} for _ in todo]
            for row, answer in zip(todo, answers):
                row.update(status=answer["status"], stage=answer.get("stage"), reason=answer.get("reason"))
        for row in rows:
            if pending(row):
                fail(row, row.get("kind") or "pipeline", "was not processed by any step (unsupported kind)")
        return pa.Table.from_pylist([{k: r.get(k) for k in RESULT_COLUMNS} for r in rows],
                                    schema=pa.schema([ROW_SCHEMA.field(k) for k in RESULT_COLUMNS]))
