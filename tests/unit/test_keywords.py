"""Keyword vectors: tokens that keep codes whole, stable indices, BM25 weights."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest

from encoders.text.keywords import AVG_DOC_LEN, K1, B, SparseVector, keyword_vector, query_vector, term_index, terms

ROOT = Path(__file__).resolve().parents[2]


def words(text: str) -> list[str]:
    return terms(text)[0]


def filler(n: int) -> list[str]:
    """n distinct words of letters only (no digit parts)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["q" + letters[i // 26 % 26] + letters[i % 26] + letters[i // 676 % 26] for i in range(n)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Error 0x80070005 occurred", ["error", "0x80070005", "80070005", "occurred"]),
        ("E-42", ["e-42", "42"]),
        ("ERR_CONNECTION_RESET", ["err_connection_reset", "err", "connection", "reset"]),
        ("v2.3.1", ["v2.3.1", "v2", "2", "3", "1"]),
        ("42", ["42"]),
        ("iPhone15 Pro", ["iphone15", "iphone", "15", "phone", "pro"]),
        (
            "NullPointerException at HTTPServer",
            ["nullpointerexception", "null", "pointer", "exception", "at", "httpserver", "http", "server"],
        ),
        ("user@example.com", ["user@example.com", "user", "example", "com"]),
        ("C++ and C#", ["c++", "and", "c#"]),
        ("Café déjà vu", ["café", "cafe", "déjà", "deja", "vu"]),
        ("ＡＢＣ１２３", ["abc123", "abc", "123"]),  # fullwidth, NFKC
        ("Straße", ["strasse"]),  # case folding
        ("don’t", ["don't", "don"]),
        ("end of sentence. Next", ["end", "of", "sentence", "next"]),  # punctuation is no connector at the end
        ("東京タワー 2020年", ["東京", "京タ", "タワ", "ワー", "2020", "年"]),  # CJK bigrams
        ("", []),
        ("?! -- ...", []),
    ],
)
def test_tokens_keep_codes_whole_and_add_parts(text: str, expected: list[str]):
    assert words(text) == expected


def test_doc_length_counts_tokens_not_parts():
    assert terms("ERR_CONNECTION_RESET twice")[1] == 2
    assert terms("東京タワー")[1] == 4  # bigrams


def test_indices_are_stable_blake2b():
    # Pinned: stored vectors depend on these; a change needs KEYWORDS_VERSION bumped and a re-index.
    assert term_index("0x80070005") == 3046394815
    assert term_index("error") == 3792789588
    assert term_index("error") == int.from_bytes(hashlib.blake2b(b"error", digest_size=4).digest(), "big")
    # Not Python's hash(): the same in another process with another hash seed.
    out = subprocess.run(
        [sys.executable, "-c", "from encoders.text.keywords import term_index; print(term_index('error'))"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert out.stdout.strip() == "3792789588"


def test_keyword_vector_is_sorted_unique_and_bm25_weighted():
    v = keyword_vector("error error error code")
    assert v.indices == sorted(set(v.indices))
    assert len(v.indices) == len(v.values) == 2
    weights = dict(zip(v.indices, v.values))
    norm = K1 * (1 - B + B * 4 / AVG_DOC_LEN)
    assert weights[term_index("error")] == pytest.approx(3 * (K1 + 1) / (3 + norm))
    assert weights[term_index("code")] == pytest.approx(1 * (K1 + 1) / (1 + norm))
    # A document of average length: tf 1 weighs exactly 1.
    average = keyword_vector(" ".join(filler(int(AVG_DOC_LEN))))
    assert len(average) == AVG_DOC_LEN
    assert average.values == pytest.approx([1.0] * len(average))


def test_term_frequency_saturates_and_long_documents_weigh_less():
    def weight(text: str, term: str) -> float:
        return keyword_vector(text).as_dict()[term_index(term)]

    # Same length (20 tokens), more occurrences: diminishing returns, bounded by k1 + 1.
    one, two, three, ten = (weight(" ".join(["code"] * n + filler(20 - n)), "code") for n in (1, 2, 3, 10))
    assert one < two < three < ten < K1 + 1
    assert three - two < two - one
    short = weight("code here", "code")
    long = weight("code " + " ".join(filler(300)), "code")
    assert long < short


def test_query_vector_weights_each_distinct_term_once():
    q = query_vector("0x80070005 error error")
    assert q.indices == sorted({term_index("0x80070005"), term_index("80070005"), term_index("error")})
    assert q.values == [1.0, 1.0, 1.0]
    assert query_vector("?!") == SparseVector([], [])
    assert keyword_vector("") == SparseVector([], [])


def test_a_code_matches_only_itself_among_lookalikes():
    query = set(query_vector("0x80070005").indices)
    for other in ("0x80070006", "0x80070015", "0x8007005"):
        assert not query & set(keyword_vector(f"error {other}").indices)
    assert query <= set(keyword_vector("error 0x80070005").indices)


def test_values_are_finite_and_positive():
    v = keyword_vector("a " * 5000 + "needle")
    assert all(math.isfinite(x) and x > 0 for x in v.values)
