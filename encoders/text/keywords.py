"""Keyword (sparse) vectors: exact words, codes and ids, findable where CLIP is fuzzy.

CLIP places "0x80070005" near "0x80070006" and near any hex-looking text; a keyword vector
matches the token itself. Documents (captions, OCR text, transcripts) get BM25 term weights
from `keyword_vector`; queries get weight 1.0 per distinct term from `query_vector`. The
store multiplies each matching term by its IDF (Qdrant's `Modifier.IDF` on the sparse
vector), so a stored value times a query value times IDF, summed over shared terms, is the
BM25 score of the document.

Tokens
    Text is NFKC-normalised and case-folded. A token is a run of letters/digits, possibly
    joined by connectors (``- _ . : / @ + # '``) with letters/digits on both sides, so codes
    stay whole: "0x80070005", "e-42", "err_connection_reset", "v2.3.1", "user@host.org".
    Each token is also indexed by its useful parts, so a search for a part finds the whole:
    runs between connectors ("err", "connection", "reset"), letter/digit and camelCase
    splits ("iPhone15" -> "iphone", "phone", "15"; "NullPointerException" -> "null",
    "pointer", "exception"), hex digits without "0x" ("80070005"), and the accent-free
    spelling ("café" -> "cafe"). Parts of one letter are dropped; numbers are kept.
    Chinese/Japanese runs (no spaces between words) are indexed as character bigrams.

Indices
    blake2b with a 4-byte digest of the UTF-8 term, read big-endian: a uint32, the same in
    every process and version of Python (unlike `hash()`). Two terms sharing an index add
    up. Changing anything here changes stored vectors: bump `KEYWORDS_VERSION` and re-index.

Values (documents)
    BM25 term-frequency saturation with k1 = 1.2, b = 0.75 and a fixed average document
    length `AVG_DOC_LEN` (the store does not tell us the collection's real average):
        tf * (k1 + 1) / (tf + k1 * (1 - b + b * doc_len / AVG_DOC_LEN))
    `doc_len` counts tokens (not their parts; a CJK run counts its bigrams).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

__all__ = [
    "AVG_DOC_LEN",
    "K1",
    "KEYWORDS_VERSION",
    "B",
    "SparseVector",
    "keyword_vector",
    "query_vector",
    "term_index",
    "terms",
]

KEYWORDS_VERSION = "kw1"
K1 = 1.2
B = 0.75
# Typical length, in tokens, of what gets keywords: captions (~10), OCR text and transcript
# segments (~30-150). Longer texts (a whole transcript) get proportionally smaller weights.
AVG_DOC_LEN = 64.0
# Longer "tokens" (base64, hashes of hashes) are indexed by their parts only.
MAX_TOKEN_CHARS = 64

_CONNECTORS = "-_.:/@+#'"
_TOKEN = re.compile(r"[^\W_]+(?:[" + re.escape(_CONNECTORS) + r"]+[^\W_]+)*(?:\+\+|#)?")
_ALNUM_RUN = re.compile(r"[^\W_]+")
_HEX = re.compile(r"^0x([0-9a-f]+)$")
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK_OR_ALNUM = re.compile(f"[{_CJK_CHARS}]+|[^\\W_{_CJK_CHARS}]+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2018": "'"})


@dataclass(frozen=True)
class SparseVector:
    """Non-zero dimensions of a sparse vector: `indices` ascending and unique, `values` aligned."""

    indices: list[int]
    values: list[float]

    def __len__(self) -> int:
        return len(self.indices)

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.indices, self.values))


def term_index(term: str) -> int:
    """Stable uint32 index of a term."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "big")


def terms(text: str) -> tuple[list[str], int]:
    """(every term occurrence, tokens and their parts, in order; document length in tokens)."""
    if not text:
        return [], 0
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    out: list[str] = []
    doc_len = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if _has_cjk(token):
            doc_len += _cjk_terms(token, out)
            continue
        doc_len += 1
        whole = token.casefold()
        emitted = {whole}
        if len(whole) <= MAX_TOKEN_CHARS:
            out.append(whole)
        for part in _parts(token, whole):
            if part not in emitted:
                emitted.add(part)
                out.append(part)
    return out, doc_len


def keyword_vector(text: str, *, avg_doc_len: float = AVG_DOC_LEN) -> SparseVector:
    """BM25-weighted keyword vector of a document; empty if the text has no tokens."""
    found, doc_len = terms(text)
    if not found:
        return SparseVector([], [])
    tf: Counter[int] = Counter(term_index(t) for t in found)
    norm = K1 * (1.0 - B + B * doc_len / avg_doc_len)
    indices = sorted(tf)
    values = [tf[i] * (K1 + 1.0) / (tf[i] + norm) for i in indices]
    return SparseVector(indices, values)


def with_terms(vector: SparseVector, indices: list[int], weight: float = 1.0) -> SparseVector:
    """`vector` with `indices` added at `weight` (or kept at their weight, if higher)."""
    if not indices:
        return vector
    merged = vector.as_dict()
    for i in indices:
        merged[i] = max(merged.get(i, 0.0), weight)
    keys = sorted(merged)
    return SparseVector(keys, [merged[i] for i in keys])


def query_vector(text: str) -> SparseVector:
    """Keyword vector of a query: weight 1.0 for every distinct term (tokens and parts)."""
    found, _ = terms(text)
    indices = sorted({term_index(t) for t in found})
    return SparseVector(indices, [1.0] * len(indices))


# -- internals -------------------------------------------------------------------------------


def _parts(token: str, whole: str) -> list[str]:
    """Useful pieces of one token (original case, for camelCase), case-folded, in order."""
    out: list[str] = []
    runs = _ALNUM_RUN.findall(token)
    for run in runs:
        folded = run.casefold()
        if len(runs) > 1:
            out.append(folded)
        hex_digits = _HEX.match(folded)
        if hex_digits:
            out.append(hex_digits.group(1))
            continue
        pieces = _split_letters_digits(run)
        if len(pieces) > 1:
            out += [p.casefold() for p in pieces]
        for piece in pieces:
            cased = _split_camel(piece)
            if len(cased) > 1:
                out += [c.casefold() for c in cased]
    plain = _strip_accents(whole)
    if plain != whole:
        out.append(plain)
        out += [_strip_accents(p) for p in out if _strip_accents(p) != p]
    return [p for p in out if len(p) > 1 or p.isdigit()]


def _split_letters_digits(run: str) -> list[str]:
    return re.findall(r"\d+|[^\W\d_]+", run)


def _split_camel(piece: str) -> list[str]:
    """'NullPointer' -> Null, Pointer; 'HTTPServer' -> HTTP, Server; 'iPhone' -> i, Phone."""
    if piece.isdigit() or piece.islower() or piece.isupper():
        return [piece]
    out: list[str] = []
    start = 0
    for i in range(1, len(piece)):
        prev, cur = piece[i - 1], piece[i]
        nxt = piece[i + 1] if i + 1 < len(piece) else ""
        if (prev.islower() and cur.isupper()) or (prev.isupper() and cur.isupper() and nxt.islower()):
            out.append(piece[start:i])
            start = i
    out.append(piece[start:])
    return out


def _strip_accents(s: str) -> str:
    decomposed = unicodedata.normalize("NFKD", s)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return (
        0x3040 <= o <= 0x30FF  # hiragana, katakana
        or 0x3400 <= o <= 0x4DBF  # CJK extension A
        or 0x4E00 <= o <= 0x9FFF  # CJK unified ideographs
        or 0xF900 <= o <= 0xFAFF  # CJK compatibility ideographs
        or 0x20000 <= o <= 0x2FA1F  # CJK extensions B-F, compatibility supplement
    )


def _has_cjk(token: str) -> bool:
    return any(_is_cjk(c) for c in token)


def _cjk_terms(token: str, out: list[str]) -> int:
    """Bigrams of CJK runs, other runs as tokens (with parts); returns the length added."""
    added = 0
    for run in _CJK_OR_ALNUM.findall(token):
        if _is_cjk(run[0]):
            grams = [run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)]
            out += grams
            added += len(grams)
        else:
            folded = run.casefold()
            out.append(folded)
            out += [p for p in _parts(run, folded) if p != folded]
            added += 1
    return added
