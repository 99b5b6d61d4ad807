"""Names and postal addresses (encoders.text.pii_people) and their place in the masker, with near misses:
product names, headings and order numbers are not people or places."""

from __future__ import annotations

import pytest

from encoders.text.pii import find_pii
from lmm.pii import Masker, asked_kinds


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("Card holder: ROBERT OKAFOR", "NAME", "ROBERT OKAFOR"),
        ("Ship to: Anna Kowalski, 221B Baker Street", "NAME", "Anna Kowalski"),
        ("Customer: Mr. Daniel O'Brien, phone", "NAME", "Daniel O'Brien"),
        ("Hi, this is John Smith from accounting", "NAME", "John Smith"),
        ("thanks, Priya Natarajan", "NAME", "Priya Natarajan"),
        ("1289 Orchard Ave, Springfield Tel (555) 010-3344", "ADDRESS", "1289 Orchard Ave, Springfield"),
        ("to 500 Market Street, San Francisco, CA 94105.", "ADDRESS", "500 Market Street, San Francisco, CA 94105"),
        ("221B Baker Street, London NW1 6XE", "ADDRESS", "221B Baker Street, London NW1 6XE"),
        ("Hauptstraße 5, 10115 Berlin", "ADDRESS", "Hauptstraße 5, 10115 Berlin"),
    ],
)
def test_found(text, kind, value):
    assert (kind, value) in [(f.kind, f.value) for f in find_pii(text)]


@pytest.mark.parametrize(
    "text",
    [
        "Windows Update\nSome updates failed to install",  # headings
        "QuickLedger.exe - Application Error",
        "Customer\nHi, my order ORD-77410 has not arrived yet.",  # a label on another line
        "Support chat - Order help",
        "Feature update to Windows 11, version 24H2",
        "Job 3 of 5: Quarterly_Report.pdf",
        "Printer PrintJet 4720 Series",
        "Load Letter paper into Tray 2",
    ],
)
def test_not_people_or_places(text):
    assert [f for f in find_pii(text) if f.kind in ("NAME", "ADDRESS")] == []


def test_masked_and_restored_like_other_kinds():
    masker = Masker()
    masked, found = masker.mask("Card holder: ROBERT OKAFOR, 42 Elm Street, Portland, OR 97201")
    assert masked == "Card holder: [NAME_1], [ADDRESS_1]" and len(found) == 2
    assert masker.unmask(masked).endswith("Portland, OR 97201")
    assert asked_kinds("Who is the card holder?") == {"NAME", "CARD"}
    assert asked_kinds("What is the shipping address?") == {"ADDRESS"}
    assert "ADDRESS" not in asked_kinds("Which email address is used to sign in?")
