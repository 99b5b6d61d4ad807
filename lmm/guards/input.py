"""Input guards: what a request may carry, and cleaning it before any model sees it.

Two chains run on the way in. Request guards run before any work: image count, bytes, decoding
and pixels, question length (REJECT: the request is malformed), then masking personal data in
the question, neutralising instructions in it, and the out-of-scope topic list (BLOCK). Context
guards run once OCR and retrieval have produced the context images: they cap, mask and
neutralise the text read from every image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from PIL import Image

from encoders.common.errors import InvalidInput
from encoders.image.decode import ImageLimits, decode_image
from encoders.text.pii import describe
from lmm.guards.base import BaseGuard, OnFail
from lmm.injection import THRESHOLD, neutralise, only_injection, removed_sentences
from lmm.pii import Masker
from lmm.types import ContextImage, GuardResult


@dataclass
class Upload:
    """One uploaded image as it moves through the request guards."""

    # Request field for error messages: "uploads[0]".
    field: str
    # Encoded bytes as sent, when the caller sent bytes.
    data: bytes | None = None
    # Decoded image (set by ImageDecodeGuard for bytes, given directly otherwise).
    image: Image.Image | None = None
    # Text the caller already had for the image (a ContextImage upload); OCR runs when empty.
    ocr_text: str = ""


@dataclass
class RequestState:
    question: str
    uploads: list[Upload]
    # The request's masker: the question's values become restorable placeholders.
    masker: Masker
    # Set by a REJECT guard: the request field at fault.
    fault_field: str | None = None


@dataclass
class ContextState:
    # Uploads first, then retrieved items; guards replace entries with cleaned copies.
    images: list[ContextImage]
    masker: Masker
    # Retrieved items' personal data may be restored in the answer (the caller may see it).
    reveal_retrieved: bool = False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class ImageCountGuard(BaseGuard):
    name, on_fail = "input.image_count", OnFail.REJECT

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images

    def check(self, state: RequestState) -> GuardResult:
        n = len(state.uploads)
        if n > self.max_images:
            state.fault_field = "uploads"
            return self.fail(
                f"{_plural(n, 'image')} uploaded; at most {self.max_images} per question. "
                f"Send only the screenshots that show the problem"
            )
        return self.ok(f"{_plural(n, 'image')} uploaded")


class ImageBytesGuard(BaseGuard):
    """Encoded size, checked before anything parses the bytes."""

    name, on_fail = "input.image_bytes", OnFail.REJECT

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def check(self, state: RequestState) -> GuardResult:
        for up in state.uploads:
            if up.data is None:
                continue
            if len(up.data) == 0:
                state.fault_field = up.field
                return self.fail(f"{up.field} is empty (0 bytes); send the file's contents")
            if len(up.data) > self.max_bytes:
                state.fault_field = up.field
                return self.fail(
                    f"{up.field} is {len(up.data):,} bytes; the limit is {self.max_bytes:,} bytes; "
                    f"downscale or recompress it"
                )
        return self.ok()


class ImageDecodeGuard(BaseGuard):
    """Bytes must be an allowed image format whose header is within the pixel limits (encoders.image.decode)."""

    name, on_fail = "input.image_decode", OnFail.REJECT

    def __init__(self, limits: ImageLimits) -> None:
        self.limits = limits

    def check(self, state: RequestState) -> GuardResult:
        decoded = 0
        for up in state.uploads:
            if up.image is not None or up.data is None:
                continue
            try:
                up.image = decode_image(up.data, self.limits, field=up.field).image
            except InvalidInput as exc:
                state.fault_field = exc.field or up.field
                return self.fail(f"{up.field}: {exc.reason}")
            decoded += 1
        return self.ok(action=f"decoded {_plural(decoded, 'image')}" if decoded else "")


class ImagePixelsGuard(BaseGuard):
    """Pixel count and longest side of every image, including ones handed over already decoded."""

    name, on_fail = "input.image_pixels", OnFail.REJECT

    def __init__(self, max_pixels: int, max_side: int) -> None:
        self.max_pixels, self.max_side = max_pixels, max_side

    def check(self, state: RequestState) -> GuardResult:
        for up in state.uploads:
            if up.image is None:
                state.fault_field = up.field
                return self.fail(f"{up.field} has no image; send image bytes or a decoded image")
            w, h = up.image.size
            if w * h > self.max_pixels or max(w, h) > self.max_side:
                state.fault_field = up.field
                return self.fail(
                    f"{up.field} is {w}x{h} = {w * h:,} pixels; the limits are {self.max_pixels:,} "
                    f"pixels and {self.max_side:,} on the longest side; downscale it"
                )
        return self.ok()


class QuestionLengthGuard(BaseGuard):
    name, on_fail = "input.question_length", OnFail.REJECT

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    def check(self, state: RequestState) -> GuardResult:
        state.question = state.question.strip()
        n = len(state.question)
        if n == 0:
            state.fault_field = "question"
            return self.fail("the question is empty; type what you want to know about the screenshots")
        if n > self.max_chars:
            state.fault_field = "question"
            return self.fail(
                f"the question is {n:,} characters; the limit is {self.max_chars:,}. "
                f"Shorten it, and attach long logs as screenshots or retrieved documents"
            )
        return self.ok(f"{n:,} characters")


class QuestionPiiGuard(BaseGuard):
    """Masks personal data in the question; the values come back only in this request's answer."""

    name, on_fail = "input.question_pii", OnFail.NOTE

    def check(self, state: RequestState) -> GuardResult:
        state.question, findings = state.masker.mask(state.question, restorable=True)
        return self.ok(action=f"masked {describe(findings)}" if findings else "")


class QuestionInjectionGuard(BaseGuard):
    """Instructions to the assistant in the question are removed; a question that is nothing else is blocked."""

    name, on_fail = "input.question_injection", OnFail.BLOCK

    def __init__(self, threshold: float = THRESHOLD) -> None:
        self.threshold = threshold

    def check(self, state: RequestState) -> GuardResult:
        cleaned, report = neutralise(state.question, threshold=self.threshold)
        if not report.flagged:
            return self.ok()
        kinds = ", ".join(report.kinds())
        if only_injection(cleaned):
            return self.fail(
                f"the question only gives the assistant instructions ({kinds}) and asks nothing about "
                f"the screenshots; ask a question about what they show"
            )
        state.question = cleaned
        return self.ok(
            f"instructions to the assistant found ({kinds}, score {report.score:.2f})",
            action=f"neutralised {_plural(len(report.findings), 'instruction')} in the question",
        )


class TopicGuard(BaseGuard):
    """Questions on a configured out-of-scope topic are blocked (keywords or phrases, whole words)."""

    name, on_fail = "input.topic", OnFail.BLOCK

    def __init__(self, topics: Sequence[str]) -> None:
        self.topics = tuple(t for t in (t.strip() for t in topics) if t)
        self._patterns = [
            re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, t.split())) + r"(?!\w)", re.IGNORECASE)
            for t in self.topics
        ]

    def check(self, state: RequestState) -> GuardResult:
        for topic, pattern in zip(self.topics, self._patterns, strict=True):
            if pattern.search(state.question):
                return self.fail(
                    f"questions about '{topic}' are out of scope for Ask; ask about the product "
                    f"shown in the screenshots, or contact the team that handles '{topic}'"
                )
        return self.ok()


class OcrLengthGuard(BaseGuard):
    """Caps the text of each image at what the prompt carries, so grounding sees what the model saw."""

    name, on_fail = "context.ocr_length", OnFail.NOTE

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    def check(self, state: ContextState) -> GuardResult:
        cut = []
        for i, img in enumerate(state.images):
            if len(img.ocr_text) > self.max_chars:
                state.images[i] = replace(img, ocr_text=img.ocr_text[: self.max_chars])
                cut.append(img.id)
        return self.ok(action=f"cut the text of {', '.join(cut)} to {self.max_chars:,} characters" if cut else "")


class OcrPiiGuard(BaseGuard):
    """Masks personal data in every image's text; only the uploads' values may be restored later
    (and the retrieved items', for a caller who may see personal data: `reveal_retrieved`)."""

    name, on_fail = "context.ocr_pii", OnFail.NOTE

    def check(self, state: ContextState) -> GuardResult:
        done = []
        for i, img in enumerate(state.images):
            text, findings = state.masker.mask(img.ocr_text, restorable=img.uploaded or state.reveal_retrieved)
            if findings:
                state.images[i] = replace(img, ocr_text=text)
                done.append(f"{describe(findings)} in {img.id}")
        return self.ok(action=f"masked {'; '.join(done)}" if done else "")


class OcrInjectionGuard(BaseGuard):
    """Instructions written in an image are data: they are removed from its text and noted."""

    name, on_fail = "context.ocr_injection", OnFail.NOTE

    def __init__(self, threshold: float = THRESHOLD) -> None:
        self.threshold = threshold

    def check(self, state: ContextState) -> GuardResult:
        done = []
        for i, img in enumerate(state.images):
            cleaned, report = neutralise(img.ocr_text, threshold=self.threshold)
            if report.flagged:
                removed = tuple(removed_sentences(img.ocr_text, report))
                state.images[i] = replace(img, ocr_text=cleaned, instructions=img.instructions + removed)
                done.append(f"{img.id} ({', '.join(report.kinds())})")
        if not done:
            return self.ok()
        return self.ok(
            f"text in {_plural(len(done), 'image')} gives the assistant instructions; it is treated as data",
            action=f"neutralised instructions in {'; '.join(done)}",
        )
