"""openai-whisper backend: the reference PyTorch implementation (float32 on CPU, float16 on GPU).

Loads openai-whisper .pt checkpoints (a local file or an official name, "openai:small"). Given
a CTranslate2 model instead (the packaged 'tiny.en' and 'base', a local CT2 folder), it converts
it once with `encoders.whisper.convert` into the Whisper cache and loads that: same weights.

VAD works as in faster-whisper: its bundled Silero model finds the speech regions, only those
are decoded (in groups of up to 30 s of speech, each yielded as soon as it is decoded), and
timestamps are mapped back onto the original audio. Note that `threads` sets torch's
process-wide intra-op thread count.

Seeded fallback: openai-whisper samples with torch's global generator. Every sampling pass
reseeds it from `options.seed` (inside `torch.random.fork_rng`, so the process's own random
state is left as it was), so a window decodes the same way whatever ran before it. When every
temperature fails the checks, the most probable decode is kept (openai-whisper would keep the
last, hottest one), and a window that fell back ends the prompt, as in faster-whisper.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from encoders.clip.sources import file_version
from encoders.common.errors import InvalidInput, ModelUnavailable
from encoders.loading.runtime import pick_device
from encoders.whisper.controls import TranscriptControls, best_decode, fails_checks
from encoders.whisper.models import fetch, whisper_cache_dir
from encoders.whisper.transcribe import (
    SAMPLE_RATE,
    Segment,
    TranscribeOptions,
    Transcriber,
    TranscriptInfo,
    Word,
    check_language,
    finite,
    needs_word_timings,
    vad_options,
)

GROUP_S = 30.0  # most seconds of speech decoded (and yielded) together


class OpenAIWhisperTranscriber(Transcriber):
    backend = "openai-whisper"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # openai-whisper installs kv-cache hooks on the model for each decode: one at a time.
        self._decode_lock = threading.Lock()

    def _load_model(self):
        import torch
        import whisper
        from whisper.model import ModelDimensions

        self._device = pick_device(self.options.device, torch.cuda.is_available())
        self._fp16 = _fp16(self.options.compute_type, self._device)
        if self._device == "cpu":
            torch.set_num_threads(self.options.threads)
        path = self._checkpoint()
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model = _controlled_whisper_class()(ModelDimensions(**checkpoint["dims"]))
            model.load_state_dict(checkpoint["model_state_dict"])
        except (RuntimeError, KeyError, TypeError, OSError) as exc:
            raise ModelUnavailable(f"{path} is not a loadable openai-whisper checkpoint: {exc}") from exc
        heads = checkpoint.get("alignment_heads") or whisper._ALIGNMENT_HEADS.get(self.source.location)
        if heads is not None:  # else openai-whisper's default: all heads of the upper half
            model.set_alignment_heads(heads)
        if self.options.word_timestamps and self._device == "cpu":
            from whisper.timing import dtw

            dtw(torch.zeros((4, 4)))  # numba compiles the word aligner on first use (~2 s): do it now
        return model.to(self._device).eval()

    def _checkpoint(self) -> Path:
        """The .pt to load; CTranslate2 weights are converted once into the cache."""
        path = fetch(self.source, cache_dir=self.cache_dir)
        if self.source.format == "openai":
            return path
        from encoders.whisper.convert import convert

        version = file_version(path / "model.bin").removeprefix("sha256:")
        name = re.sub(r"[^\w.-]+", "_", self.model_id.removeprefix("whisper:"))
        target = whisper_cache_dir(self.cache_dir) / "openai" / f"{name}-{version}.pt"
        return target if target.is_file() else convert(path, target)

    def _transcribe(self, samples: np.ndarray, options: TranscribeOptions) -> tuple[TranscriptInfo, Iterator[Segment]]:
        import whisper.tokenizer

        model = self._model
        known = set(whisper.tokenizer.LANGUAGES)
        language = check_language(options.language, known, model.is_multilingual, self.model_id)
        groups = _speech_groups(samples, options)
        probability = 1.0
        if language is None and model.is_multilingual:
            first = np.concatenate([samples[c["start"] : c["end"]] for c in groups[0]]) if groups else samples[:0]
            language, probability = self._detect_language(first)
        info = TranscriptInfo(
            language=language or "en",
            language_probability=probability,
            duration_s=len(samples) / SAMPLE_RATE,
            model_id=self.model_id,
        )
        return info, self._segments(samples, groups, info.language, options, info.controls)

    def _detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        import torch
        from whisper.audio import N_SAMPLES, log_mel_spectrogram, pad_or_trim

        model = self._model
        mel = log_mel_spectrogram(pad_or_trim(audio[:N_SAMPLES]), model.dims.n_mels).to(self._device)
        with self._decode_lock, torch.inference_mode():
            _, probs = model.detect_language(mel.half() if self._fp16 else mel)
        language = max(probs, key=probs.get)
        return language, finite(probs[language])

    def _segments(
        self,
        samples: np.ndarray,
        groups: list[list[dict]],
        language: str,
        options: TranscribeOptions,
        controls: TranscriptControls,
    ) -> Iterator[Segment]:
        import torch
        import whisper
        from faster_whisper.vad import SpeechTimestampsMap

        prompt = None
        for group in groups:
            audio = np.concatenate([samples[c["start"] : c["end"]] for c in group])
            with self._decode_lock, torch.random.fork_rng(devices=[]):
                self._model.call = _Call(controls, options)
                result = whisper.transcribe(
                    self._model,
                    audio,
                    verbose=None,
                    language=language,
                    fp16=self._fp16,
                    temperature=options.temperatures,
                    beam_size=options.beam_size,
                    best_of=options.best_of,
                    compression_ratio_threshold=options.compression_ratio_threshold,
                    logprob_threshold=options.logprob_threshold,
                    no_speech_threshold=options.no_speech_threshold,
                    condition_on_previous_text=options.condition_on_previous_text,
                    hallucination_silence_threshold=options.hallucination_silence_s,
                    word_timestamps=needs_word_timings(options),
                    initial_prompt=prompt,
                )
                fell_back = self._model.call.fell_back
                self._model.call = None
            ts_map = SpeechTimestampsMap(group, SAMPLE_RATE)
            for raw in result["segments"]:
                segment = _restore(raw, ts_map, options.word_timestamps)
                if segment.text:
                    yield segment
            if options.condition_on_previous_text:
                prompt = result["text"].strip() or None
                if fell_back and options.prompt_reset_on_fallback and prompt is not None:
                    controls.prompt_resets += 1
                    prompt = None


def _fp16(compute_type: str, device: str) -> bool:
    if compute_type == "auto":
        return device != "cpu"
    if compute_type not in ("float16", "float32"):
        raise InvalidInput(
            f"openai-whisper computes in float32 or float16 (GPU), not {compute_type!r}; use "
            "compute_type 'auto', 'float32' or 'float16'",
            field="compute_type",
        )
    if compute_type == "float16" and device == "cpu":
        raise ModelUnavailable("compute_type float16 needs a GPU with openai-whisper; use float32 on CPU")
    return compute_type == "float16"


def _speech_groups(samples: np.ndarray, options: TranscribeOptions) -> list[list[dict]]:
    """Speech regions ({"start", "end"} in samples) grouped into runs of at most GROUP_S of speech.

    Without VAD the whole input is one region (openai-whisper then walks it in 30 s windows)."""
    if not options.vad_filter:
        return [[{"start": 0, "end": len(samples)}]] if len(samples) else []
    from faster_whisper.vad import get_speech_timestamps

    chunks = get_speech_timestamps(samples, vad_options(options), sampling_rate=SAMPLE_RATE)
    groups: list[list[dict]] = []
    size = 0
    for chunk in chunks:
        length = chunk["end"] - chunk["start"]
        if not groups or size + length > GROUP_S * SAMPLE_RATE:
            groups.append([])
            size = 0
        groups[-1].append(chunk)
        size += length
    return groups


class _Call:
    """The transcription the model is decoding for (set under the decode lock)."""

    def __init__(self, controls: TranscriptControls, options: TranscribeOptions) -> None:
        self.controls, self.options = controls, options
        self.window: list = []  # this window's decodes, one per temperature tried
        self.fell_back = False  # some window of this group needed the fallback


def _controlled_whisper_class():
    from whisper.model import Whisper

    class ControlledWhisper(Whisper):
        """openai-whisper's model; `decode` seeds sampling, keeps the best decode, counts."""

        call: _Call | None = None

        def decode(self, mel, options, **kwargs):
            from dataclasses import replace

            import torch

            call = self.call
            if call is None:  # decoding outside a Loupe transcription (e.g. a test calling it)
                return super().decode(mel, options, **kwargs)
            o, controls = call.options, call.controls
            first = options.temperature == o.temperatures[0]
            if first:
                controls.windows += 1
                call.window = []
            elif len(call.window) == 1:
                controls.fallback_windows += 1
                call.fell_back = True
            if options.temperature > 0:
                torch.manual_seed(o.seed)
            result = super().decode(mel, options, **kwargs)
            call.window.append(result)
            if options.temperature > 0 and o.prompt_reset_on_fallback:
                # openai-whisper drops the prompt after a window hotter than 0.5; any fallback should.
                result = replace(result, temperature=max(result.temperature, 1.0))
            last = options.temperature == o.temperatures[-1] and len(call.window) == len(o.temperatures)
            if (
                last
                and len(o.temperatures) > 1
                and fails_checks(
                    result.compression_ratio,
                    result.avg_logprob,
                    result.no_speech_prob,
                    compression_ratio_threshold=o.compression_ratio_threshold,
                    logprob_threshold=o.logprob_threshold,
                    no_speech_threshold=o.no_speech_threshold,
                )
            ):
                controls.kept_best_windows += 1
                best = best_decode(call.window, o.compression_ratio_threshold)
                result = replace(best, temperature=result.temperature)
            return result

    return ControlledWhisper


def _restore(raw: dict, ts_map, with_words: bool = True) -> Segment:
    """Map a segment decoded from concatenated speech back onto the original timeline (the
    same rule as faster-whisper's restore_speech_timestamps: a word's two ends map through
    the region holding its middle; a segment spans its words)."""
    words = []
    for w in raw.get("words") or ():  # timings decide the segment's span even when not returned
        index = ts_map.get_chunk_index((w["start"] + w["end"]) / 2)
        words.append(
            Word(
                float(ts_map.get_original_time(w["start"], index)),
                float(ts_map.get_original_time(w["end"], index)),
                w["word"],
                finite(w.get("probability", 0.0)),
            )
        )
    if words:
        start, end = words[0].start, words[-1].end
    else:
        start, end = ts_map.get_original_time(raw["start"]), ts_map.get_original_time(raw["end"], is_end=True)
    return Segment(
        start=float(start),
        end=float(end),
        text=raw["text"].strip(),
        words=tuple(words) if with_words else (),
        avg_logprob=finite(raw.get("avg_logprob", 0.0)),
        no_speech_prob=finite(raw.get("no_speech_prob", 0.0)),
    )
