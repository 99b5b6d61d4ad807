"""One ingest path, used by the online service and the batch pipeline alike.

    image bytes -> decoded image (encoders.image) -> CLIP vector + OCR text (`TextReader`)
    text        -> CLIP vector
    recording   -> transcript chunks and their vectors (indexing.recordings)
                -> items (`image_item`, `text_item`, `recording_items`) with keyword vectors
                -> store (`Index.upsert`; `store_recording` for a recording and its segments)

The service runs the steps inside its deployments (Encoder: decode, OCR, CLIP; Index: store)
and the pipeline as Ray Data stages, but both build the same items from the same helpers, so
an item indexed either way is stored the same way.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from encoders.text.keywords import keyword_vector
from indexing.payloads import NewItem
from indexing.recordings import recording_items
from indexing.types import CollectionSchema, Modality

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from indexing.index import Index

# The dense vector a service or pipeline writes unless told otherwise (`--vector` in batch).
VECTOR_NAME = "clip"

__all__ = ["VECTOR_NAME", "TextReader", "image_item", "recording_items", "store_recording", "text_item"]


_ENGINE_PACKAGES = {"rapidocr": "rapidocr-onnxruntime", "tesseract": "pytesseract"}


class TextReader:
    """The OCR gate: text of screenshots and documents ("auto"), of every image ("always"), or
    none ("never"). The engine loads on the first image that needs it."""

    def __init__(self, mode: str = "auto", engine: str = "", threads: int = 2) -> None:
        if mode not in ("auto", "always", "never"):
            from encoders.common.errors import InvalidInput

            raise InvalidInput(f"OCR mode {mode!r} is not one of auto, always, never", field="ocr.mode")
        self.mode, self.engine_name, self.threads = mode, engine, threads
        self._engine = None
        self._identity = ""
        self._lock = threading.Lock()

    def load(self) -> TextReader:
        """Create and load the engine now (a service fails at start-up, not on the first image)."""
        if self.mode != "never" and self._engine is None:
            with self._lock:
                if self._engine is None:
                    from encoders.ocr import OcrOptions, create_ocr

                    engine = self.engine_name or None
                    options = OcrOptions(**({"engine": engine} if engine else {}), threads=self.threads)
                    self._engine = create_ocr(engine, options).load()
        return self

    @property
    def identity(self) -> str:
        """What the text read depends on besides the pixels: the mode, the engine, its package
        and Loupe's own version (reading order and repairs are Loupe's): a cache key part."""
        if self._identity:
            return self._identity
        self.load()
        if self._engine is None:
            return "never"
        from importlib.metadata import PackageNotFoundError, version

        versions = []
        for package in (_ENGINE_PACKAGES.get(self._engine.name, ""), "loupe"):
            try:
                versions.append(version(package) if package else "")
            except PackageNotFoundError:
                versions.append("dev")
        self._identity = f"{self.mode}:{self._engine.model_id}:{':'.join(versions)}"
        return self._identity

    def read(self, image: Image.Image) -> str:
        if self.mode == "never":
            return ""
        if self.mode == "auto":
            from encoders.ocr import looks_like_text_image

            if not looks_like_text_image(image):
                return ""
        return self.load()._engine.read(image).text


def image_item(
    *,
    public_id: str | None,
    sha256: str,
    source: str | None,
    metadata: dict[str, Any],
    vector: np.ndarray,
    width: int | None,
    height: int | None,
    text: str | None,
    thumbnail: bytes | None = None,
) -> NewItem:
    """An image, with the OCR text (if any) stored and keyword-searchable."""
    text = text or None
    return NewItem(
        public_id=public_id,
        sha256=sha256,
        modality=Modality.IMAGE,
        vector=vector,
        source=source,
        metadata=metadata,
        text=text,
        width=width,
        height=height,
        keywords=keyword_vector(text) if text else None,
        thumbnail=thumbnail or None,
    )


def text_item(
    *, public_id: str | None, sha256: str, source: str | None, metadata: dict[str, Any], vector: np.ndarray, text: str
) -> NewItem:
    return NewItem(
        public_id=public_id,
        sha256=sha256,
        modality=Modality.TEXT,
        vector=vector,
        source=source,
        metadata=metadata,
        text=text,
        keywords=keyword_vector(text),
    )


def store_recording(
    index: Index, name: str, schema: CollectionSchema, recording: NewItem, segments: list[NewItem]
) -> tuple[str, bool]:
    """Store a recording, then its segments in place of any of an earlier version."""
    [(public_id, created)] = index.upsert(name, [recording], schema)
    index.delete_children(name, public_id)
    if segments:
        index.upsert(name, segments, schema)
    return public_id, created
