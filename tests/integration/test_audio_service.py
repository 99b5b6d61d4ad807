"""Audio through the real service: transcripts, timestamped segments, cross-modal search."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest

from encoders.common.metrics import wer as word_error_rate
from services.client.sdk import LoupeCallError
from tests.fixtures import bad_audio
from tests.integration.conftest import AUDIO_MAX_BYTES, AUDIO_MAX_DURATION_S

pytestmark = pytest.mark.slow

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
REFERENCES = json.loads((AUDIO / "references.json").read_text())
SPEECH = sorted(name for name, ref in REFERENCES.items() if ref["text"])
COLLECTION = "calls"
# Whisper base on espeak-ng voices; the noisy and fast clips are the hardest.
MAX_WER = 0.3
QUERIES = {  # words from each clip -> the clip
    "printer_error_en-us.wav": "paper tray empty",
    "billing_refund_en-f3_slow.flac": "refund duplicate payment",
    "router_password_en-gb_fast.flac": "reset router password",
    "delivery_delay_lead_silence_en-us.flac": "parcel tracking warehouse",
    "internet_dropout_noisy_en-us.ogg": "internet connection evening",  # base hears "modern lights"
}


@pytest.fixture(scope="module")
def recordings(service):
    out = {}
    with service.client(timeout_s=300) as client:
        for name in SPEECH + ["silence_60s.flac", "music_chords_10s.flac"]:
            out[name] = client.index_audio(
                (AUDIO / name).read_bytes(), source=name, collection=COLLECTION, metadata={"queue": "support"}
            )
    return out


def test_each_clip_is_indexed_with_its_language_and_duration(recordings):
    for name in SPEECH:
        r = recordings[name]
        assert r.segment_count >= 1 and r.created, name
        assert r.language == REFERENCES[name]["language"][:2].lower(), (name, r.language)
        assert abs(r.duration_s - REFERENCES[name]["duration_s"]) < 0.2
        assert r.model_id == "bundled:tiny-clip" and "base" in r.transcriber_model_id


def test_transcripts_are_within_the_stated_word_error_rate(service, recordings):
    rates = {}
    with service.client() as client:
        for name in SPEECH:
            text = client.get(recordings[name].id, collection=COLLECTION).text
            rates[name] = word_error_rate(REFERENCES[name]["text"], text)
    print("WER per clip:", {k: round(v, 3) for k, v in rates.items()})
    assert max(rates.values()) <= MAX_WER, rates


def test_silence_and_music_yield_no_segments(recordings):
    assert recordings["silence_60s.flac"].segment_count == 0
    assert recordings["music_chords_10s.flac"].segment_count == 0


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_a_query_finds_the_moment_it_was_said(service, recordings, name):
    query = QUERIES[name]
    with service.client() as client:
        result = client.search_text(query, mode="hybrid", modalities=["audio_segment"], limit=3, collection=COLLECTION)
        words = list(client.transcribe((AUDIO / name).read_bytes(), word_timestamps=True))[1:-1]
    top = result.hits[0].item
    assert top.parent_id == recordings[name].id and top.sources == [name]
    timed = [(w.start_s, w.end_s, _norm(w.text)) for seg in words for w in seg.words]
    for word in query.split():
        spans = [(s, e) for s, e, t in timed if t == word]
        assert spans, (word, timed)
        assert any(top.start_s - 0.05 <= s and e <= top.end_s + 0.05 for s, e in spans), (word, spans, top)


def test_transcribe_streams_info_then_segments(service):
    with service.client() as client:
        parts = list(client.transcribe((AUDIO / "printer_error_en-us.wav").read_bytes(), word_timestamps=True))
    info, segments, controls = parts[0], parts[1:-1], parts[-1]
    assert info.language == "en" and 0 < info.language_probability <= 1 and info.duration_s > 5
    assert segments and all(s.start_s < s.end_s for s in segments) and segments[0].words
    assert "printer" in " ".join(s.text.lower() for s in segments)
    assert controls.windows >= 1 and controls.repeated_segments == 0 and controls.words_removed == 0


def test_noisy_recording_gives_one_transcript(service, recordings):
    """Noisy audio drives Whisper into its sampling fallback; that sampling is seeded, so the
    same bytes give the same transcript on every call and on re-indexing."""
    name = "internet_dropout_noisy_en-us.ogg"
    data = (AUDIO / name).read_bytes()
    with service.client(timeout_s=300) as client:
        runs = [list(client.transcribe(data)) for _ in range(2)]
        stored = client.get(recordings[name].id, collection=COLLECTION).text
    texts = [" ".join(p.text.strip() for p in parts[1:-1]) for parts in runs]
    assert texts[0] == texts[1] == stored
    assert runs[0][-1] == runs[1][-1] and recordings[name].transcript_controls == runs[0][-1]


def test_reindexing_is_idempotent_and_delete_cascades(service, recordings):
    name = "printer_error_en-us.wav"
    with service.client(timeout_s=300) as client:
        before = client.count(collection=COLLECTION)
        again = client.index_audio((AUDIO / name).read_bytes(), source=f"copy/{name}", collection=COLLECTION)
        assert (again.id, again.created) == (recordings[name].id, False)
        assert client.count(collection=COLLECTION) == before
        assert client.get(again.id, collection=COLLECTION).sources == [name, f"copy/{name}"]
        segments = client.count(where={"parent_id": again.id}, collection=COLLECTION)
        assert segments == again.segment_count
        assert client.delete([again.id], collection=COLLECTION) == 1 + segments
        assert client.count(where={"parent_id": again.id}, collection=COLLECTION) == 0


BAD = {
    "empty bytes": (bad_audio.empty_bytes, ["empty"]),
    "random bytes": (bad_audio.random_bytes, ["not"]),
    "truncated file": (bad_audio.header_only_wav, ["no decodable audio"]),
    "video without audio": (bad_audio.video_without_audio, ["no audio stream"]),
    "over-long recording": (lambda: bad_audio.long_silence_flac(AUDIO_MAX_DURATION_S + 60), ["limit", "120"]),
    "over-size upload": (lambda: bad_audio.over_byte_cap(AUDIO_MAX_BYTES), ["bytes", "limit"]),
    "huge sample rate": (bad_audio.wav_huge_sample_rate, ["sample rate"]),
    "zero channels": (bad_audio.wav_zero_channels, ["channel"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_audio_is_rejected(service, recordings, case):
    make, words = BAD[case]
    data = make()
    with service.client() as client:
        before = client.count(collection=COLLECTION)
        for call in (lambda: client.index_audio(data, collection=COLLECTION), lambda: list(client.transcribe(data))):
            with pytest.raises(LoupeCallError) as info:
                call()
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
            for word in words:
                assert word in info.value.reason.lower(), info.value.reason
        assert client.health() == "SERVING" and client.count(collection=COLLECTION) == before


def _norm(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower())
