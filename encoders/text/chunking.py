"""Transcript segments -> chunks that fit the CLIP text context, with a small overlap.

Chunking works on timed words, so a chunk's start/end are the times of its first and last
word: a query that matches words of a chunk lands on a span that contains them. Segments
without word timings are split into words with times spread evenly across the segment.
CLIP's BPE tokenises each whitespace-separated word on its own, so a chunk's token count is
the sum of its words' counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class TimedWord:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class TimedText:
    """A transcript segment as the chunker needs it (words may be empty)."""

    start_s: float
    end_s: float
    text: str
    words: tuple[TimedWord, ...] = ()


@dataclass(frozen=True)
class Chunk:
    start_s: float
    end_s: float
    text: str


def chunk_transcript(
    segments: Sequence[TimedText], count_tokens: Callable[[str], int], max_tokens: int, overlap_tokens: int = 4
) -> list[Chunk]:
    """Greedy packing of words into chunks of at most `max_tokens`; each chunk after the first
    starts with the last words of the previous one (up to `overlap_tokens`), so a phrase cut
    at a boundary is still whole in one chunk."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    overlap_tokens = min(overlap_tokens, max_tokens // 4)
    words = [w for seg in segments for w in _words(seg)]
    costs = [max(1, count_tokens(w.text)) for w in words]
    chunks: list[Chunk] = []
    start = 0
    while start < len(words):
        end, used = start, 0
        while end < len(words) and (used + costs[end] <= max_tokens or end == start):
            used += costs[end]
            end += 1
        chunks.append(_chunk(words[start:end]))
        if end >= len(words):
            break
        start = _overlap_start(costs, start, end, overlap_tokens)
    return chunks


def _overlap_start(costs: list[int], start: int, end: int, overlap_tokens: int) -> int:
    back, used = end, 0
    while back - 1 > start and used + costs[back - 1] <= overlap_tokens:
        back -= 1
        used += costs[back]
    return back


def _words(seg: TimedText) -> list[TimedWord]:
    if seg.words:
        return [w for w in seg.words if w.text.strip()]
    parts = seg.text.split()
    if not parts:
        return []
    step = (seg.end_s - seg.start_s) / len(parts)
    return [TimedWord(seg.start_s + i * step, seg.start_s + (i + 1) * step, p) for i, p in enumerate(parts)]


def _chunk(words: list[TimedWord]) -> Chunk:
    text = " ".join(w.text.strip() for w in words)
    return Chunk(start_s=words[0].start_s, end_s=words[-1].end_s, text=text)


@dataclass(frozen=True)
class EmbeddedTranscript:
    chunks: list[Chunk]
    vectors: np.ndarray
    # The recording as a whole: the mean direction of its chunks (the empty text's vector
    # when nothing was said).
    recording_vector: np.ndarray


def timed_texts(segments) -> list[TimedText]:
    """Whisper segments (`encoders.whisper.transcribe.Segment`) -> the chunker's input."""
    return [
        TimedText(s.start, s.end, s.text, tuple(TimedWord(w.start, w.end, w.text) for w in s.words)) for s in segments
    ]


def embed_transcript(clip, segments: list[TimedText], overlap_tokens: int) -> EmbeddedTranscript:
    """Chunks that fit `clip`'s text context (a `ClipEncoder`), their vectors, and one vector
    for the recording."""
    import numpy as np

    max_tokens = clip.context_length - 2  # start and end tokens
    chunks = chunk_transcript(segments, clip.count_tokens, max_tokens, overlap_tokens)
    vectors = clip.encode_texts([c.text for c in chunks]).vectors
    if len(chunks):
        whole = vectors.mean(axis=0)
        whole /= max(float(np.linalg.norm(whole)), 1e-12)
    else:
        whole = clip.encode_texts([""]).vectors[0]
    return EmbeddedTranscript(chunks, vectors, whole.astype(np.float32))
