"""Personal data in text: find it, and redact it by kind.

`find_pii(text)` lists emails, phone numbers, payment cards, IBANs, secrets (API keys, tokens,
"password: X" pairs, high-entropy strings), IP addresses, names and postal addresses, each with
its span. Detection is deliberately conservative where a false hit would damage a support
answer: a card must pass Luhn, an IBAN its country length and mod-97, and a phone number is
refused when it looks like an error code, a date, a version or an IP address.

`redact(text, kinds)` replaces the findings of some kinds: cards by their last four digits
("card ending 1111"), the others by "[email hidden]" and the like. The store uses it for text
at rest and the gateway for text in responses (`indexing.privacy`); the Ask pipeline masks
with restorable placeholders instead (`lmm.pii.Masker`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass, field

from encoders.text.pii_people import addresses, names

# Kinds, also the placeholder prefixes. Order = priority when two detections overlap.
KINDS = ("SECRET", "EMAIL", "IBAN", "CARD", "IP", "PHONE", "NAME", "ADDRESS")


@dataclass(frozen=True)
class PiiFinding:
    # One of KINDS.
    kind: str
    start: int
    end: int
    # The matched text; kept out of repr so findings can be logged.
    value: str = field(repr=False)
    # Finer label: "aws_access_key", "password_pair", "ipv6", ...
    detail: str = ""
    # Set by Masker.mask: the placeholder that replaced the value.
    placeholder: str = ""


# --- emails -----------------------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@" + _LABEL + r"(?:\." + _LABEL + r")*\.[A-Za-z]{2,24}\b"
)


def _emails(text: str) -> list[PiiFinding]:
    return [PiiFinding("EMAIL", m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text)]


# --- secrets ----------------------------------------------------------------------------------

_TOKENS = [
    (name, re.compile(pattern))
    for name, pattern in (
        ("aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}\b"),
        ("github_token", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b"),
        ("github_token", r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
        ("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
        ("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
        ("stripe_key", r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),
        ("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}(?![\w-])"),
        ("jwt", r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),
        ("bearer_token", r"(?<=\bBearer )[A-Za-z0-9._~+/-]{16,}=*"),
        ("private_key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)"),
    )
]
_SECRET_NAMES = (
    r"password|passwd|pwd|passphrase|pass ?code|pin|secret|client[_ -]?secret|api[_ -]?key|apikey"
    r"|access[_ -]?key|secret[_ -]?key|private[_ -]?key|access[_ -]?token|auth[_ -]?token"
    r"|refresh[_ -]?token|session[_ -]?token|token"
)
_PAIR = re.compile(
    r"(?i)\b(?:" + _SECRET_NAMES + r")\b[\"']?\s*(?P<sep>[:=]|\bis\b)\s*[\"']?"
    r"(?P<value>[^\s\"'<>,;]{4,})"
)
# Status words a screenshot puts after "password:" / "token is"; they are not secrets.
_NOT_SECRET = frozenset(
    "incorrect invalid required expired missing wrong empty none null hidden changed reset "
    "correct valid set unset weak strong too short long blank needed optional saved updated "
    "revoked disabled enabled protected ******** ********** redacted".split()
)
_HEX_BLOB = re.compile(r"(?<![\w-])[0-9a-fA-F]{32,}(?![\w-])")
_B64_BLOB = re.compile(r"(?<![\w/+=-])[A-Za-z0-9+/_-]{32,}={0,2}(?![\w/+=-])")


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _secrets(text: str) -> list[PiiFinding]:
    found = [
        PiiFinding("SECRET", m.start(), m.end(), m.group(), name)
        for name, pattern in _TOKENS
        for m in pattern.finditer(text)
    ]
    for m in _PAIR.finditer(text):
        value = m.group("value").rstrip(".")
        if value.casefold() in _NOT_SECRET or set(value) <= {"*", "•", "."}:
            continue
        # "my password is hunter2" is a secret; "the password is incorrect" is not.
        if m.group("sep").lower() == "is" and value.isalpha() and value.islower():
            continue
        found.append(PiiFinding("SECRET", m.start("value"), m.start("value") + len(value), value, "password_pair"))
    for m in _HEX_BLOB.finditer(text):
        s = m.group()
        if _entropy(s.lower()) >= 3.0 and any(c.isdigit() for c in s) and any(c.isalpha() for c in s):
            found.append(PiiFinding("SECRET", m.start(), m.end(), s, "hex_secret"))
    for m in _B64_BLOB.finditer(text):
        s = m.group()
        classes = sum(any(f(c) for c in s) for f in (str.isupper, str.islower, str.isdigit))
        # CamelCase names and paths have high entropy too, but they are mostly word-shaped
        # runs ("Factory", "Name"); random keys rarely have three lower-case letters in a row.
        wordy = sum(len(w) for w in re.findall(r"[A-Z]?[a-z]{3,}", s)) / len(s)
        if classes == 3 and _entropy(s) >= 4.0 and wordy < 0.4:
            found.append(PiiFinding("SECRET", m.start(), m.end(), s, "high_entropy"))
    return found


# --- payment cards and IBANs ------------------------------------------------------------------

_CARD = re.compile(r"(?<![\w+.-])\d(?:[ -]?\d){12,18}(?![\w-]|\.\d)")


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cards(text: str) -> list[PiiFinding]:
    found = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1:
            found.append(PiiFinding("CARD", m.start(), m.end(), m.group()))
    return found


# Country code -> IBAN length (ISO 13616 registry, the countries support traffic meets).
IBAN_LENGTHS = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BR": 29,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NL": 18,
    "NO": 15,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "SA": 24,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VG": 24,
    "XK": 20,
}
_IBAN = re.compile(r"(?i)(?<![\w-])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")


def iban_ok(iban: str) -> bool:
    """True when `iban` (spaces allowed) has its country's length and a valid mod-97 check."""
    compact = iban.replace(" ", "").upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ibans(text: str) -> list[PiiFinding]:
    found, pos = [], 0
    while (m := _IBAN.search(text, pos)) is not None:
        pos = m.start() + 1
        length = IBAN_LENGTHS.get(m.group()[:2].upper())
        if length is None:
            continue
        # The pattern may run on into a following code; cut at the country's length.
        seen, end = 0, m.start()
        for i, ch in enumerate(m.group()):
            if ch != " ":
                seen += 1
            if seen == length:
                end = m.start() + i + 1
                break
        candidate = text[m.start() : end]
        if seen == length and iban_ok(candidate) and not (end < len(text) and text[end].isalnum()):
            found.append(PiiFinding("IBAN", m.start(), end, candidate))
            pos = end
    return found


# --- IP addresses -----------------------------------------------------------------------------

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d|\w)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?![\w:])")
_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|\bversion\s*|\bver\.?\s*|\bbuild\s*)$")


_MAC = re.compile(r"(?<![\w:-])[0-9A-Fa-f]{2}(?:([:-])[0-9A-Fa-f]{2})(?:\1[0-9A-Fa-f]{2}){4}(?![\w:-])")


def _ips(text: str) -> list[PiiFinding]:
    """IPv4 and IPv6 addresses, and MAC addresses (network identifiers of one device)."""
    found = [
        PiiFinding("IP", m.start(), m.end(), m.group(), "mac")
        for m in _MAC.finditer(text)
        if re.search(r"[A-Fa-f]", m.group())
    ]  # all digits: a number with dashes, not a MAC
    for m in _IPV4.finditer(text):
        if _VERSION_BEFORE.search(text[max(0, m.start() - 10) : m.start()]):
            continue
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        found.append(PiiFinding("IP", m.start(), m.end(), m.group(), "ipv4"))
    for m in _IPV6.finditer(text):
        s = m.group()
        if sum(1 for g in re.split(r"[:.]", s) if g) < 2:
            continue
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            continue
        found.append(PiiFinding("IP", m.start(), m.end(), s, "ipv6"))
    return found


# --- phone numbers ----------------------------------------------------------------------------

_PHONE = re.compile(
    r"""
    (?<![\w+.\-/:#])
    (?:
        \+\d{1,3}(?:[ .\-]?\(\d{1,4}\)|[ .\-]?\d{1,4})(?:[ .\-]?\d{2,8}){1,5}   # +44 20 7946 0958
      | (?:1[ .\-])?\(\d{2,5}\)[ .\-]?\d{2,8}(?:[ .\-]\d{2,8}){0,3}            # (555) 123-4567
      | (?:1[ .\-])?\d{2,5}(?:[ .\-]\d{2,8}){1,5}                              # 020 7946 0958
    )
    (?![\w\-/:]|[.,]\d)
""",
    re.VERBOSE,
)
_DATE = re.compile(r"^(?:\d{4}[-./ ]\d{1,2}[-./ ]\d{1,2}|\d{1,2}[-./ ]\d{1,2}[-./ ]\d{2,4})$")
_NOT_PHONE_BEFORE = re.compile(
    r"(?i)\b(?:error|err|code|status|build|version|ver|v|kb|ticket|order|case|invoice|serial|s/n|sn|"
    r"ref|reference|id|model|part|sku|tracking|account|acct|no|number|line|page|port|pid)\b[\s#:.=-]*$"
)
_PHONE_WORD = re.compile(r"(?i)\b(?:phone|tel|telephone|call|mobile|cell|fax|contact|whatsapp|sms|text|dial|ring)\b")


def _looks_like_phone(s: str, before: str) -> bool:
    digits = re.sub(r"\D", "", s)
    if _DATE.match(s):
        return False
    if _NOT_PHONE_BEFORE.search(before) and not _PHONE_WORD.search(before):
        return False
    if s.startswith("+"):
        return 8 <= len(digits) <= 15
    groups = re.findall(r"\d+", s)
    if "." in s and [len(g) for g in groups][-3:] != [3, 3, 4]:
        return False  # dotted numbers are versions or IPs unless shaped 555.123.4567
    if s.startswith("(") or [len(g) for g in groups][-3:] == [3, 3, 4]:
        return 10 <= len(digits) <= 11  # North American shape
    # National trunk prefix 0 (UK, DE, FR, NL, ...): 020 7946 0958, 06-12345678, 01 23 45 67 89.
    return s.startswith("0") and 9 <= len(digits) <= 12


def _phones(text: str) -> list[PiiFinding]:
    found = []
    for m in _PHONE.finditer(text):
        if _looks_like_phone(m.group(), text[max(0, m.start() - 30) : m.start()]):
            found.append(PiiFinding("PHONE", m.start(), m.end(), m.group()))
    return found


# --- all of them ------------------------------------------------------------------------------


def _people(text: str) -> list[PiiFinding]:
    return [PiiFinding("NAME", a, b, v, "labelled") for a, b, v in names(text)] + [
        PiiFinding("ADDRESS", a, b, v, "postal") for a, b, v in addresses(text)
    ]


_DETECTORS = (_secrets, _emails, _ibans, _cards, _ips, _phones, _people)
# The kinds each detector can report (for redact's quick check).
_KINDS_OF = {
    _secrets: {"SECRET"},
    _emails: {"EMAIL"},
    _ibans: {"IBAN"},
    _cards: {"CARD"},
    _ips: {"IP"},
    _phones: {"PHONE"},
    _people: {"NAME", "ADDRESS"},
}


def find_pii(text: str) -> list[PiiFinding]:
    """Every piece of personal data in `text`, sorted by position, spans not overlapping.

    When detections overlap, the kind earlier in KINDS wins, then the longer one."""
    candidates = [f for detect in _DETECTORS for f in detect(text)]
    candidates.sort(key=lambda f: (KINDS.index(f.kind), -(f.end - f.start), f.start))
    taken: list[PiiFinding] = []
    for f in candidates:
        if all(f.end <= t.start or f.start >= t.end for t in taken):
            taken.append(f)
    return sorted(taken, key=lambda f: f.start)


def last_four(card: str) -> str:
    """A card number as it may appear in an answer: its last four digits only."""
    digits = re.sub(r"\D", "", card)
    return f"card ending {digits[-4:]}" if len(digits) >= 4 else "[card removed]"


def describe(findings: list[PiiFinding]) -> str:
    """'2 emails, 1 card': what was found, without the values."""
    counts = Counter(f.kind for f in findings)
    return ", ".join(f"{n} {kind.lower()}{'s' if n > 1 else ''}" for kind, n in sorted(counts.items()))


def redact(text: str, kinds: frozenset[str] | set[str], *, label: str = "hidden") -> str:
    """`text` with every finding of `kinds` replaced: a card by its last four digits, any other
    value by "[<kind> <label>]". Text without such findings comes back unchanged (same object)."""
    if not kinds or not text:
        return text
    # Most stored text has none of the wanted kinds: their own detectors say so at a fraction
    # of the cost. Only then do all detectors run, so that overlaps resolve as in find_pii.
    if not any(detect(text) for detect in _DETECTORS if _KINDS_OF[detect] & kinds):
        return text
    findings = [f for f in find_pii(text) if f.kind in kinds]
    if not findings:
        return text
    out, last = [], 0
    for f in findings:
        out.append(text[last : f.start])
        out.append(last_four(f.value) if f.kind == "CARD" else f"[{f.kind.lower()} {label}]")
        last = f.end
    out.append(text[last:])
    return "".join(out)
