"""The OCR engines by name: which exist, which are installed here, and creating one."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from encoders.common.errors import InvalidInput, ModelUnavailable
from encoders.ocr.base import OcrEngine, OcrOptions


@dataclass(frozen=True)
class EngineSpec:
    cls: str  # "module:Class" of the OcrEngine subclass
    requires: tuple[str, ...]  # modules that must import, checked first so the error can say what to install
    install: str  # how to install the engine and its models


ENGINES: dict[str, EngineSpec] = {
    "rapidocr": EngineSpec("encoders.ocr.rapid:RapidOcrEngine", ("rapidocr_onnxruntime",),
                           "pip install rapidocr-onnxruntime==1.4.4 (PP-OCRv4 models ship inside the wheel)"),
    "tesseract": EngineSpec("encoders.ocr.tesseract:TesseractEngine", ("tesserocr",),
                            "apt-get install tesseract-ocr-eng (traineddata) and pip install tesserocr==2.13.0"),
}


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
        from encoders.ocr.tesseract import TESSERACT_CODES, tessdata_dir

        tessdata_dir([TESSERACT_CODES.get(c, c) for c in options.languages])  # fail fast
    if options.engine != engine:
        options = OcrOptions(**{**options.__dict__, "engine": engine})
    module, cls = spec.cls.split(":")
    engine_cls: type[OcrEngine] = getattr(importlib.import_module(module), cls)
    return engine_cls(options)


# looks_like_text_image: share of pixels (after downscaling to TEXT_IMAGE_SIDE) whose gray level
