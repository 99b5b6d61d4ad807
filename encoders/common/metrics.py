"""Quality metrics that tests, benchmarks and `loupe eval` share.

Text: `wer` (words, after `normalize`), `cer` (characters), both on `edit_distance`.
Retrieval, per query (average them over queries): `recall_at_k`, `reciprocal_rank` (MRR is
its mean), `ndcg_at_k`; `ranked` is the ids in result order, `relevant` the ids that should
be found (for nDCG optionally with graded gains).

`normalize` lower-cases, strips accents and punctuation, joins apostrophes ("o'clock" ->
"oclock"), splits hyphens, and spells numbers out in English words ("42" and "forty-two" both
become "forty two"; "42nd" -> "forty second"; "3.5" -> "three point five"; "1,000" -> "one
thousand"; "%" -> "percent"), so formatting choices are not counted as recognition errors.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Collection, Hashable, Mapping, Sequence

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_NUMBER = re.compile(r"(?<![\w.])(\d[\d,]*)(?:\.(\d+))?(st|nd|rd|th)?(?![\w])")


def number_words(n: int) -> str:
    """Non-negative integer in English words: 42 -> "forty two", 1905 -> "one thousand nine hundred five"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for scale, name in _SCALES:
        if n >= scale:
            rest = n % scale
            return number_words(n // scale) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


def _ordinal(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".strip()


def _spell(match: re.Match) -> str:
    whole, fraction, suffix = match.group(1), match.group(2), match.group(3)
    digits = whole.replace(",", "")
    if len(digits) > 15:  # ids, phone numbers: digit by digit
        return " ".join(_ONES[int(d)] for d in digits)
    words = number_words(int(digits))
    if fraction:
        words += " point " + " ".join(_ONES[int(d)] for d in fraction)
    elif suffix:
        words = _ordinal(words)
    return f" {words} "


def normalize(text: str) -> str:
    """Lower-case words without accents, punctuation or digits, single-spaced."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("%", " percent ")
    text = _NUMBER.sub(_spell, text)
    text = re.sub(r"(\w)['’](\w)", r"\1\2", text)
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(text.split())


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference word count) after normalising both."""
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    return edit_distance(ref, hyp), len(ref)


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: edits / reference words. An empty reference gives 0.0 for an empty
    hypothesis and infinity otherwise (any invented word over silence is an error)."""
    errors, total = word_errors(reference, hypothesis)
    if total == 0:
        return 0.0 if errors == 0 else float("inf")
    return errors / total


def cer(reference: str, hypothesis: str, *, spaces: bool = True) -> float:
    """Character error rate: edits / reference characters, after collapsing whitespace runs to
    one space (or dropping whitespace: spaces=False). An empty reference divides by 1."""
    join = " " if spaces else ""
    ref, hyp = join.join(reference.split()), join.join(hypothesis.split())
    return edit_distance(ref, hyp) / max(1, len(ref))


def recall_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Share of the relevant ids found in the first k results (1.0 when nothing is relevant)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if not relevant:
        return 1.0
    return len(set(ranked[:k]) & set(relevant)) / len(set(relevant))


def reciprocal_rank(ranked: Sequence[Hashable], relevant: Collection[Hashable]) -> float:
    """1 / rank of the first relevant result, 0.0 when none is found (MRR is the mean)."""
    wanted = set(relevant)
    return next((1.0 / rank for rank, item in enumerate(ranked, 1) if item in wanted), 0.0)


def ndcg_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable] | Mapping[Hashable, float], k: int) -> float:
    """Normalised discounted cumulative gain of the first k results (log2 discount). `relevant`
    is a set of ids (gain 1 each) or a mapping id -> gain; 1.0 when nothing is relevant."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    gains = dict(relevant) if isinstance(relevant, Mapping) else dict.fromkeys(relevant, 1.0)
    ideal = sum(g / math.log2(rank + 1) for rank, g in enumerate(sorted(gains.values(), reverse=True)[:k], 1))
    if ideal <= 0:
        return 1.0
    seen: set = set()
    dcg = 0.0
    for rank, item in enumerate(ranked[:k], 1):
        if item not in seen:  # a repeated id earns nothing the second time
            dcg += gains.get(item, 0.0) / math.log2(rank + 1)
            seen.add(item)
    return dcg / ideal


def regressions(
    current: Mapping[str, Mapping[str, float | None]],
    baseline: Mapping[str, Mapping[str, float | None]],
    tolerance: float,
    lower_is_better: Collection[str] = (),
) -> list[str]:
    """What got worse by more than `tolerance`: a line per (group, metric) the baseline has.

    Both are {group: {metric: value}}; a metric missing now, or a group missing now, is a
    regression too (a gate that silently skips what it cannot measure lets anything through)."""
    out = []
    for group, metrics in baseline.items():
        now = current.get(group)
        if now is None:
            out.append(f"{group}: missing from this run")
            continue
        for name, before in metrics.items():
            if not isinstance(before, (int, float)) or isinstance(before, bool):
                continue
            after = now.get(name)
            if not isinstance(after, (int, float)):
                out.append(f"{group} {name}: missing from this run (baseline {before:.4f})")
                continue
            drop = (after - before) if name in lower_is_better else (before - after)
            if drop > tolerance:
                out.append(f"{group} {name}: {before:.4f} -> {after:.4f} (worse by {drop:.4f} > {tolerance})")
    return out
