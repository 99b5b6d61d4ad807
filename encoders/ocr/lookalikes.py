"""Look-alike characters that recognisers swap (O/0, l/1), fixed only where context leaves no doubt."""

from __future__ import annotations

import re

_HEX = re.compile(r"(?<![\w.])[0O][xX](?=[0-9a-fA-FoOlI]*[0-9a-fA-F])[0-9a-fA-FoOlI]{4,}(?!\w)")
_DIGITS = re.compile(r"(?<![A-Za-z0-9])\d[\doOilI]*[oOilI][\doOilI]*(?![A-Za-z0-9])")
_CAPS_ZERO = re.compile(r"(?<=[A-Z]{2})0(?=[A-Z_]|(?![A-Za-z0-9]))")
_ZERO_WORD = re.compile(r"(?<![A-Za-z0-9])0(?=[a-wyz][a-z]{2,})")
_CODE_CASE = re.compile(r"(?<![A-Za-z0-9])[A-Z][cosvwxz](?=\d{3,}(?![A-Za-z0-9]))")
_TO_DIGITS = str.maketrans("oOilI", "00111")


def fix_lookalikes(text: str) -> str:
    """Undo O/0 and l/1 swaps: "Oxcooooo7b" -> "0xc000007b" (hex after 0x), "1il" -> "111"
    (a run that starts with a digit and is all digits or look-alikes), "INF0" -> "INFO" (0 after
    two capitals, before a capital, "_" or the word's end), "0rder" -> "Order" (0 starting a
    word of three or more lower-case letters), "Ts2304" -> "TS2304" (a capital and a letter
    whose lower case looks like its capital, before 3+ digits)."""
    text = _HEX.sub(lambda m: "0x" + m.group()[2:].translate(_TO_DIGITS), text)
    text = _DIGITS.sub(lambda m: m.group().translate(_TO_DIGITS), text)
    text = _CAPS_ZERO.sub("O", text)
    text = _CODE_CASE.sub(lambda m: m.group().upper(), text)
    return _ZERO_WORD.sub("O", text)
