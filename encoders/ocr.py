"""Text from screenshots and documents (OCR), behind one interface for several engines.

What is read (`OcrOptions`) is separate from which library reads it (an engine, by name in
`ENGINES`). Loading happens once, under a lock, on first use or on `load()`; reads are
serialised per engine (the libraries keep per-call state).

    ocr = create_ocr("rapidocr")
    result = ocr.read(decode_image(data).image)   # RGB PIL image from encoders.media
    result.text                                    # rows top to bottom, boxes left to right

Models install offline: rapidocr's PP-OCRv4 ONNX models are inside its wheel; tesseract reads
Debian's traineddata. benchmarks/bench_ocr.py measures both (and easyocr, which reads worse and
7x slower, so it is not offered here) on tests/fixtures/screenshots. `looks_like_text_image`
decides without a model whether an image is probably a screenshot or document, so indexing
OCRs those and not photos.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
import os
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from encoders.errors import InvalidInput, ModelUnavailable

MAX_THREADS = 64
DEFAULT_ENGINE = "rapidocr"


@dataclass(frozen=True)
class EngineSpec:
    cls: str  # name of the OcrEngine subclass in this module
    requires: tuple[str, ...]  # modules that must import, checked first so the error can say what to install
    install: str  # how to install the engine and its models


ENGINES: dict[str, EngineSpec] = {
    "rapidocr": EngineSpec("RapidOcrEngine", ("rapidocr_onnxruntime",),
                           "pip install rapidocr-onnxruntime==1.4.4 (PP-OCRv4 models ship inside the wheel)"),
    "tesseract": EngineSpec("TesseractEngine", ("tesserocr",),
                            "apt-get install tesseract-ocr-eng (traineddata) and pip install tesserocr==2.13.0"),
}


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


class OcrEngine(ABC):
    """An OCR library. Subclasses implement `_load` and `_read` (array in, raw lines out)."""

    name = ""
    languages: frozenset[str] | None = None  # codes the engine has models for; None: checked at load

    def __init__(self, options: OcrOptions = OcrOptions()) -> None:
        if self.languages is not None and not set(options.languages) <= self.languages:
            raise InvalidInput(f"OCR engine {self.name!r} reads {', '.join(sorted(self.languages))}, not "
                               f"{', '.join(options.languages)}; use 'tesseract' for others", field="languages")
        self.options = options
        self._lock = threading.Lock()
        self._model = None

    def load(self) -> OcrEngine:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self

    def read(self, image: Image.Image) -> OcrResult:
        """RGB PIL image -> lines in reading order. An image without text gives empty text."""
        self.load()
        start = time.perf_counter()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        scale = min(1.0, self.options.max_side / max(rgb.size))
        if scale < 1.0:
            rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                             Image.Resampling.LANCZOS)
        with self._lock:
            raw = self._read(np.asarray(rgb))
        fix = fix_lookalikes if self.options.fix_lookalikes else (lambda t: t)
        lines = [OcrLine(fix(" ".join(unicodedata.normalize("NFKC", t).split())), float(c),
                         tuple(round(float(v) / scale) for v in b))  # type: ignore[arg-type]
                 for t, c, b in raw if t.strip() and c >= self.options.min_confidence]
        ordered, text = reading_order(lines)
        return OcrResult(text, tuple(ordered), self.name, time.perf_counter() - start)

    @abstractmethod
    def _load(self):
        """Load the library's model; the result is kept as `self._model`."""

    @abstractmethod
    def _read(self, pixels: np.ndarray) -> list[tuple[str, float, tuple[float, float, float, float]]]:
        """(text, confidence, box) per line found in an RGB array."""


# Look-alike characters that recognisers swap, fixed only where the context leaves no doubt.
_HEX = re.compile(r"(?<![\w.])[0O][xX](?=[0-9a-fA-FoOlI]*[0-9a-fA-F])[0-9a-fA-FoOlI]{4,}(?!\w)")
_DIGITS = re.compile(r"(?<![A-Za-z0-9])\d[\doOilI]*[oOilI][\doOilI]*(?![A-Za-z0-9])")
_CAPS_ZERO = re.compile(r"(?<=[A-Z]{2})0(?=[A-Z_]|(?![A-Za-z0-9]))")
_ZERO_WORD = re.compile(r"(?<![A-Za-z0-9])0(?=[a-wyz][a-z]{2,})")
_CODE_CASE = re.compile(r"(?<![A-Za-z0-9])[A-Z][cosvwxz](?=\d{3,}(?![A-Za-z0-9]))")
_TO_DIGITS = str.maketrans("oOilI", "00111")


def fix_lookalikes(text: str) -> str:
    """Undo O/0 and l/1 swaps: "Oxcooooo7b" -> "0xc000007b" (hex after 0x), "1il" -> "111"
    (a run that starts with a digit and is all digits or look-alikes), "INF0" -> "INFO" (0 after
    two capitals, before a capital, "_" or the word's end), "0rder" -> "Order" (0 starting a
    word of three or more lower-case letters), "Ts2304" -> "TS2304" (a capital and a letter
    whose lower case looks like its capital, before 3+ digits)."""
    text = _HEX.sub(lambda m: "0x" + m.group()[2:].translate(_TO_DIGITS), text)
    text = _DIGITS.sub(lambda m: m.group().translate(_TO_DIGITS), text)
    text = _CAPS_ZERO.sub("O", text)
    text = _CODE_CASE.sub(lambda m: m.group().upper(), text)
    return _ZERO_WORD.sub("O", text)


def reading_order(lines: list[OcrLine]) -> tuple[list[OcrLine], str]:
    """Lines in reading order and the text: sidebar-like columns one after another (see
    `_split_columns`), within each rows top to bottom, within a row left to right."""
    ordered, texts = [], []
    for block in _split_columns(lines):
        for row in _rows(block):
            ordered.extend(row)
            texts.append(" ".join(l.text for l in row))
    return ordered, "\n".join(texts)


def _rows(lines: list[OcrLine]) -> list[list[OcrLine]]:
    """A line joins the last row when it overlaps the row's span by half its height or more."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda l: ((l.box[1] + l.box[3]) / 2, l.box[0])):
        top, bottom = line.box[1], line.box[3]
        if rows:
            r_top, r_bottom = min(l.box[1] for l in rows[-1]), max(l.box[3] for l in rows[-1])
            if min(bottom, r_bottom) - max(top, r_top) >= 0.5 * max(1, bottom - top):
                rows[-1].append(line)
                continue
        rows.append([line])
    return [sorted(row, key=lambda l: l.box[0]) for row in rows]


def _split_columns(lines: list[OcrLine], depth: int = 0) -> list[list[OcrLine]]:
    """Blocks to read one after another: a page splits at a vertical gap no line crosses when
    both sides have 3+ lines whose rows meet only by chance (a sidebar beside content). Sides
    that share centre lines are a table (label | value) and stay together, as do sides that
    never share a row (chat bubbles alternate down the page)."""
    if depth >= 3 or len(lines) < 6:
        return [lines] if lines else []
    spans = sorted((l.box[0], l.box[2]) for l in lines)
    reach = spans[0][1]
    for x0, x1 in spans[1:]:
        if x0 > reach:  # nothing crosses (reach, x0)
            left = [l for l in lines if l.box[2] <= reach]
            right = [l for l in lines if l.box[0] >= x0]
            if min(len(left), len(right)) >= 3 and _independent(left, right):
                return _split_columns(left, depth + 1) + _split_columns(right, depth + 1)
        reach = max(reach, x1)
    return [lines]


# Sides split when at least this share of the smaller side's lines overlaps a row of the other
# (centres within half a line height), unless TABLE_MIN_ALIGNED of them share a centre line
# (within a tenth). Fixtures: settings 0.62 / 0.0, notes 0.75 / 0.25: split; none is a table.
SIDEBAR_MIN_OVERLAP = 0.25
TABLE_MIN_ALIGNED = 0.6


def _independent(left: list[OcrLine], right: list[OcrLine]) -> bool:
    small, big = sorted((left, right), key=len)

    def shared(tolerance: float) -> float:
        centre = lambda l: (l.box[1] + l.box[3]) / 2
        return sum(any(abs(centre(x) - centre(y)) <= tolerance * max(1, x.box[3] - x.box[1]) for y in big)
                   for x in small) / len(small)

    return shared(0.5) >= SIDEBAR_MIN_OVERLAP and shared(0.1) < TABLE_MIN_ALIGNED


def _quad_box(points) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


class RapidOcrEngine(OcrEngine):
    """PP-OCRv4 (det, cls, rec) on onnxruntime. Runs rapidocr 1.4.4's own steps one by one so
    that the recogniser's CTC columns reach `_respace`."""

    name = "rapidocr"
    languages = frozenset({"en", "zh"})

    def _load(self):
        from rapidocr_onnxruntime import RapidOCR

        # Global thread settings are copied to det, cls and rec (per-module ones are overwritten).
        return RapidOCR(intra_op_num_threads=self.options.threads, inter_op_num_threads=1)

    def _read(self, pixels):
        m = self._model
        bgr = np.ascontiguousarray(pixels[:, :, ::-1])
        img, ratio_h, ratio_w = m.preprocess(bgr)  # its own size limits, then padding of thin strips
        img, record = m.maybe_add_letterbox(img, {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}})
        boxes, _ = m.text_det(img)
        if boxes is None or len(boxes) == 0:
            return []
        boxes = m.sorted_boxes(boxes)
        crops, _, _ = m.text_cls(m.get_crop_img_list(img, boxes))
        recognised, _ = m.text_rec(crops, self.options.restore_spaces)
        gray = img.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)
        out = []
        for box, original, (text, score, *ctc) in zip(boxes, m._get_origin_points(boxes, record, *bgr.shape[:2]),
                                                       recognised):
            if ctc and text:
                text = _respace(text, ctc[0], gray, _quad_box(box))
            out.append((text, score, _quad_box(original)))
        return out


# A space is inserted between two recognised characters when the blank run between them is
# at least this share of the line's mean character pitch and their CTC columns are at least
# SPACE_MIN_COLUMNS apart. Fitted on the fixtures: 45 of the 59 spaces PP-OCRv4 dropped were
# found at 0.45 with no false space among 2,903 letter pairs; 0.5 leaves a margin (43 found).
SPACE_GAP = 0.5
SPACE_MIN_COLUMNS = 4


def _respace(text: str, info, gray: np.ndarray, box) -> str:
    """`text` with spaces put back where the ink has a word-sized gap (see SPACE_GAP).
    `info` is rapidocr's per-line CTC decoding: [columns, words, columns of each char, ...]."""
    col_num, cols = info[0], [c for word in info[2] for c in word]
    x0, y0, x1, y1 = (max(0, round(float(v))) for v in box)
    crop = gray[y0:y1, x0:x1]
    if len(cols) != len(text) or col_num <= 0 or crop.size == 0 or len(text) < 2:
        return text
    border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
    blank = ~(np.abs(crop - np.median(border)) > 40).any(axis=0)  # columns without ink
    pitch = crop.shape[1] / len(text)
    xs = [int((c + 0.5) * crop.shape[1] / col_num) for c in cols]
    out = [text[0]]
    for i in range(1, len(text)):
        if (" " not in (text[i], text[i - 1]) and cols[i] - cols[i - 1] >= SPACE_MIN_COLUMNS
                and _longest_run(blank[xs[i - 1]:xs[i]]) >= SPACE_GAP * pitch):
            out.append(" ")
        out.append(text[i])
    return "".join(out)


def _longest_run(flags: np.ndarray) -> int:
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flags.astype(np.int8), [0]))))
    return int((edges[1::2] - edges[::2]).max(initial=0))


class TesseractEngine(OcrEngine):
    name = "tesseract"

    def _load(self):
        import tesserocr

        codes = [TESSERACT_CODES.get(code, code) for code in self.options.languages]
        path = tessdata_dir(codes)
        # Automatic page segmentation: CER 0.065 on the fixtures, against 0.093 for one uniform
        # block (PSM 6), which keeps receipt prices and buttons but runs sidebars into content.
        return tesserocr.PyTessBaseAPI(path=path, lang="+".join(codes), psm=tesserocr.PSM.AUTO)

    def _read(self, pixels):
        import tesserocr

        self._model.SetImage(Image.fromarray(pixels))
        self._model.Recognize()
        iterator, level = self._model.GetIterator(), tesserocr.RIL.TEXTLINE
        lines = tesserocr.iterate_level(iterator, level) if iterator is not None else []
        return [(line.GetUTF8Text(level) or "", line.Confidence(level) / 100.0, line.BoundingBox(level))
                for line in lines if line.BoundingBox(level) is not None]


# ISO 639-1 -> tesseract's codes for common languages; other codes are passed through.
TESSERACT_CODES = {"en": "eng", "de": "deu", "fr": "fra", "es": "spa", "it": "ita", "pt": "por", "nl": "nld"}
TESSDATA_DIRS = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata", "/usr/share/tessdata")


def tessdata_dir(langs: list[str]) -> str:
    """The folder holding `<lang>.traineddata` for every lang: $TESSDATA_PREFIX, then Debian's."""
    candidates = [os.environ["TESSDATA_PREFIX"]] if os.environ.get("TESSDATA_PREFIX") else []
    for folder in candidates + list(TESSDATA_DIRS):
        if all((Path(folder) / f"{lang}.traineddata").is_file() for lang in langs):
            return folder.rstrip("/") + "/"
    raise ModelUnavailable(f"tesseract has no traineddata for {'+'.join(langs)} in "
                           f"{', '.join(candidates + list(TESSDATA_DIRS))}; apt-get install "
                           f"{' '.join('tesseract-ocr-' + lang for lang in langs)} or set TESSDATA_PREFIX")


def list_engines() -> list[str]:
    return sorted(ENGINES)


def available_engines() -> list[str]:
    """Engines whose libraries are importable here (their models may still be missing)."""
    return [n for n in list_engines() if all(importlib.util.find_spec(m) for m in ENGINES[n].requires)]


def create_ocr(engine: str | None = None, options: OcrOptions | None = None) -> OcrEngine:
    """An engine by name ("rapidocr", "tesseract"); `engine` overrides options.engine. Fails fast
    (ModelUnavailable, saying what to install) when its library or model files are missing."""
    options = options or OcrOptions()
    engine = engine or options.engine
    spec = ENGINES.get(engine)
    if spec is None:
        raise InvalidInput(f"unknown OCR engine {engine!r}; engines: {', '.join(list_engines())}", field="engine")
    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelUnavailable(f"OCR engine {engine!r} is not installed (cannot import {', '.join(missing)}): "
                               f"{spec.install}")
    if engine == "tesseract":
        tessdata_dir([TESSERACT_CODES.get(c, c) for c in options.languages])  # fail fast
    if options.engine != engine:
        options = OcrOptions(**{**options.__dict__, "engine": engine})
    return globals()[spec.cls](options)


# looks_like_text_image: share of pixels (after downscaling to TEXT_IMAGE_SIDE) whose gray level
# differs from the right and lower neighbours by at most 1, and share with a step of 64+.
TEXT_IMAGE_SIDE = 640
MIN_FLAT_SHARE = 0.75
MIN_EDGE_SHARE = 0.005


def looks_like_text_image(image: Image.Image) -> bool:
    """True when `image` is probably a screenshot or rendered document (no model, ~5 ms).

    UIs and rendered pages are mostly flat colour (or gradients of at most one level per pixel)
    cut by sharp glyph edges; photos have texture and noise almost everywhere. Flat share on
    the fixtures 0.91-0.96 (0.81-0.95 after JPEG q70 or halving), on scikit-image's photos
    0.01-0.61; flat frames without sharp edges (microscopy, blanks) fail the edge share. Noisy
    scans and photographed documents read as photos."""
    if min(image.size) < 32:
        return False
    gray = image.convert("L")
    if max(gray.size) > TEXT_IMAGE_SIDE:
        scale = TEXT_IMAGE_SIDE / max(gray.size)
        gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                           Image.Resampling.BOX)
    g = np.asarray(gray, dtype=np.int16)
    step = np.maximum(np.abs(np.diff(g, axis=1))[:-1, :], np.abs(np.diff(g, axis=0))[:, :-1])
    return bool((step <= 1).mean() >= MIN_FLAT_SHARE and (step >= 64).mean() >= MIN_EDGE_SHARE)
