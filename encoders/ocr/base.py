"""Text from screenshots and documents (OCR), behind one interface for several engines.

What is read (`OcrOptions`) is separate from which library reads it (an engine, by name in
`ENGINES`). Loading happens once, under a lock, on first use or on `load()`; reads are
serialised per engine (the libraries keep per-call state).

    ocr = create_ocr("rapidocr")
    result = ocr.read(decode_image(data).image)   # RGB PIL image from encoders.image.decode
    result.text                                    # rows top to bottom, boxes left to right

Models install offline: rapidocr's PP-OCRv4 ONNX models are inside its wheel; tesseract reads
Debian's traineddata. benchmarks/bench_ocr.py measures both (and easyocr, which reads worse and
7x slower, so it is not offered here) on tests/fixtures/screenshots. `looks_like_text_image`
decides without a model whether an image is probably a screenshot or document, so indexing
OCRs those and not photos.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image

from encoders.common.errors import InvalidInput
from encoders.loading.lazy import LazyModel
from encoders.ocr.layout import reading_order
from encoders.ocr.lookalikes import fix_lookalikes

MAX_THREADS = 64
DEFAULT_ENGINE = "rapidocr"


@dataclass(frozen=True)
class OcrOptions:
    # Engine name, a key of ENGINES.
    engine: str = DEFAULT_ENGINE
    # ISO 639-1 codes of the languages in the images; engines refuse ones they have no model for.
    languages: tuple[str, ...] = ("en",)
    # Lines the engine is less sure of than this (0..1) are dropped.
    min_confidence: float = 0.5
    # Images whose longer side exceeds this are downscaled first (boxes are reported in the
    # original's pixels). Screenshot text is small: keep it at or above the screen width.
    max_side: int = 2560
    # CPU threads for rapidocr (onnxruntime intra-op); 1..MAX_THREADS. Tesseract uses one.
    threads: int = 2
    # rapidocr only: put back the word spaces its recogniser drops, from gaps in the ink.
    restore_spaces: bool = True
    # Undo look-alike swaps inside codes and numbers (see `fix_lookalikes`); NFKC always runs.
    fix_lookalikes: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.threads <= MAX_THREADS:
            raise InvalidInput(f"threads must be between 1 and {MAX_THREADS}, not {self.threads}", field="threads")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise InvalidInput(f"min_confidence must be in [0, 1], not {self.min_confidence}", field="min_confidence")
        if self.max_side < 32:
            raise InvalidInput(f"max_side must be at least 32 pixels, not {self.max_side}", field="max_side")
        codes = (self.languages,) if isinstance(self.languages, str) else tuple(self.languages)
        if not codes or any(not code.strip() for code in codes):
            raise InvalidInput("languages must be a non-empty tuple of codes like 'en'", field="languages")
        object.__setattr__(self, "languages", tuple(code.strip().lower() for code in codes))


@dataclass(frozen=True)
class OcrLine:
    text: str
    confidence: float  # 0..1, the engine's own score
    box: tuple[int, int, int, int]  # left, top, right, bottom in the input image's pixels


@dataclass(frozen=True)
class OcrResult:
    text: str  # rows joined by "\n", the lines of one row by " "
    lines: tuple[OcrLine, ...]  # in reading order
    engine: str
    seconds: float  # wall time of this read (after load)


class OcrEngine(LazyModel):
    """An OCR library. Subclasses implement `_load_model` and `_read` (array in, raw lines out)."""

    name = ""
    languages: frozenset[str] | None = None  # codes the engine has models for; None: checked at load

    def __init__(self, options: OcrOptions = OcrOptions()) -> None:
        if self.languages is not None and not set(options.languages) <= self.languages:
            raise InvalidInput(
                f"OCR engine {self.name!r} reads {', '.join(sorted(self.languages))}, not "
                f"{', '.join(options.languages)}; use 'tesseract' for others",
                field="languages",
            )
        super().__init__()
        self.options = options
        self._read_lock = threading.Lock()  # the libraries keep per-call state
        self._model = None

    @property
    def model_id(self) -> str:
        return f"ocr:{self.name}"

    def _load(self) -> None:
        self._model = self._load_model()

    def read(self, image: Image.Image) -> OcrResult:
        """RGB PIL image -> lines in reading order. An image without text gives empty text."""
        self.load()
        start = time.perf_counter()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        scale = min(1.0, self.options.max_side / max(rgb.size))
        if scale < 1.0:
            rgb = rgb.resize(
                (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.LANCZOS
            )
        with self._read_lock:
            raw = self._read(np.asarray(rgb))
        fix = fix_lookalikes if self.options.fix_lookalikes else (lambda t: t)
        lines = [
            OcrLine(
                fix(" ".join(unicodedata.normalize("NFKC", t).split())),
                float(c),
                tuple(round(float(v) / scale) for v in b),
            )  # type: ignore[arg-type]
            for t, c, b in raw
            if t.strip() and c >= self.options.min_confidence
        ]
        ordered, text = reading_order(lines)
        return OcrResult(text, tuple(ordered), self.name, time.perf_counter() - start)

    @abstractmethod
    def _load_model(self):
        """Load the library's model; the result is kept as `self._model`."""

    @abstractmethod
    def _read(self, pixels: np.ndarray) -> list[tuple[str, float, tuple[float, float, float, float]]]:
        """(text, confidence, box) per line found in an RGB array."""
