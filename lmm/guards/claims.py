"""Status claims: does the answer say the opposite of what the cited text says?

Grounding checks codes, numbers, quotes and names; a draft can still contradict the screen
with plain words ("active" where it says "revoked", "online" where it says "offline"). Each
status pair below has two poles; a mention's pole flips when it is negated ("not revoked",
"isn't online", "no longer active"). A yes/no answer asserts (or denies) the status the
question asks about. A claim contradicts the context when the context holds only the other
pole of the same pair.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# name -> (positive pole, negative pole); the words of each pole, casefolded.
PAIRS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    name: (frozenset(pos.split()), frozenset(neg.split()))
    for name, pos, neg in (
        ("activity", "active activated live", "inactive revoked expired suspended deactivated cancelled canceled"),
        ("connectivity", "online connected reachable up", "offline disconnected unreachable down"),
        ("enablement", "enabled on", "disabled off"),
        (
            "outcome",
            "succeeded successful success passed completed complete ok",
            "failed failure unsuccessful error errored aborted incomplete",
        ),
        ("payment", "paid settled", "unpaid due overdue outstanding pending declined"),
        ("validity", "valid verified", "invalid unverified"),
        ("permission", "allowed granted approved accepted permitted", "denied blocked rejected refused forbidden"),
        ("lock", "unlocked", "locked"),
        ("availability", "available", "unavailable"),
        ("installation", "installed", "uninstalled"),
    )
}
# "up"/"down"/"on"/"off"/"ok"/"due"/"complete" are ordinary words too: they count only next to a
# status verb ("is down", "turned off", "payment due").
_WEAK = frozenset("up down on off ok due complete error pending".split())
_STATUS_VERB = re.compile(
    r"\b(?:is|are|was|were|be|been|being|shows?|showing|says?|status|state|now|turned|"
    r"switched|went|goes|remains?|stays?|currently|marked|set\s+to)\s*:?\s*$"
)
_NEGATION = re.compile(
    r"\b(?:not|no|never|isn't|aren't|wasn't|weren't|doesn't|don't|didn't|hasn't|haven't|"
    r"cannot|can't|won't|no\s+longer|neither|nor)\b(?:\s+\w+){0,2}\s*$"
)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_YES = re.compile(r"^\W*(yes|yeah|yep|correct|it\s+is|they\s+are)\b", re.IGNORECASE)
_NO = re.compile(r"^\W*(no|nope|it\s+is\s+not|it\s+isn't|they\s+are\s+not)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Claim:
    pair: str
    positive: bool  # the pole asserted, after negation
    word: str  # the word as written, for the reason

    def describe(self) -> str:
        return self.word


def claims(text: str) -> list[Claim]:
    """Status claims in `text`, each with its pole after negation."""
    lowered = text.casefold().replace("’", "'")
    out = []
    for m in _WORD.finditer(lowered):
        word = m.group()
        for name, (pos, neg) in PAIRS.items():
            if word not in pos and word not in neg:
                continue
            before = lowered[max(0, m.start() - 40) : m.start()]
            if word in _WEAK and not _STATUS_VERB.search(before):
                continue
            negated = _NEGATION.search(before) is not None
            out.append(Claim(name, (word in pos) != negated, ("not " if negated else "") + word))
    return out


def answer_claims(answer: str, question: str) -> list[Claim]:
    """The answer's claims, plus the question's status when the answer is a bare yes or no."""
    found = claims(answer)
    said_yes, said_no = _YES.search(answer), _NO.search(answer)
    if said_yes or said_no:
        for c in claims(question):
            if not any(a.pair == c.pair for a in found):
                positive = c.positive if said_yes else not c.positive
                found.append(Claim(c.pair, positive, f"{'yes' if said_yes else 'no'} to '{c.word}'"))
    return found


def contradictions(answer: str, question: str, sources: Iterable[str]) -> list[tuple[Claim, Claim]]:
    """(answer claim, context claim) pairs where the context states only the opposite pole."""
    context: dict[str, set[bool]] = {}
    example: dict[tuple[str, bool], Claim] = {}
    for source in sources:
        for c in claims(source):
            context.setdefault(c.pair, set()).add(c.positive)
            example.setdefault((c.pair, c.positive), c)
    out = []
    for c in answer_claims(answer, question):
        poles = context.get(c.pair)
        if poles and c.positive not in poles:
            out.append((c, example[c.pair, not c.positive]))
    return out
