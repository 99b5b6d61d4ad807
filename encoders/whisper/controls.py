"""Repetition and hallucination control for Whisper transcripts, shared by every backend.

Whisper's own checks (compression ratio and mean log-probability, retried at higher
temperatures; no-speech probability; skipping text surrounded by long silence) run inside
each backend with the backend's own options. What neither backend offers is done here, on
the stream of decoded segments:

- a segment that repeats the segment before it (the same words, or nearly: a decoder that
  loops re-emits the last sentence) is dropped;
- a loop inside one segment ("the the the the", a phrase said three times in a row, or the
  segment's opening sentence starting over) is cut back to its first occurrence.

`TranscriptControls` counts what every control did for one transcript; it is filled while
the segments are consumed (the transcript's info is returned before decoding starts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from difflib import SequenceMatcher

_WORD = re.compile(r"[\w']+")
# A segment this similar (word-level ratio) to the one before it is a repeat.
REPEAT_SIMILARITY = 0.8
# Fewest words for a near (not exact) repeat: short replies ("yes", "okay") may recur.
REPEAT_MIN_WORDS = 4
# A phrase of n words said k times in a row is a loop when k >= LOOP_MIN_REPEATS[n] (n capped).
LOOP_MIN_REPEATS = {1: 4, 2: 3, 3: 3, 4: 2}
# The segment's first RESTART_WORDS words coming back later with the text between them
# repeated (at least RESTART_SIMILARITY alike): the decoder started the sentence over.
RESTART_WORDS, RESTART_SIMILARITY = 4, 0.75


@dataclass
class TranscriptControls:
    """What the controls did for one transcript (counts; filled as segments are decoded)."""

    windows: int = 0  # 30 s decoding windows run
    fallback_windows: int = 0  # windows decoded again hotter after failing the checks
    kept_best_windows: int = 0  # windows where every temperature failed: the best decode was kept
    prompt_resets: int = 0  # times the previous text was dropped from the prompt after a fallback
    repeated_segments: int = 0  # segments dropped for repeating the one before
    loops_cut: int = 0  # loops cut inside a segment
    words_removed: int = 0  # words dropped by the two controls above

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _similar(a: list[str], b: list[str]) -> float:
    return SequenceMatcher(None, a, b, autojunk=False).ratio() if a and b else 0.0


def is_repeat(previous: str, current: str) -> bool:
    """True when `current` says again what `previous` said (exactly, contained, or nearly)."""
    a, b = words_of(previous), words_of(current)
    if not a or not b:
        return False
    if a == b:
        return True
    if len(b) < REPEAT_MIN_WORDS:
        return False
    if len(b) <= len(a) and " ".join(b) in " ".join(a):
        return True
    return _similar(a, b) >= REPEAT_SIMILARITY


def loop_start(words: list[str]) -> int | None:
    """Index of the first word of the first repeated copy of a loop, or None when there is none."""
    n_words = len(words)
    for i in range(n_words):
        for n in range(1, (n_words - i) // 2 + 1):
            need = LOOP_MIN_REPEATS.get(n, 2)
            if i + n * need > n_words:
                continue
            phrase = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == phrase for k in range(1, need)):
                return i + n
    return None


def restart_at(words: list[str]) -> int | None:
    """Index where the segment starts its own opening over (a whole sentence said twice)."""
    if len(words) < 2 * RESTART_WORDS:
        return None
    head = words[:RESTART_WORDS]
    for k in range(RESTART_WORDS, len(words) - RESTART_WORDS + 1):
        if words[k : k + RESTART_WORDS] == head:
            tail = words[k:]
            if _similar(words[: min(k, len(tail))], tail[:k]) >= RESTART_SIMILARITY:
                return k
    return None


def _cut_text(text: str, keep_words: int) -> str:
    """`text` up to (not including) its `keep_words`-th word, punctuation of the kept part kept."""
    matches = list(_WORD.finditer(text))
    if keep_words >= len(matches):
        return text
    return text[: matches[keep_words].start()].rstrip(" ,;:-")


def cut_loops(segment, controls: TranscriptControls):
    """The segment with an inner loop (or a restarted sentence) cut to its first occurrence."""
    words = words_of(segment.text)
    cut = min((c for c in (loop_start(words), restart_at(words)) if c is not None), default=None)
    if cut is None:
        return segment
    controls.loops_cut += 1
    controls.words_removed += len(words) - cut
    text = _cut_text(segment.text, cut)
    kept, position = [], 0
    for word in segment.words:  # Whisper's words may hold several of ours ("forty-two")
        if position >= cut:
            break
        kept.append(word)
        position += max(1, len(words_of(word.text)))
    end = kept[-1].end if kept else segment.end
    return replace(segment, text=text, words=tuple(kept), end=end)


def controlled(segments: Iterable, controls: TranscriptControls, enabled: bool = True) -> Iterator:
    """Segments with loops cut and repeats of the previous segment dropped (counted in `controls`)."""
    previous = None
    for segment in segments:
        if not enabled:
            yield segment
            continue
        segment = cut_loops(segment, controls)
        if previous is not None and is_repeat(previous.text, segment.text):
            controls.repeated_segments += 1
            controls.words_removed += len(words_of(segment.text))
            continue
        if segment.text:
            previous = segment
            yield segment


def fails_checks(
    compression_ratio: float,
    avg_logprob: float,
    no_speech_prob: float,
    *,
    compression_ratio_threshold: float | None,
    logprob_threshold: float | None,
    no_speech_threshold: float | None,
) -> bool:
    """Whisper's rule for retrying a window hotter: too repetitive (gzip ratio) or too improbable,
    unless it is improbable because it is silence (then the no-speech check skips it)."""
    repetitive = compression_ratio_threshold is not None and compression_ratio > compression_ratio_threshold
    improbable = logprob_threshold is not None and avg_logprob < logprob_threshold
    silent = improbable and no_speech_threshold is not None and no_speech_prob > no_speech_threshold
    return (repetitive or improbable) and not silent


def best_decode(results: list, compression_ratio_threshold: float | None):
    """When every temperature failed: the most probable decode among those that are not
    repetitive (else among all), not simply the last, hottest one."""
    calm = [
        r for r in results if compression_ratio_threshold is None or r.compression_ratio <= compression_ratio_threshold
    ]
    return max(calm or results, key=lambda r: r.avg_logprob)
