"""Names and postal addresses, by rule (the other kinds live in `encoders.text.pii`).

A name is two or three capitalised words (or ALL CAPS, as receipts print them) that a label
introduces: "Card holder: ROBERT OKAFOR", "Ship to: Anna Kowalski", "Customer: Mr. Daniel
O'Brien", "this is John Smith", "thanks, Priya Natarajan", "owner Wei Zhang". Free-standing
capitalised words are product names and headings far more often than people on screenshots,
so they are left alone: grounding needs them.

A postal address is a house number, street words and a street type ("1289 Orchard Ave",
"221B Baker Street"), or a German-style street and number ("Hauptstraße 5"), with the city,
state and postcode that follow on the same line.

Measured on tests/fixtures/pii_labelled.json with `python -m benchmarks.bench_pii`.
"""

from __future__ import annotations

import re

_UPPER, _LOWER = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_NAME_WORD = rf"(?:[{_UPPER}](?:[{_LOWER}]+|['’][{_UPPER}][{_LOWER}]+)(?:-[{_UPPER}][{_LOWER}]+)?|[{_UPPER}]{{2,}}(?:['’][{_UPPER}]+)?)"
_LABELS = (
    r"card\s*holder|cardholder|holder|name|full\s+name|customer|client|contact|ship\s+to|bill\s+to|billed\s+to|"
    r"sold\s+to|deliver\s+to|attn|attention|recipient|owner|assignee|agent|signed(?:\s+by)?|dear|"
    r"thanks|thank\s+you|regards|sincerely|cheers|this\s+is|my\s+name\s+is|i\s+am|i'm|from|by|cc"
)
_TITLE = r"(?:(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+)?"
_NAME = re.compile(rf"(?i:\b(?:{_LABELS}))\s*[:,]?[ \t]+{_TITLE}(?P<name>{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{1,2}})")
# Words that look like a name's but are not (headings, UI, days).
_NOT_NAMES = frozenset(
    "the thank thanks order total subtotal receipt invoice error update sign password phone email "
    "monday tuesday wednesday thursday friday saturday sunday support team sales service "
    "customer agent type message send".split()
)

_STREET_TYPES = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Square|Sq|"
    r"Terrace|Parkway|Pkwy|Highway|Hwy|Close|Crescent|Row"
)
_CITY_WORD = rf"(?!(?:Tel|Phone|Fax|Email|Mobile|Open|Hours)\b)[{_UPPER}][{_LOWER}]+"
_CITY_TAIL = (
    rf"(?:,[ \t]*{_CITY_WORD}(?:[ \t]+{_CITY_WORD})*)?"  # , San Francisco
    r"(?:,?[ \t]*[A-Z]{2}[ \t]+\d{5}(?:-\d{4})?)?"  # , CA 94105
    r"(?:[ \t]+[A-Z]{1,2}\d[A-Z\d]?[ \t]*\d[A-Z]{2})?"
)  # London NW1 6XE
_ADDRESS = re.compile(
    rf"\b\d{{1,5}}[A-Z]?[ \t]+(?:[{_UPPER}][{_LOWER}]+[ \t]+){{1,3}}(?:{_STREET_TYPES})\b\.?{_CITY_TAIL}"
    rf"|\b[{_UPPER}][{_LOWER}]+(?:straße|strasse|weg|platz|allee|gasse|ring|damm)[ \t]+\d{{1,4}}[a-z]?"
    rf"(?:,[ \t]*\d{{4,5}}[ \t]+[{_UPPER}][{_LOWER}]+)?"
)


def names(text: str) -> list[tuple[int, int, str]]:
    """(start, end, value) of each labelled name."""
    out = []
    for m in _NAME.finditer(text):
        words = m.group("name").split()
        while words and words[-1].casefold() in _NOT_NAMES:
            words.pop()
        if len(words) >= 2 and not any(w.casefold() in _NOT_NAMES for w in words):
            value = " ".join(words)
            start = m.start("name")
            out.append((start, start + len(value), value))
    return out


def addresses(text: str) -> list[tuple[int, int, str]]:
    """(start, end, value) of each postal address."""
    out = []
    for m in _ADDRESS.finditer(text):
        value = m.group().rstrip(" ,.")
        out.append((m.start(), m.start() + len(value), value))
    return out
