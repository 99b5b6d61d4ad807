"""The OCR engines by name: which exist, which are installed here, and creating one."""

from __future__ import annotations

from encoders.loading.registry import Entry, Registry
from encoders.ocr.base import OcrEngine, OcrOptions

# An engine: "module:Class" of the OcrEngine subclass, the modules it needs, how to install it.
EngineSpec = Entry

ENGINES: dict[str, EngineSpec] = {
    "rapidocr": EngineSpec(
        "encoders.ocr.rapid:RapidOcrEngine",
        ("rapidocr_onnxruntime",),
        "pip install rapidocr-onnxruntime==1.4.4 (PP-OCRv4 models ship inside the wheel)",
    ),
    "tesseract": EngineSpec(
        "encoders.ocr.tesseract:TesseractEngine",
        ("tesserocr",),
        "apt-get install tesseract-ocr-eng (traineddata) and pip install tesserocr==2.13.0",
    ),
}
OCR_ENGINES = Registry("OCR engine", ENGINES, field="engine")


def list_engines() -> list[str]:
    return OCR_ENGINES.names()


def available_engines() -> list[str]:
    """Engines whose libraries are importable here (their models may still be missing)."""
    return OCR_ENGINES.installed()


def create_ocr(engine: str | None = None, options: OcrOptions | None = None) -> OcrEngine:
    """An engine by name ("rapidocr", "tesseract"); `engine` overrides options.engine. Fails fast
    (ModelUnavailable, saying what to install) when its library or model files are missing."""
    options = options or OcrOptions()
    engine = engine or options.engine
    engine_cls: type[OcrEngine] = OCR_ENGINES.cls(engine)  # unknown or not installed: says what to do
    if engine == "tesseract":
        from encoders.ocr.tesseract import TESSERACT_CODES, tessdata_dir

        tessdata_dir([TESSERACT_CODES.get(c, c) for c in options.languages])  # fail fast
    if options.engine != engine:
        options = OcrOptions(**{**options.__dict__, "engine": engine})
    return engine_cls(options)
