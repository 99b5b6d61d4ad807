"""OCR: text from screenshots and documents, behind one interface for several engines.

- `base`: what is read (`OcrOptions`), the result types and the `OcrEngine` base.
- `engines`: the engines by name and `create_ocr`; `rapid` and `tesseract` implement them.
- `layout`: reading order; `lookalikes`: O/0 and l/1 repairs; `heuristics`: is it a screenshot.
"""

from encoders.ocr.base import DEFAULT_ENGINE, MAX_THREADS, OcrEngine, OcrLine, OcrOptions, OcrResult
from encoders.ocr.engines import ENGINES, EngineSpec, available_engines, create_ocr, list_engines
from encoders.ocr.heuristics import looks_like_text_image
from encoders.ocr.layout import reading_order
from encoders.ocr.lookalikes import fix_lookalikes

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "MAX_THREADS",
    "EngineSpec",
    "OcrEngine",
    "OcrLine",
    "OcrOptions",
    "OcrResult",
    "available_engines",
    "create_ocr",
    "fix_lookalikes",
    "list_engines",
    "looks_like_text_image",
    "reading_order",
]
