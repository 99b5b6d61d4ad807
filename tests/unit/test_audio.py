"""encoders.audio.decode: every bad input is rejected with a reason a human can act on, every good
one decodes to 16 kHz mono float32 of the right length, and the duration cap holds even when
the header lies."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest

from encoders.audio import decode as audio
from encoders.audio.decode import (
    AudioLimits,
    DecodedAudio,
    decode_audio,
    probe_audio,
    sniff_container,
)
from encoders.common.errors import InvalidInput
from tests.fixtures import bad_audio as ba

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
REFERENCES = json.loads((FIXTURES / "references.json").read_text())
SHORT = AudioLimits(max_duration_s=5)


def rejected(data: bytes, limits: AudioLimits | None = None, **kwargs: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        decode_audio(data, limits or AudioLimits(), **kwargs)
    return info.value


def peak_hz(samples: np.ndarray, rate: int = audio.SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def amplitude_at(samples: np.ndarray, hz: float, rate: int = audio.SAMPLE_RATE) -> float:
    """Amplitude of the sine at `hz` (least squares fit of sin and cos)."""
    t = np.arange(len(samples)) / rate
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, samples.astype(np.float64), rcond=None)
    return float(np.hypot(*coef))


@pytest.fixture
def fed_seconds(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Seconds of decoded audio that reach the resampler, recorded as decoding goes."""
    fed: list[float] = [0.0]
    real = av.AudioResampler

    class Counting:
        def __init__(self, **kwargs: object) -> None:
            self._inner = real(**kwargs)

        def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
            if frame is not None:
                fed[0] += frame.samples / frame.sample_rate
            return self._inner.resample(frame)

    monkeypatch.setattr(audio.av, "AudioResampler", Counting)
    return fed


# --- bad inputs -------------------------------------------------------------------------

BAD: list[tuple[str, Callable[[], bytes], AudioLimits, tuple[str, ...]]] = [
    ("empty", ba.empty_bytes, AudioLimits(), ("empty", "0 bytes")),
    ("random", ba.random_bytes, AudioLimits(), ("not audio", "recognised container", "00 b1 65", "WAV, MP3, FLAC")),
    ("header-only WAV", ba.header_only_wav, AudioLimits(), ("WAV", "no decodable audio")),
    ("truncated FLAC", ba.truncated_flac, AudioLimits(), ("FLAC", "truncated or corrupt")),
    ("truncated Ogg", ba.truncated_ogg, AudioLimits(), ("Ogg", "truncated or corrupt")),
    ("truncated MP3", ba.truncated_mp3, AudioLimits(), ("MP3", "truncated or corrupt")),
    (
        "MP4 video only",
        ba.video_without_audio,
        AudioLimits(),
        ("MP4/M4A/MOV", "no audio stream", "video or other container", "1 video"),
    ),
    (
        "MKV video only",
        lambda: ba.video_without_audio("matroska"),
        AudioLimits(),
        ("Matroska/WebM", "no audio stream", "1 video"),
    ),
    (
        "over byte cap",
        lambda: ba.over_byte_cap(10_000),
        AudioLimits(max_bytes=10_000),
        ("10,002 bytes", "limit is 10,000 bytes"),
    ),
    ("4 GHz WAV", ba.wav_huge_sample_rate, AudioLimits(), ("sample rate", "4,000,000,000 Hz", "384,000 Hz")),
    ("2 GHz WAV", lambda: ba.wav_huge_sample_rate(2_000_000_000), AudioLimits(), ("sample rate", "2,000,000,000 Hz")),
    ("0 Hz WAV", ba.wav_zero_sample_rate, AudioLimits(), ("sample rate", "0 Hz")),
    ("0-channel WAV", ba.wav_zero_channels, AudioLimits(), ("0 channels", "1 to 32")),
    ("33 channels", lambda: ba.many_channels_wav(33), AudioLimits(), ("33 channels", "1 to 32")),
    ("MP2 codec", ba.mp2_audio, AudioLimits(), ("codec mp2", "not accepted", "pcm_*, mp3")),
    ("AVI", lambda: ba.other_format("avi"), AudioLimits(), ("AVI video", "not an accepted")),
    ("WMA", lambda: ba.other_format("wma"), AudioLimits(), ("ASF (WMA/WMV)",)),
    ("MIDI", lambda: ba.other_format("midi"), AudioLimits(), ("MIDI",)),
    ("too long", lambda: ba.long_silence_flac(8), SHORT, ("header declares 8 s", "limit is 5 s")),
    (
        "header under-states",
        lambda: ba.lying_flac(8, declared_seconds=1),
        SHORT,
        ("decodes to more than 5 s", "declares 1 s"),
    ),
    (
        "header has no duration",
        lambda: ba.lying_flac(8, declared_seconds=0),
        SHORT,
        ("decodes to more than 5 s", "declares no duration"),
    ),
]


@pytest.mark.parametrize(("make", "limits", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_with_a_reason(
    make: Callable[[], bytes], limits: AudioLimits, words: tuple[str, ...]
) -> None:
    error = rejected(make(), limits, field="items[3].audio")
    assert error.field == "items[3].audio"
    for word in words:
        assert word in error.reason, error.reason


def test_byte_cap_is_checked_before_ffmpeg_sees_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("av.open was called")

    monkeypatch.setattr(audio.av, "open", refuse)
    too_big = rejected(ba.over_byte_cap(1000), AudioLimits(max_bytes=1000))
    assert "limit is 1,000 bytes" in too_big.reason
    assert "recognised container" in rejected(ba.random_bytes()).reason


def test_default_duration_cap_rejects_from_the_header_without_decoding(
    fed_seconds: list[float],
) -> None:
    data = ba.lying_flac(2, declared_seconds=4 * 3600)
    reason = rejected(data).reason
    assert "14,400 s (4 h)" in reason and "10,800 s (3 h)" in reason
    assert fed_seconds[0] == 0
    with pytest.raises(InvalidInput, match="header declares"):
        probe_audio(data)


@pytest.mark.parametrize("declared", [1, 0])
def test_decoding_stops_at_the_cap_when_the_header_lies(declared: float, fed_seconds: list[float]) -> None:
    data = ba.lying_flac(120, declared_seconds=declared)
    assert probe_audio(data, SHORT).declared_duration_s == (declared or None)
    assert "decodes to more than 5 s" in rejected(data, SHORT).reason
    assert fed_seconds[0] <= 5.0  # stopped at the cap, not after 120 s


def test_a_lying_header_within_the_cap_still_decodes_fully() -> None:
    decoded = decode_audio(ba.lying_flac(3, declared_seconds=1), SHORT)
    assert decoded.duration_s == pytest.approx(3.0, rel=0.01)


def test_limits_must_be_sane() -> None:
    with pytest.raises(ValueError, match="positive"):
        AudioLimits(max_duration_s=0)
    with pytest.raises(ValueError, match="cannot sniff"):
        AudioLimits(allowed_formats=("wav", "avi"))
    with pytest.raises(ValueError, match="out of range"):
        AudioLimits(max_channels=65)


def test_format_and_codec_allow_lists_are_configurable() -> None:
    reason = rejected(ba.tone_flac(), AudioLimits(allowed_formats=("wav",))).reason
    assert "container FLAC is not accepted" in reason and "one of: WAV" in reason
    reason = rejected(ba.tone_mp3(), AudioLimits(allowed_codecs=("pcm_*", "flac"))).reason
    assert "codec mp3 is not accepted" in reason
    reason = rejected(ba.stereo_44k_wav(), AudioLimits(max_sample_rate=24_000)).reason
    assert "44,100 Hz" in reason and "4,000 to 24,000 Hz" in reason


# --- good inputs ------------------------------------------------------------------------

# (factory, container, codec, source rate, tolerance in seconds). AAC keeps encoder padding:
# up to one 1024-sample frame (M4A) or the 1024-sample priming too (ADTS, no edit list).
GOOD = [
    (ba.tone_wav, "wav", "pcm_s16le", 16_000, 0.0),
    (ba.tone_flac, "flac", "flac", 16_000, 0.0),
    (ba.tone_ogg_opus, "ogg", "opus", 48_000, 0.01),
    (ba.tone_webm_opus, "matroska,webm", "opus", 48_000, 0.01),
    (ba.tone_mp3, "mp3", "mp3", 16_000, 0.01),
    (ba.tone_m4a, "mov,mp4,m4a,3gp,3g2,mj2", "aac", 16_000, 0.07),
    (ba.tone_adts, "aac", "aac", 16_000, 0.15),
    (ba.tone_aiff, "aiff", "pcm_s16be", 16_000, 0.0),
    (ba.tone_caf_alac, "caf", "alac", 16_000, 0.0),
]


@pytest.mark.parametrize(("make", "container", "codec", "rate", "tolerance"), GOOD, ids=[g[0].__name__ for g in GOOD])
def test_good_formats_decode_to_16k_mono_float32(
    make: Callable[[float], bytes], container: str, codec: str, rate: int, tolerance: float
) -> None:
    seconds = 2.048  # a whole number of 4096-sample ALAC packets (see tone_caf_alac)
    data = make(seconds)
    assert sniff_container(data) == container
    decoded = decode_audio(data)
    assert isinstance(decoded, DecodedAudio)
    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert decoded.samples.flags.c_contiguous
    assert (decoded.container, decoded.codec) == (container, codec)
    assert (decoded.source_sample_rate, decoded.source_channels) == (rate, 1)
    assert decoded.duration_s == len(decoded.samples) / 16_000
    assert abs(decoded.duration_s - seconds) <= seconds * 0.01 + tolerance
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    middle = decoded.samples[4000:-4000]
    assert peak_hz(middle) == pytest.approx(440, abs=5)
    assert amplitude_at(middle, 440) == pytest.approx(0.3, abs=0.03)


def test_probe_reads_headers_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kwargs: object) -> None:
        raise AssertionError("probe_audio resampled audio")

    monkeypatch.setattr(audio.av, "AudioResampler", refuse)
    info = probe_audio(ba.tone_flac(2.0))
    assert (info.container, info.codec, info.sample_rate, info.channels) == ("flac", "flac", 16_000, 1)
    assert info.declared_duration_s == pytest.approx(2.0)
    with pytest.raises(InvalidInput, match="no audio stream"):
        probe_audio(ba.video_without_audio())


def test_stereo_44k_is_averaged_to_mono_and_resampled() -> None:
    decoded = decode_audio(ba.stereo_44k_wav(2.0))  # left 440 Hz, right 880 Hz, each 0.3
    assert (decoded.source_sample_rate, decoded.source_channels) == (44_100, 2)
    assert decoded.duration_s == pytest.approx(2.0, abs=1e-3)
    middle = decoded.samples[4000:-4000]
    assert amplitude_at(middle, 440) == pytest.approx(0.15, abs=0.01)
    assert amplitude_at(middle, 880) == pytest.approx(0.15, abs=0.01)
    assert np.abs(decoded.samples).max() <= 0.3 + 1e-3


def test_32_channels_without_a_layout_decode() -> None:
    # swresample cannot build a mono matrix for 32 unnamed channels, and PyAV crashes on
    # planar frames with 8+ channels; our per-frame average does neither.
    decoded = decode_audio(ba.many_channels_wav(32, 0.5))
    assert decoded.source_channels == 32
    assert decoded.duration_s == pytest.approx(0.5, abs=1e-3)
    assert np.abs(decoded.samples).max() <= 0.1 + 1e-3


def test_frames_that_change_rate_and_layout_mid_stream_are_resampled() -> None:
    decoded = decode_audio(ba.adts_format_change())  # header: 16 kHz mono; then 24 kHz stereo
    assert (decoded.source_sample_rate, decoded.source_channels) == (16_000, 1)
    assert decoded.duration_s == pytest.approx(2.0, abs=0.2)  # + AAC priming and padding
    first, second = decoded.samples[4000:12000], decoded.samples[-12000:-4000]
    assert amplitude_at(first, 440) == pytest.approx(0.3, abs=0.03)
    assert amplitude_at(second, 440) == pytest.approx(0.15, abs=0.02)  # mean of L and R
    assert amplitude_at(second, 880) == pytest.approx(0.15, abs=0.02)
    reason = rejected(ba.adts_format_change(), AudioLimits(max_sample_rate=20_000)).reason
    assert "24,000 Hz" in reason  # every frame is checked, not just the header


def test_nested_opens_are_refused() -> None:
    # Unreachable with the demuxers we allow (none opens other files); this checks the
    # safety net itself: PyAV calls the hook, and its exception reaches the caller.
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1:9/a.ts\n"
    hook = partial(audio._refuse_nested, field="audio")
    with pytest.raises(InvalidInput, match="refers to another resource"):
        av.open(io.BytesIO(playlist + b"#EXT-X-ENDLIST\n"), format="hls", io_open=hook)


def test_decoding_is_thread_safe() -> None:
    inputs = [ba.tone_flac(1.0), ba.tone_mp3(1.0), ba.stereo_44k_wav(1.0), ba.tone_ogg_opus(1.0)]
    alone = [decode_audio(data).samples for data in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda d: decode_audio(d).samples, inputs * 3))
    for i, samples in enumerate(together):
        np.testing.assert_array_equal(samples, alone[i % len(inputs)])


# --- committed clips (tests/fixtures/make_audio_fixtures.py) ------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_fixture_clips_decode_with_their_recorded_duration(name: str) -> None:
    reference = REFERENCES[name]
    decoded = decode_audio((FIXTURES / name).read_bytes())
    assert decoded.source_channels == 1
    assert decoded.duration_s == pytest.approx(reference["duration_s"], rel=0.01)
    loudest = float(np.abs(decoded.samples).max())
    if name.startswith("silence"):
        assert loudest == 0.0
    else:
        assert 0.3 < loudest <= 1.0


def test_fixture_leading_silence_is_silent() -> None:
    decoded = decode_audio((FIXTURES / "delivery_delay_lead_silence_en-us.flac").read_bytes())
    assert np.abs(decoded.samples[: int(2.9 * 16_000)]).max() < 1e-3
    assert np.abs(decoded.samples[int(3.5 * 16_000) :]).max() > 0.3


def test_fixture_folder_matches_references() -> None:
    clips = {p.name for p in FIXTURES.iterdir() if p.name != "references.json"}
    assert clips == set(REFERENCES)
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 3 * 2**20
    for reference in REFERENCES.values():
        assert set(reference) >= {"text", "language", "voice", "notes"}
