"""Versioned prompt templates for Ask, and rendering them into `lmm.types.Prompt`.

Templates live in `lmm/prompts/` as text files, one per version: "ask/v1" is `ask-v1.txt`
(the last "-" of the file name becomes "/"). A file holds three sections, each opened by a
line "=== name ===": `system` (the system prompt), `image` (one block per context image) and
`user` (the user turn). Placeholders are `{name}`; values are substituted in one pass, so text
from an image or a question that contains "{question}" stays literal.

What comes from outside (OCR text, the question, ids, sources) is untrusted: it is placed
between delimiters, and any delimiter tag inside it is defanged so it cannot close its block.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from encoders.common.errors import InvalidInput
from lmm.types import ContextImage, Prompt

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULT_PROMPT = "ask/v1"
SECTIONS = ("system", "image", "user")
# Tags the templates use to delimit untrusted text; occurrences inside values are defanged.
DELIMITER_TAGS = ("ocr_text", "question")
# Per-image OCR text longer than this is cut (small VLMs have 2-8k token contexts).
MAX_OCR_CHARS = 4000

_SECTION = re.compile(r"^=== *([a-z_]+) *===[ \t]*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_TAG = re.compile(r"<(/?)\s*(" + "|".join(DELIMITER_TAGS) + r")\b", re.IGNORECASE)


@dataclass(frozen=True)
class PromptTemplate:
    # Version id, e.g. "ask/v1".
    version: str
    # System prompt, used as is.
    system: str
    # Block rendered once per context image ({index} {count} {id} {source} {ocr}).
    image: str
    # User turn ({count} {images} {first_id} {question}).
    user: str
    # The file it was read from.
    path: Path
    # sha256 prefix of the file: changes whenever the wording does.
    digest: str


def list_prompts() -> list[str]:
    """Version ids of every template under lmm/prompts/, sorted."""
    return sorted(_version_of(p) for p in PROMPTS_DIR.glob("*.txt"))


def load_prompt(version: str = DEFAULT_PROMPT) -> PromptTemplate:
    """The template for `version` ("ask/v1"); unknown versions list the valid ones."""
    path = _path_of(version)
    if path is None or not path.is_file():
        raise InvalidInput(
            f"unknown prompt version {version!r}; valid versions: "
            f"{', '.join(list_prompts()) or 'none (lmm/prompts/ is empty)'}",
            field="prompt_version",
        )
    return parse(path.read_text(encoding="utf-8"), version=version, path=path)


@functools.lru_cache(maxsize=16)
def prompt_digest(version: str) -> str:
    """The content digest of a prompt version's file ('' when it is not a file of lmm/prompts/)."""
    try:
        return load_prompt(version).digest
    except InvalidInput:  # a custom renderer's version
        return ""


def parse(text: str, *, version: str, path: Path = Path("<string>")) -> PromptTemplate:
    """Split a template file into its sections; comment lines before the first section are dropped."""
    marks = list(_SECTION.finditer(text))
    sections: dict[str, str] = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        sections[mark.group(1)] = text[mark.end() : end].strip("\n")
    missing = [s for s in SECTIONS if s not in sections]
    unknown = [s for s in sections if s not in SECTIONS]
    if missing or unknown:
        raise ValueError(
            f"prompt template {path} must have exactly the sections {', '.join(SECTIONS)}; "
            f"missing {missing or 'none'}, unknown {unknown or 'none'}"
        )
    digest = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return PromptTemplate(version, sections["system"], sections["image"], sections["user"], path, digest)


def render(
    template: PromptTemplate | str,
    question: str,
    images: Sequence[ContextImage] = (),
    *,
    max_ocr_chars: int = MAX_OCR_CHARS,
) -> Prompt:
    """Fill the template: one block per image (id, source, OCR text), then the question.

    Images keep their order (uploads first is the caller's choice); their ids must be unique
    because they are what answers cite."""
    if isinstance(template, str):
        template = load_prompt(template)
    images = tuple(images)
    ids = [img.id for img in images]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InvalidInput(f"context image ids must be unique; repeated: {', '.join(duplicates)}", field="images")
    blocks = [
        _fill(
            template.image,
            {
                "index": str(n),
                "count": str(len(images)),
                "id": _one_line(img.id),
                "source": _one_line(img.source) or ("upload" if img.uploaded else "unknown"),
                "ocr": _ocr(img.ocr_text, max_ocr_chars),
            },
        )
        for n, img in enumerate(images, start=1)
    ]
    user = _fill(
        template.user,
        {
            "count": str(len(images)),
            "images": "\n\n".join(blocks) if blocks else "(no images)",
            "first_id": _one_line(images[0].id) if images else "image-id",
            "question": defang(question.strip()),
        },
    )
    return Prompt(version=template.version, system=template.system, user=user, images=images)


def defang(text: str) -> str:
    """Make delimiter tags inside untrusted text inert: "</ocr_text>" becomes "‹/ocr_text>"."""
    return _TAG.sub(lambda m: "\u2039" + m.group(1) + m.group(2), text)


def _ocr(text: str, limit: int) -> str:
    text = defang(text.strip())
    if not text:
        return "(no text found in this image)"
    if limit > 0 and len(text) > limit:
        return text[:limit] + f"\n[OCR text cut at {limit} characters]"
    return text


def _one_line(text: str) -> str:
    return defang(" ".join(text.split()))


def _fill(template: str, values: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"prompt template uses unknown placeholder {{{name}}}; known: {', '.join(values)}")
        return values[name]

    return _PLACEHOLDER.sub(sub, template)


def _version_of(path: Path) -> str:
    stem = path.stem
    return stem[::-1].replace("-", "/", 1)[::-1] if "-" in stem else stem


def _path_of(version: str) -> Path | None:
    if not re.fullmatch(r"[a-z0-9_-]+/[a-z0-9_.-]+", version or ""):
        return None
    name, _, rev = version.rpartition("/")
    return PROMPTS_DIR / f"{name}-{rev}.txt"
