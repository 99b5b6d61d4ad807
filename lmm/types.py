"""What flows through Ask: context images, prompts, drafts, verdicts, answers.

The model backends (`lmm.models`), the guards (`lmm.guards`) and the pipeline
(`lmm.pipeline`) all speak these types; nothing here imports torch or a client library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class ContextImage:
    """One image the answer may draw on: an upload or a retrieved item."""

    # Citation id shown to the model and returned in citations: "upload-1", or the item's id.
    id: str
    image: Image.Image
    # OCR text of the image, personal data already masked.
    ocr_text: str = ""
    # Where it came from ("upload", or the item's first source).
    source: str = ""
    # True for user uploads (they come first in the context).
    uploaded: bool = False
    # Sentences removed from `ocr_text` as instructions to the assistant (the model may still
    # read them in the pixels; the output guards check the answer does not carry them out).
    instructions: tuple[str, ...] = ()
    # What the item is ("image", "text", "audio_segment") and, for audio, its time range.
    modality: str = "image"
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: versioned system text plus the user turn."""

    # e.g. "ask/v1" (file name under lmm/prompts/ without extension).
    version: str
    system: str
    # The user turn: question (masked, injections neutralised) plus context descriptions.
    user: str
    images: tuple[ContextImage, ...] = ()

    @property
    def pixel_images(self) -> tuple[ContextImage, ...]:
        """The context items the model is shown as pictures (text items and transcript
        segments are in the prompt's text only)."""
        return tuple(img for img in self.images if img.modality == "image")


@dataclass(frozen=True)
class Draft:
    """What a model produced, before any output guard."""

    text: str
    model_id: str
    # Generated tokens (0 when the backend does not say).
    tokens: int = 0
    seconds: float = 0.0
    # Prompt tokens, images included (0 when the backend does not say).
    prompt_tokens: int = 0


class VisionLanguageModel(Protocol):
    """A backend that turns a prompt with images into a draft answer."""

    @property
    def model_id(self) -> str: ...

    def generate(self, prompt: Prompt, *, max_new_tokens: int) -> Draft: ...


class Verdict(str, Enum):
    ANSWERED = "answered"
    ABSTAINED = "abstained"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class GuardResult:
    """One guard's finding: passed or not, and why (a sentence a person can read)."""

    guard: str
    passed: bool
    reason: str = ""
    # For guards that change the text (masking, citation pruning): what they did.
    action: str = ""


@dataclass(frozen=True)
class Citation:
    """One item an answer relies on, with the text in it that supports the answer."""

    id: str
    source: str
    # The line of the item's text that best supports the answer (personal data as in the answer).
    snippet: str
    modality: str = "image"
    # For audio segments: where in the recording it was said.
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class Answer:
    text: str
    # Ids of context images the answer relies on (only ids that were in the context).
    citations: tuple[str, ...]
    verdict: Verdict
    guards: tuple[GuardResult, ...]
    model_id: str
    prompt_version: str
    # Seconds per step: "input_guards", "ocr", "retrieval", "draft", "output_guards", "total".
    timings: dict[str, float] = field(default_factory=dict)
    # Drafts tried (1 + retries).
    attempts: int = 1
    # Each citation's item, source and supporting snippet, in citation order.
    cited: tuple[Citation, ...] = ()
    # VLM tokens over all drafts: prompt and generated.
    tokens_in: int = 0
    tokens_out: int = 0
