import pytest

from encoders.text.chunking import Chunk, TimedText, TimedWord, chunk_transcript


def one_token(_word: str) -> int:
    return 1


def _segment(start: float, words: str, step: float = 0.5) -> TimedText:
    parts = words.split()
    timed = tuple(TimedWord(start + i * step, start + (i + 1) * step, w) for i, w in enumerate(parts))
    return TimedText(start, start + len(parts) * step, words, timed)


def test_short_transcript_is_one_chunk_with_word_times():
    chunks = chunk_transcript([_segment(1.0, "the printer shows error 42")], one_token, max_tokens=10)
    assert chunks == [Chunk(1.0, 3.5, "the printer shows error 42")]


def test_chunks_fit_overlap_and_cover_every_word():
    text = " ".join(f"w{i}" for i in range(40))
    chunks = chunk_transcript([_segment(0.0, text)], one_token, max_tokens=12, overlap_tokens=3)
    assert all(len(c.text.split()) <= 12 for c in chunks)
    seen = [w for c in chunks for w in c.text.split()]
    assert set(seen) == {f"w{i}" for i in range(40)}
    for a, b in zip(chunks, chunks[1:]):
        assert a.text.split()[-3:] == b.text.split()[:3]  # overlap of 3 words
        assert b.start_s < a.end_s


def test_segments_without_word_times_are_spread_evenly():
    chunks = chunk_transcript([TimedText(10.0, 14.0, "a b c d")], one_token, max_tokens=2, overlap_tokens=0)
    assert [(c.start_s, c.end_s, c.text) for c in chunks] == [(10.0, 12.0, "a b"), (12.0, 14.0, "c d")]


def test_a_word_longer_than_the_budget_still_gets_a_chunk():
    chunks = chunk_transcript([_segment(0.0, "x supercalifragilistic y")], lambda w: len(w), max_tokens=5)
    assert "supercalifragilistic" in [c.text for c in chunks]


def test_empty_and_bad_budget():
    assert chunk_transcript([TimedText(0, 1, "  ")], one_token, max_tokens=5) == []
    with pytest.raises(ValueError):
        chunk_transcript([], one_token, max_tokens=0)
