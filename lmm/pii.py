"""Masking personal data for one Ask request, and putting back only what was the asker's own.

`Masker` is per request. `mask()` swaps each distinct value for a stable placeholder
("[EMAIL_1]"; the same value always gets the same one) and remembers the value, so `unmask()`
can restore it in the answer. Values from retrieved items are masked with `restorable=False`:
they get placeholders but are never put back, because they are not the asker's own data
(unless the caller may see personal data: `AskPipeline.ask_async(reveal_retrieved=True)`).
Detection itself lives in `encoders.text.pii`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

from encoders.text.pii import KINDS, PiiFinding, find_pii, last_four

# What `Masker.mask` puts in place of a value: "[EMAIL_1]".
PLACEHOLDER = re.compile(r"\[(" + "|".join(KINDS) + r")_(\d+)\]")


def _normal(kind: str, value: str) -> str:
    """The form under which two spellings count as the same value."""
    if kind in ("CARD", "PHONE"):
        return ("+" if value.startswith("+") else "") + re.sub(r"\D", "", value)
    if kind in ("IBAN", "IP"):
        return value.replace(" ", "").upper()
    if kind in ("EMAIL", "NAME", "ADDRESS"):
        return " ".join(value.casefold().split())
    return value


class Masker:
    """Masks personal data for one request and restores only that request's own values.

    Never share a Masker between requests: it holds the raw values."""

    def __init__(self) -> None:
        self._placeholders: dict[tuple[str, str], str] = {}
        self._values: dict[str, str] = {}
        self._restorable: set[str] = set()
        self._counts: Counter[str] = Counter()

    def mask(self, text: str, *, restorable: bool = True) -> tuple[str, list[PiiFinding]]:
        """`text` with each value replaced by its placeholder, and the findings (placeholder set).

        `restorable=False` for text that is not the asker's (retrieved items): masked, never
        restored by `unmask`."""
        findings = find_pii(text)
        out, last, masked = [], 0, []
        for f in findings:
            placeholder = self._placeholder(f, restorable)
            out.append(text[last : f.start])
            out.append(placeholder)
            last = f.end
            masked.append(replace(f, placeholder=placeholder))
        out.append(text[last:])
        return "".join(out), masked

    def unmask(self, text: str) -> str:
        """Put back the request's own values; other placeholders stay as they are."""
        return PLACEHOLDER.sub(lambda m: self._values[m.group()] if m.group() in self._restorable else m.group(), text)

    def placeholder_of(self, finding: PiiFinding) -> str | None:
        """The placeholder already given to this value, or None if the request never had it."""
        return self._placeholders.get((finding.kind, _normal(finding.kind, finding.value)))

    def is_restorable(self, placeholder: str) -> bool:
        return placeholder in self._restorable

    def knows(self, placeholder: str) -> bool:
        return placeholder in self._values

    def card_text(self, placeholder: str) -> str:
        """A CARD placeholder as an answer may show it (last four digits), whoever's card it is."""
        return last_four(self._values.get(placeholder, ""))

    def counts(self) -> dict[str, int]:
        """Distinct values masked so far, per kind (no values: safe to log)."""
        return dict(self._counts)

    def _placeholder(self, f: PiiFinding, restorable: bool) -> str:
        key = (f.kind, _normal(f.kind, f.value))
        placeholder = self._placeholders.get(key)
        if placeholder is None:
            self._counts[f.kind] += 1
            placeholder = f"[{f.kind}_{self._counts[f.kind]}]"
            self._placeholders[key] = placeholder
            self._values[placeholder] = f.value
        if restorable:
            self._restorable.add(placeholder)
        return placeholder

    def __repr__(self) -> str:
        return f"Masker({self.counts()})"


ANSWER_PII_POLICIES = ("strict", "request")
# A question asks for a kind of personal data when it names it (checked on the masked question).
_ASKS_FOR = {
    "EMAIL": re.compile(r"\be-?mails?\b|\bmail\s+address", re.IGNORECASE),
    "PHONE": re.compile(
        r"\b(?:tele)?phone|\bmobile\b|\bcell\b|\bnumber\s+to\s+call|\bcontact\s+number|\bcall\s+back", re.IGNORECASE
    ),
    "IBAN": re.compile(r"\biban\b|\bbank\s+account|\baccount\s+number", re.IGNORECASE),
    "IP": re.compile(r"\bip\b|\bipv[46]\b|\bip\s+address|\bmac\b|\bphysical\s+address", re.IGNORECASE),
    "CARD": re.compile(r"\bcard\b|\bvisa\b|\bmastercard\b|\bamex\b|\bpaid\s+with|\bpay\b", re.IGNORECASE),
    "NAME": re.compile(r"\bnames?\b|\bwho\b|\bcard\s*holder|\bsigned\s+by", re.IGNORECASE),
    "ADDRESS": re.compile(
        r"\b(?:postal|street|home|shipping|billing|delivery|mailing|store|shop|office)\s+address"
        r"|\bwhere\b.{0,40}\b(?:live|lives|ship|shipped|deliver|delivered|located)\b",
        re.IGNORECASE,
    ),
}


def asked_kinds(question: str) -> set[str]:
    """The kinds of personal data a question asks for (secrets are never among them)."""
    return {kind for kind, pattern in _ASKS_FOR.items() if pattern.search(question)}
