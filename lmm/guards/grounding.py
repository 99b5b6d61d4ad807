"""Facts in an answer, and whether the context states them.

A fact is something a reader would act on and a model likes to invent: an error code (0x80070005,
E-42, ERR_CONNECTION_REFUSED, KB5034441), a number, a quoted string ('Press OK'), or a name of
two or more capitalised words (Windows Update, HP LaserJet Pro). A fact is grounded when it
appears in the source text, compared case-insensitively and with whitespace and quotes
normalised; codes also match with or without their separators (E-42 = E42). Codes and numbers
tolerate the characters OCR confuses (1/l/I/|, 0/O, 5/S, 8/B, rn/m): a draft quoting the
screen's "AUTH-1007" is grounded by OCR text reading "AUTH-l007", while a genuinely different
code (AB-7130 for AB-7310) still is not.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Technical terms with digits that are vocabulary, not facts to verify (compared casefolded).
COMMON_TERMS = frozenset(
    "ipv4 ipv6 2fa mfa 2g 3g 4g 5g 4k 8k 1080p 720p mp3 mp4 m4a h.264 h.265 x86 x64 arm64 32-bit 64-bit "
    "win32 win64 utf-8 utf-16 sha1 sha256 md5 oauth2 http2 http/2 http/3 wpa2 wpa3 802.11 usb2 usb3 "
    "usb-c 3d 2d a4 b2b b2c p2p e2e".split()
)


@dataclass(frozen=True)
class Fact:
    # "quote", "code", "number" or "name".
    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind} '{self.text}'"


_QUOTES = [
    re.compile(p)
    for p in (
        r"\"([^\"\n]{1,200})\"",
        r"“([^”\n]{1,200})”",
        r"„([^“”\n]{1,200})[“”]",
        r"«\s?([^»\n]{1,200}?)\s?»",
        r"‘([^’\n]{1,200})’",
        r"`([^`\n]{1,200})`",
        r"(?<![\w'])'([^\n]{1,200}?)'(?!\w)",
    )
]
_HEX = re.compile(r"\b0[xX][0-9A-Fa-f]+\b")
_CONSTANT = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
_CODE = re.compile(r"(?<![\w.-])(?=[\w.-]*\d)(?=[\w.-]*[^\W\d_])[^\W_]+(?:[-_.][^\W_]+)*(?![\w-])")
_ORDINAL = re.compile(r"^\d+(?:st|nd|rd|th|s)$", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,:/-]\d+)*)(?!\w)")
_LIST_MARKER = re.compile(r"^[ \t]*(?:\d{1,2}[.)]|[-*•]|#+)[ \t]+", re.MULTILINE)
_STEP = re.compile(r"\b(?:step|option|method|solution|way)\s+\d{1,2}\b", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_][\w'’&-]*")
_OPENS_SENTENCE = set(".!?:;\n\"'“‘«(•*-")


def extract_facts(text: str, *, common_terms: frozenset[str] = COMMON_TERMS) -> list[Fact]:
    """Quotes, codes, numbers and multi-word names in `text`, in that order of extraction.

    Each extracted span is blanked before the next kind is looked for, so a code inside a
    quote is checked once, as part of the quote."""
    facts: list[Fact] = []
    text = _STEP.sub(" ", _LIST_MARKER.sub("\n", text.replace("**", "").replace("__", "")))

    def take(pattern: re.Pattern[str], kind: str, group: int = 0) -> None:
        nonlocal text
        for m in pattern.finditer(text):
            value = m.group(group).strip().rstrip(".,;:!?")
            if kind == "code" and (_ORDINAL.match(value) or value.casefold() in common_terms):
                continue
            if value:
                facts.append(Fact(kind, value))
        text = pattern.sub(lambda m: " " * len(m.group()), text)

    for pattern in _QUOTES:
        take(pattern, "quote", 1)
    take(_HEX, "code")
    take(_CONSTANT, "code")
    take(_CODE, "code")
    take(_NUMBER, "number", 1)
    facts.extend(Fact("name", name) for name in _names(text))
    return facts


def _names(text: str) -> Iterable[str]:
    """Runs of two or more capitalised words; a sentence's first word does not count."""
    run: list[re.Match[str]] = []
    for m in [*_WORD.finditer(text), None]:
        joined = m is not None and run and text[run[-1].end() : m.start()] == " "
        capital = m is not None and m.group()[0].isupper() and m.group() not in ("I", "I'm", "I’m")
        if capital and (joined or not run):
            run.append(m)
            continue
        yield from _name_of(text, run)
        run = [m] if capital else []


def _name_of(text: str, run: list[re.Match[str]]) -> Iterable[str]:
    if run:
        before = text[: run[0].start()].rstrip()
        if not before or before[-1] in _OPENS_SENTENCE:
            run = run[1:]
    if len(run) >= 2:
        yield text[run[0].start() : run[-1].end()]


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[“”„«»]", '"', re.sub(r"[‘’`]", "'", text))
    return " ".join(text.split())


# Characters OCR mistakes for one another, by class (casefolded); "rn" reads as "m" and is folded first.
_LOOKALIKES = ("1li|", "0o", "5s", "8b")
# Codes of this many characters or more are found even inside a longer run of characters.
LONG_CODE = 8
_CLASS = {c: "[" + re.escape(group) + "]" for group in _LOOKALIKES for c in group}


def _char(c: str) -> str:
    return _CLASS.get(c, re.escape(c))


def fold_lookalikes(text: str) -> str:
    """Casefolded text with "rn" read as "m" (the one confusable that spans two characters)."""
    return text.casefold().replace("rn", "m")


def is_grounded(fact: Fact, source: str) -> bool:
    """`source` must already be `normalise`d and `fold_lookalikes`d (do it once for all facts)."""
    value = fold_lookalikes(normalise(fact.text))
    if fact.kind == "number":
        # Exactly, even inside a code ("42" in "E42"); with look-alikes only as a word of its own
        # (else "10" would be found in "hello").
        return any(
            re.search(rf"(?<!\d){re.escape(v)}(?!\d)", source)
            or re.search(r"(?<![^\W_])" + "".join(map(_char, v)) + r"(?![^\W_])", source)
            for v in {value, value.replace(",", "")}
        )
    if fact.kind == "code":
        parts = [_char(c) for c in value if c.isalnum()]
        body = r"[-_\s.]?".join(parts)
        if len(parts) >= LONG_CODE:  # OCR drops spaces ("Error0x80070005:"): long codes may touch words
            return re.search(body, source) is not None
        return re.search(r"(?<![^\W_])" + body + r"(?![^\W_])", source) is not None
    return value in source


def ungrounded(facts: Sequence[Fact], sources: Iterable[str]) -> list[Fact]:
    """The facts that appear in none of the sources, each listed once."""
    source = fold_lookalikes(normalise("\n".join(sources)))
    missing: list[Fact] = []
    for fact in facts:
        if fact not in missing and not is_grounded(fact, source):
            missing.append(fact)
    return missing
