"""Output guards: a draft becomes an answer only if every one of these lets it through.

Order matters and is fixed by `output_guards` in `lmm.pipeline`: clean and judge the form
(well formed), prune citations to the context's ids, apply the personal-data policy (before
any guard quotes the draft in a reason), refuse instructions carried out and prompt leaks
(`lmm.guards.answer`), attribute the answer to the items that support it, check facts and
status claims against that text, the blocked-word list, and last the length cap (which may
cut the text).

Citations are image ids in square brackets, as the prompt asks: "[upload-1]", also accepted
as "[source: upload-1]" or "[upload-1, item-7]"; they are rewritten as "[id]".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from encoders.text.pii import describe, find_pii, last_four
from lmm.guards.base import BaseGuard, OnFail
from lmm.guards.grounding import COMMON_TERMS, extract_facts, ungrounded
from lmm.injection import REMOVED
from lmm.pii import PLACEHOLDER, Masker, asked_kinds
from lmm.types import ContextImage, GuardResult


@dataclass
class DraftState:
    """One draft on its way through the output guards; guards that clean it edit `text`."""

    text: str
    # The question as the model saw it (masked, instructions neutralised).
    question: str
    # The context images as the model saw them (uploads first), with their cleaned OCR text.
    context: Sequence[ContextImage]
    masker: Masker
    # Context ids the text cites, in order of first citation (set by CitationGuard, kept current after).
    citations: list[str] = field(default_factory=list)
    # The system prompt the model was given (the leak guard compares the answer with it).
    system: str = ""

    @property
    def context_ids(self) -> list[str]:
        return [img.id for img in self.context]

    def visible_text(self, img: ContextImage) -> str:
        """An item's text as an answer may quote it: masked cards read as their last four digits."""
        return PLACEHOLDER.sub(
            lambda m: self.masker.card_text(m.group()) if m.group(1) == "CARD" else m.group(), img.ocr_text
        )


_ABSTAIN = re.compile(
    r"\bI\s*(?:do\s+not|don't|don’t|cannot|can't|can’t|am\s+unable\s+to|am\s+not\s+able\s+to|could\s+not|couldn't)"
    r"\s+(?:know|tell|determine|see|find|answer|say|verify|confirm|read|identify)\b"
    r"|\bI(?:'m|’m|\s+am)\s+not\s+sure\b|\bnot\s+enough\s+information\b|\bunable\s+to\s+(?:determine|answer|tell|find)\b"
    r"|\b(?:screenshots?|images?|context|text)\s+(?:do(?:es)?\s+not|don't|doesn't|don’t|doesn’t)\s+"
    r"(?:show|contain|say|include|mention|tell)\b",
    re.IGNORECASE,
)
# Abstentions are short; a long answer that says "I'm not sure" somewhere is still an answer.
MAX_ABSTENTION_CHARS = 400


def is_abstention(text: str) -> bool:
    """'I don't know'-like drafts: allowed, returned as abstained, and held to carry no unverified facts."""
    return len(text) <= MAX_ABSTENTION_CHARS and _ABSTAIN.search(text) is not None


_BRACKET = re.compile(
    r"\s?\[\s*(?:(?P<prefix>cite|citation|source|sources|ref|id|image|img)\s*[:=]\s*)?"
    r"(?P<body>[^\[\]\n]{1,200}?)\s*\]"
)
_ID_LIKE = re.compile(r"^(?:upload-\d+|[\w.:/-]*[-_:][\w.:/-]*\d[\w.:/-]*)$")
_REMOVED_MARK = re.compile(r"\[[a-z]+ removed\]|" + re.escape(REMOVED))


def _citation_ids(match: re.Match[str], known: set[str]) -> tuple[list[str], list[str]] | None:
    """(known ids, unknown ids) in a bracket, or None when the bracket is not a citation ("[Enter]")."""
    body = match.group("body")
    if PLACEHOLDER.fullmatch(match.group().strip()) or _REMOVED_MARK.fullmatch(match.group().strip()):
        return None
    ids = [p.strip() for p in re.split(r"[,;]|\s+and\s+", body) if p.strip()]
    if not ids or not (match.group("prefix") or all(i in known or _ID_LIKE.match(i) for i in ids)):
        return None
    return [i for i in ids if i in known], [i for i in ids if i not in known]


def cited_ids(text: str, context_ids: Sequence[str]) -> list[str]:
    """Context ids cited in `text`, in order of first citation."""
    known, out = set(context_ids), []
    for m in _BRACKET.finditer(text):
        ids = _citation_ids(m, known)
        out.extend(i for i in (ids[0] if ids else []) if i not in out)
    return out


def strip_markup(text: str, context_ids: Sequence[str] = ()) -> str:
    """The text without citations, placeholders and removal marks: what facts are read from."""
    text, known = _REMOVED_MARK.sub(" ", PLACEHOLDER.sub(" ", text)), set(context_ids)
    return _BRACKET.sub(lambda m: " " if _citation_ids(m, known) is not None else m.group(), text)


_SPECIAL_TOKENS = re.compile(
    r"<\|[^|<>\n]{1,40}\|>|</?(?:s|pad|unk|eos|bos|image|end_of_utterance|end_of_turn|start_of_turn"
    r"|fake_token_around_image|global-img|row_\d+_col_\d+)>|\[(?:PAD|UNK|CLS|SEP|MASK)\]|^\s*Assistant\s*:\s*",
    re.IGNORECASE,
)
_REPEATED_CHAR = re.compile(r"(\S)\1{15,}")
_REPEATED_PHRASE = re.compile(r"\b(\w+(?:\W+\w+){0,4}?)(?:\W+\1\b){4,}", re.IGNORECASE)
_NOISE_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn"}


def _is_noise(ch: str) -> bool:
    return ch == "\ufffd" or (ch not in "\n\t" and unicodedata.category(ch) in _NOISE_CATEGORIES)


class WellFormedGuard(BaseGuard):
    """Strips special tokens and stray control characters; fails drafts that are not language."""

    name, on_fail = "output.well_formed", OnFail.RETRY
    retry_hint = "Answer in plain sentences."

    def check(self, state: DraftState) -> GuardResult:
        raw = state.text
        text = _SPECIAL_TOKENS.sub("", raw)
        noise = sum(map(_is_noise, text))
        if noise > 0.05 * max(len(text), 1):
            return self.fail(f"the draft is {noise / len(text):.0%} non-printable characters")
        text = "".join(ch for ch in text if not _is_noise(ch)).strip()
        state.text = text
        action = "stripped special tokens or control characters" if text != raw.strip() else ""
        problem = self._problem(text)
        return self.fail(problem, action) if problem else self.ok(action=action)

    @staticmethod
    def _problem(text: str) -> str:
        if not any(ch.isalnum() for ch in text):
            return "the draft is empty or has no words"
        sample = text[:20_000]
        if _REPEATED_CHAR.search(sample) or _REPEATED_PHRASE.search(sample):
            return "the draft repeats the same characters or words over and over"
        words = re.findall(r"\w+", sample.casefold())
        if len(words) >= 30 and len(set(words)) / len(words) < 0.3:
            return f"the draft uses {len(set(words))} distinct words over {len(words)}: repeated garbage"
        body = re.sub(r"\s", "", strip_markup(sample))
        if len(body) >= 20 and sum(ch.isalpha() for ch in body) / len(body) < 0.4:
            return "the draft is mostly symbols and digits, not sentences"
        return ""


class CitationGuard(BaseGuard):
    """Keeps citations of context ids; removes the others and says which."""

    name, on_fail = "output.citations", OnFail.NOTE

    def check(self, state: DraftState) -> GuardResult:
        known, removed = set(state.context_ids), []

        def rewrite(m: re.Match[str]) -> str:
            ids = _citation_ids(m, known)
            if ids is None:
                return m.group()
            removed.extend(ids[1])
            return "".join(f" [{i}]" for i in ids[0])

        state.text = _BRACKET.sub(rewrite, state.text).strip()
        state.citations = cited_ids(state.text, state.context_ids)
        action = f"removed citation(s) of ids not in the context: {', '.join(removed)}" if removed else ""
        return self.ok(f"cites {', '.join(state.citations) or 'nothing'}", action)


class OutputPiiGuard(BaseGuard):
    """Personal data in a draft, by policy (`AskOptions.answer_pii`):

    - card numbers never leave in full, whatever their source: "card ending 1111";
    - secrets never leave;
    - other kinds (e-mail, phone, IBAN, IP) leave only when the request itself contained the
      value and, under "strict" (the default), the question asks for that kind; they become
      the request's placeholder, restored by the pipeline at the very end;
    - everything else is replaced by "[kind removed]", and the guard says what it did."""

    name, on_fail = "output.pii", OnFail.NOTE

    def __init__(self, policy: str = "strict") -> None:
        self.policy = policy

    def _allowed(self, kind: str, question: str) -> bool:
        return kind not in ("SECRET", "CARD") and (self.policy == "request" or kind in asked_kinds(question))

    def check(self, state: DraftState) -> GuardResult:
        text, kept, removed, cards = state.text, [], [], 0
        for f in reversed(find_pii(text)):
            placeholder = state.masker.placeholder_of(f)
            if f.kind == "CARD":
                cards += 1
                text = text[: f.start] + last_four(f.value) + text[f.end :]
            elif (
                placeholder is not None
                and state.masker.is_restorable(placeholder)
                and self._allowed(f.kind, state.question)
            ):
                kept.append(f)
                text = text[: f.start] + placeholder + text[f.end :]
            else:
                removed.append(f)
                text = text[: f.start] + f"[{f.kind.lower()} removed]" + text[f.end :]
        foreign = 0
        for m in reversed(list(PLACEHOLDER.finditer(text))):
            kind = m.group(1)
            if kind == "CARD":
                cards += 1
                text = text[: m.start()] + state.masker.card_text(m.group()) + text[m.end() :]
            elif not (state.masker.is_restorable(m.group()) and self._allowed(kind, state.question)):
                foreign += 1
                text = text[: m.start()] + f"[{kind.lower()} removed]" + text[m.end() :]
        state.text = text
        parts = [
            f"removed {describe(removed)} the question did not ask for or the request did not contain"
            if removed
            else "",
            f"removed {foreign} placeholder(s) of data the answer may not show" if foreign else "",
            f"shortened {cards} card number(s) to the last four digits" if cards else "",
            f"kept {describe(kept)} from the request" if kept else "",
        ]
        return self.ok(action="; ".join(p for p in parts if p))


class GroundingGuard(BaseGuard):
    """Codes, numbers, quotes and names must appear in the question or in the text of a cited image."""

    name, on_fail = "output.grounding", OnFail.RETRY
    retry_hint = (
        "Use only codes, numbers, quoted text and names that appear in the question or in the OCR text "
        'of the images you cite; if the context does not contain the answer, say "I don\'t know".'
    )

    def __init__(self, *, uncited_uses_all_context: bool = False, common_terms: frozenset[str] = COMMON_TERMS) -> None:
        # With citations optional, an answer that cites nothing is held to the whole context.
        self.uncited_uses_all_context = uncited_uses_all_context
        self.common_terms = common_terms

    def check(self, state: DraftState) -> GuardResult:
        facts = extract_facts(strip_markup(state.text, state.context_ids), common_terms=self.common_terms)
        cited = [img for img in state.context if img.id in state.citations]
        if not cited and self.uncited_uses_all_context:
            cited = list(state.context)
        missing = ungrounded(facts, [state.question, *(state.visible_text(img) for img in cited)])
        where = f"the question or the text of {', '.join(img.id for img in cited)}" if cited else "the question"
        if missing:
            listed = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            return self.fail(f"the draft states {len(missing)} fact(s) found neither in {where}: {listed}")
        return self.ok(f"{len(facts)} fact(s) found in {where}")


class CitationRequiredGuard(BaseGuard):
    """An answer (not an abstention) given with context must cite at least one context image."""

    name, on_fail = "output.citation_required", OnFail.RETRY
    retry_hint = "Cite the images you rely on by their ids in square brackets, like [upload-1]."

    def check(self, state: DraftState) -> GuardResult:
        if state.citations or not state.context or is_abstention(state.text):
            return self.ok()
        return self.fail(f"the draft cites none of the context images ({', '.join(state.context_ids)})")


class BlockedWordsGuard(BaseGuard):
    """Configured words or phrases (whole words, any case) must not appear in an answer."""

    name, on_fail = "output.blocked_words", OnFail.RETRY
    retry_hint = "Keep the answer strictly professional and on the product shown."

    def __init__(self, words: Sequence[str]) -> None:
        self.words = tuple(w for w in (w.strip() for w in words) if w)
        self._pattern = (
            re.compile(
                r"(?<!\w)(?:" + "|".join(r"\s+".join(map(re.escape, w.split())) for w in self.words) + r")(?!\w)",
                re.IGNORECASE,
            )
            if self.words
            else None
        )

    def check(self, state: DraftState) -> GuardResult:
        found = sorted({m.group().casefold() for m in self._pattern.finditer(state.text)}) if self._pattern else []
        if found:
            return self.fail(f"the draft contains blocked word(s): {', '.join(found)}")
        return self.ok()


_SENTENCE_END = re.compile(r"[.!?](?:\s*\[[^\[\]\n]{1,200}\])*(?=\s|$)|\n")


class LengthGuard(BaseGuard):
    """Over the cap, the text is cut after its last whole sentence that fits; with none, it fails."""

    name, on_fail = "output.length", OnFail.RETRY
    retry_hint = "Answer in at most three short sentences."

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    def check(self, state: DraftState) -> GuardResult:
        n = len(state.text)
        if n <= self.max_chars:
            return self.ok()
        ends = [m.end() for m in _SENTENCE_END.finditer(state.text, 0, self.max_chars + 1) if m.end() <= self.max_chars]
        if not ends:
            return self.fail(
                f"the draft is {n:,} characters and its first sentence alone exceeds the "
                f"{self.max_chars:,}-character limit"
            )
        state.text = state.text[: ends[-1]].rstrip()
        state.citations = cited_ids(state.text, state.context_ids)
        return self.ok(action=f"cut from {n:,} to {len(state.text):,} characters at a sentence boundary")
