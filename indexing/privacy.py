"""Personal data in stored text (OCR, transcripts, indexed texts): what is masked before it is
stored, and what is shown only to callers with the `personal_data` right.

    privacy:
      stored_masked: [CARD]                    # default: card numbers keep only their last four
      shown_masked: [EMAIL, PHONE, IBAN, IP, SECRET, NAME, ADDRESS]   # default: all other kinds
      collections:                             # per collection: a name, "prefix*" or "*"
        "hr-*": {stored_masked: [CARD, IBAN, SECRET]}

`Index.upsert` applies `stored_masked` to every item it writes, online and batch alike, so what
is masked at rest is neither stored, keyword-searchable nor returned to anyone. `shown_masked`
is applied by the gateway to the text of hits and items for callers without the right, and to
their keyword queries (personal data cannot be used to find an item either). A rule for a
collection replaces only the keys it sets; the longest matching pattern wins.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from encoders.common.errors import InvalidInput
from encoders.text.pii import KINDS, find_pii, redact

STORED_MASKED = frozenset({"CARD"})
SHOWN_MASKED = frozenset(KINDS) - STORED_MASKED


@dataclass(frozen=True)
class Rule:
    stored_masked: frozenset[str] = STORED_MASKED
    shown_masked: frozenset[str] = SHOWN_MASKED

    def __post_init__(self) -> None:
        for key in ("stored_masked", "shown_masked"):
            unknown = sorted(set(getattr(self, key)) - set(KINDS))
            if unknown:
                raise InvalidInput(
                    f"privacy.{key}: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}",
                    field=f"privacy.{key}",
                )


@dataclass(frozen=True)
class Privacy:
    default: Rule = Rule()
    # pattern -> rule, pattern a collection name, "prefix*" or "*".
    collections: dict[str, Rule] = field(default_factory=dict)
    # Key of `digest` for texts that hold personal data; b"": their plain sha256.
    content_key: bytes = field(default=b"", repr=False)

    @classmethod
    def from_config(cls, raw: dict, content_key: bytes = b"") -> Privacy:
        """From the `privacy:` mapping of the config (services.config.PrivacySettings.model_dump())."""
        default = _rule(raw, Rule())
        rules = {pattern: _rule(sub, default) for pattern, sub in (raw.get("collections") or {}).items()}
        return cls(default, rules, content_key)

    def personal_terms(self, collection: str, text: str | None) -> list[int]:
        """Keyword indices that stand for the whole values of `shown_masked` kinds in `text`
        (an address, a phone number), keyed with the content key so that only this service can
        make them. An item's keyword vector holds them instead of the values' words; a query
        holds them when it carries such a value, which only a caller with the right can send
        (everyone else's queries are masked first by the same rule). So a support agent with
        the right finds a customer's receipts by the address, and no piece of it finds
        anything for anyone."""
        if not self.content_key or not text:
            return []
        kinds = self.rule(collection).shown_masked
        return sorted({self._term(f.kind, f.value) for f in find_pii(text) if f.kind in kinds})

    def _term(self, kind: str, value: str) -> int:
        # Case, spaces and punctuation do not matter: "(555) 010-3344" is "555-010-3344".
        normal = "".join(ch for ch in value.casefold() if ch.isalnum())
        mac = hmac.new(self.content_key, f"personal:{kind}:{normal}".encode(), hashlib.sha256).digest()
        return int.from_bytes(mac[:4], "big")

    def digest(self, collection: str, text: str) -> str:
        """The content digest of a text item (its `sha256` field and, without a caller id, its
        id). A text that holds personal data the rule masks gets a keyed digest (HMAC-SHA256):
        a plain sha256 of it would let anyone who sees the masked text test guesses of the
        hidden values (a phone number has only 10^10) and hand the full card number to
        everyone. Other texts keep their plain sha256, as before."""
        data = text.encode()
        rule = self.rule(collection)
        if self.content_key and redact(text, rule.stored_masked | rule.shown_masked) != text:
            return hmac.new(self.content_key, data, hashlib.sha256).hexdigest()
        return hashlib.sha256(data).hexdigest()

    def rule(self, collection: str) -> Rule:
        best, length = self.default, -1
        for pattern, rule in self.collections.items():
            if pattern == collection:
                return rule
            prefix = pattern.removesuffix("*")
            if pattern.endswith("*") and collection.startswith(prefix) and len(prefix) > length:
                best, length = rule, len(prefix)
        return best

    def stored(self, collection: str, text: str | None) -> str | None:
        """`text` as it may be stored in `collection`."""
        if not text:
            return text
        return redact(text, self.rule(collection).stored_masked, label="removed")

    def shown(self, collection: str, text: str) -> str:
        """`text` of `collection` as a caller without the `personal_data` right sees it."""
        return redact(text, self.rule(collection).shown_masked)


def _rule(raw: dict, base: Rule) -> Rule:
    def kinds(key: str) -> frozenset[str]:
        value = raw.get(key)
        return getattr(base, key) if value is None else frozenset(str(k).upper() for k in value)

    return Rule(kinds("stored_masked"), kinds("shown_masked"))
