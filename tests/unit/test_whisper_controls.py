"""Repetition and hallucination controls on decoded segments (no model): repeats of the
previous segment, loops inside one, restarted sentences, Whisper's retry rule, the best decode
when every temperature fails, and the counts reported in TranscriptInfo.controls."""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from encoders.whisper.controls import (
    TranscriptControls,
    best_decode,
    controlled,
    cut_loops,
    fails_checks,
    is_repeat,
    loop_start,
    restart_at,
    words_of,
)
from encoders.whisper.transcribe import Segment, Transcriber, TranscriptInfo, Word


def seg(text: str, start: float = 0.0, end: float = 1.0, timed: bool = False) -> Segment:
    words = ()
    if timed:
        parts = text.split()
        step = (end - start) / len(parts)
        words = tuple(Word(start + i * step, start + (i + 1) * step, " " + w, 0.9) for i, w in enumerate(parts))
    return Segment(start=start, end=end, text=text, words=words)


def test_repeat_of_previous_segment():
    assert is_repeat("Please restart the device.", "please restart the device")
    assert is_repeat(
        "Our internet connection drops every evening around eight.",
        "our internet connection drops every evening around eight o'clock",
    )  # nearly the same
    assert is_repeat("the modem lights keep blinking orange", "lights keep blinking orange")  # contained
    assert not is_repeat("the modem lights keep blinking orange", "blinking orange")  # too short to tell
    # Near misses: short replies may recur; a different sentence on the same topic is kept.
    assert not is_repeat("Yes.", "yes, okay")
    assert not is_repeat("The printer shows error 42.", "Please restart the printer after the error.")
    assert not is_repeat("", "anything") and not is_repeat("anything", "")


def test_loop_detection_and_near_misses():
    assert loop_start(words_of("the the the the end")) == 1
    assert loop_start(words_of("thank you thank you thank you")) == 2
    assert loop_start(words_of("it keeps blinking orange keeps blinking orange")) is None  # a 3-word phrase twice
    assert loop_start(words_of("it keeps blinking orange keeps blinking orange keeps blinking orange")) == 4
    assert loop_start(words_of("a b c d a b c d")) == 4  # a 4-word phrase said twice
    # Speech that legitimately repeats a little.
    assert loop_start(words_of("no no, that is not what I said")) is None
    assert loop_start(words_of("very very good")) is None
    assert restart_at(words_of("our internet connection drops every evening our internet connection drops every")) == 6
    assert restart_at(words_of("our internet connection drops and our internet connection is slow again today")) is None


def test_cut_loops_keeps_first_copy_and_its_timings():
    controls = TranscriptControls()
    cut = cut_loops(seg("Thank you. Thank you. Thank you. Thank you.", 0.0, 4.0, timed=True), controls)
    assert cut.text == "Thank you." and [w.text for w in cut.words] == [" Thank", " you."]
    assert cut.end == cut.words[-1].end == 1.0
    assert (controls.loops_cut, controls.words_removed) == (1, 6)
    untouched = seg("The printer shows error code 42.")
    assert cut_loops(untouched, controls) is untouched and controls.loops_cut == 1


def test_controlled_drops_repeats_and_counts():
    controls = TranscriptControls()
    segments = [
        seg("Our internet connection drops every evening."),
        seg("our internet connection drops every evening"),
        seg("The modem lights blink orange."),
        seg("the the the the"),
        seg("Please call us back."),
    ]
    out = list(controlled(segments, controls))
    assert [s.text for s in out] == [
        "Our internet connection drops every evening.",
        "The modem lights blink orange.",
        "the",
        "Please call us back.",
    ]
    assert (controls.repeated_segments, controls.loops_cut) == (1, 1)
    assert controls.words_removed == 6 + 3
    off = TranscriptControls()
    assert list(controlled(segments, off, enabled=False)) == segments and off == TranscriptControls()


def test_whisper_retry_rule():
    rule = {"compression_ratio_threshold": 2.4, "logprob_threshold": -1.0, "no_speech_threshold": 0.6}
    assert not fails_checks(1.5, -0.3, 0.01, **rule)
    assert fails_checks(3.1, -0.3, 0.01, **rule)  # repetitive
    assert fails_checks(1.5, -1.4, 0.01, **rule)  # improbable
    assert not fails_checks(3.1, -1.4, 0.9, **rule)  # improbable because silent: skipped, not retried
    assert not fails_checks(
        9.0, -9.0, 0.9, compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None
    )


def test_best_decode_prefers_probable_non_repetitive():
    D = namedtuple("D", "name compression_ratio avg_logprob")
    results = [D("t0", 3.0, -0.2), D("t0.2", 1.8, -1.3), D("t0.4", 1.9, -1.1), D("t1", 2.0, -2.5)]
    assert best_decode(results, 2.4).name == "t0.4"  # not the hottest, not the repetitive one
    assert best_decode([D("a", 3.0, -0.5), D("b", 3.5, -0.1)], 2.4).name == "b"  # all repetitive: most probable


class ScriptedTranscriber(Transcriber):
    """A backend that loops the way small Whisper models do on noisy audio."""

    backend = "scripted"

    def _load_model(self):
        return object()

    def _transcribe(self, samples, options):
        info = TranscriptInfo(
            language="en", language_probability=1.0, duration_s=len(samples) / 16000, model_id="scripted"
        )
        script = [
            "Our internet connection drops every evening.",
            "our internet connection drops every evening",
            "and the lights keep blinking keep blinking keep blinking keep blinking",
        ]
        return info, iter(seg(t, i, i + 1) for i, t in enumerate(script))


def test_every_backend_stream_is_controlled():
    from encoders.whisper.transcribe import TranscribeOptions

    transcriber = ScriptedTranscriber("tiny.en")
    info, segments = transcriber.transcribe(np.zeros(16000, np.float32))
    texts = [s.text for s in segments]
    assert texts == ["Our internet connection drops every evening.", "and the lights keep blinking"]
    assert info.controls.repeated_segments == 1 and info.controls.loops_cut == 1
    _, raw = transcriber.transcribe(np.zeros(16000, np.float32), TranscribeOptions(drop_repeats=False))
    assert len(list(raw)) == 3
