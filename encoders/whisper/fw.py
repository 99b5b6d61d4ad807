"""faster-whisper backend: Whisper on CTranslate2 (the default; int8 on CPU, float16 on GPU).

Needs a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json): the packaged
models, a local folder or a hub repository. openai-whisper .pt checkpoints run on the
openai-whisper backend instead.

Seeded fallback: CTranslate2 draws samples from a random generator that belongs to the model's
worker thread and is seeded once, when that thread first samples (`set_random_seed` does not
reseed it later). Sampling on the shared model would therefore continue one random stream
across calls, and the same audio would come back differently each time. So the temperature-0
pass runs on the shared model, and a call whose window needs the sampling fallback gets a
sampler of its own: the same weights on a fresh worker thread, seeded with `options.seed`
(about 0.3 s for tiny.en, created only for such calls and freed with them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel  # this module is imported only when the backend is used

from encoders.common.errors import ModelUnavailable
from encoders.loading.runtime import pick_device
from encoders.whisper.controls import TranscriptControls, best_decode, fails_checks
from encoders.whisper.models import HOW_TO_SUPPLY, fetch
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

# Hands the call's controls from `_transcribe` to the model's `generate_segments`, which
# faster-whisper calls synchronously, in the same thread, inside `transcribe`.
_handoff = threading.local()


class FasterWhisperTranscriber(Transcriber):
    backend = "faster-whisper"

    def _load_model(self):
        import ctranslate2

        if self.source.format != "ct2":
            raise ModelUnavailable(
                f"{self.model_id} is an openai-whisper checkpoint; faster-whisper needs a "
                "CTranslate2 folder. Use backend 'openai-whisper' for .pt files. " + HOW_TO_SUPPLY
            )
        folder = fetch(self.source, cache_dir=self.cache_dir)
        if not (Path(folder) / "tokenizer.json").is_file():
            # Without it faster-whisper would fetch a tokenizer from the hub (and hang offline).
            raise ModelUnavailable(
                f"{folder} has no tokenizer.json; copy it from the model's hub repository "
                "next to model.bin. " + HOW_TO_SUPPLY
            )
        device = pick_device(self.options.device, ctranslate2.get_cuda_device_count() > 0)
        kind, _, index = device.partition(":")
        compute_type = self.options.compute_type
        if compute_type == "auto":
            compute_type = "int8" if kind == "cpu" else "float16"
        try:
            return _ControlledModel(
                str(folder),
                device=kind,
                device_index=int(index or 0),
                compute_type=compute_type,
                cpu_threads=self.options.threads,
                num_workers=1,
                seed=self.options.seed,
            )
        except (RuntimeError, ValueError) as exc:  # CTranslate2 reports bad files and types this way
            raise ModelUnavailable(
                f"faster-whisper could not load {self.model_id} on {device} with compute type {compute_type}: {exc}"
            ) from exc

    def _transcribe(self, samples: np.ndarray, options: TranscribeOptions) -> tuple[TranscriptInfo, Iterator[Segment]]:
        model = self._model
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        language = check_language(options.language, _LANGUAGE_CODES, model.model.is_multilingual, self.model_id)
        controls = TranscriptControls()
        _handoff.call = _Call(controls, options)
        try:
            segments, info = model.transcribe(
                samples,
                language=language,
                beam_size=options.beam_size,
                best_of=options.best_of,
                temperature=list(options.temperatures),
                compression_ratio_threshold=options.compression_ratio_threshold,
                log_prob_threshold=options.logprob_threshold,
                no_speech_threshold=options.no_speech_threshold,
                condition_on_previous_text=options.condition_on_previous_text,
                # 0: any window that fell back (temperature > 0) resets the prompt.
                prompt_reset_on_temperature=0.0 if options.prompt_reset_on_fallback else 0.5,
                hallucination_silence_threshold=options.hallucination_silence_s,
                word_timestamps=needs_word_timings(options),
                vad_filter=options.vad_filter,
                vad_parameters=vad_options(options) if options.vad_filter else None,
            )
        finally:
            _handoff.call = None
        transcript = TranscriptInfo(
            language=info.language,
            language_probability=finite(info.language_probability),
            duration_s=len(samples) / SAMPLE_RATE,
            model_id=self.model_id,
            controls=controls,
        )
        return transcript, _convert(segments, options.word_timestamps)


class _Call:
    """One transcription's controls and, once a window needs sampling, its own seeded sampler."""

    def __init__(self, controls: TranscriptControls, options: TranscribeOptions) -> None:
        self.controls, self.options, self.sampler = controls, options, None


class _ControlledModel(WhisperModel):
    """faster-whisper's model with a per-call seeded sampling fallback and counted controls."""

    def __init__(self, model_path: str, *, seed: int, **kwargs) -> None:
        super().__init__(model_path, **kwargs)
        self._seed = seed
        self._sampler_args = {
            "model_path": model_path,
            "device": kwargs["device"],
            "device_index": kwargs["device_index"],
            "compute_type": kwargs["compute_type"],
            "intra_threads": kwargs["cpu_threads"],
            "inter_threads": 1,
        }
        self._sampler_lock = threading.Lock()

    def generate_segments(self, features, tokenizer, options, *args, **kwargs):
        # A plain function (not a generator): runs inside `transcribe`, on the caller's thread.
        options.loupe_call = getattr(_handoff, "call", None) or _Call(TranscriptControls(), None)
        return super().generate_segments(features, tokenizer, options, *args, **kwargs)

    def _sampler(self, call: _Call):
        import ctranslate2

        if call.sampler is None:
            with self._sampler_lock:  # the seed is process-wide until the new worker first samples
                ctranslate2.set_random_seed(self._seed)
                call.sampler = ctranslate2.models.Whisper(**self._sampler_args)
        return call.sampler

    def generate_with_fallback(self, encoder_output, prompt, tokenizer, options):
        from faster_whisper.transcribe import get_compression_ratio

        call: _Call = options.loupe_call
        controls = call.controls
        controls.windows += 1
        max_length = self.max_length if options.max_new_tokens is None else len(prompt) + options.max_new_tokens
        if max_length > self.max_length:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) plus max_new_tokens exceeds the model's {self.max_length} tokens"
            )
        results = []
        for temperature in options.temperatures:
            if temperature > 0:
                model = self._sampler(call)
                kwargs = {
                    "beam_size": 1,
                    "num_hypotheses": options.best_of,
                    "sampling_topk": 0,
                    "sampling_temperature": temperature,
                }
            else:
                model = self.model
                kwargs = {"beam_size": options.beam_size, "patience": options.patience}
            result = model.generate(
                encoder_output,
                [prompt],
                length_penalty=options.length_penalty,
                repetition_penalty=options.repetition_penalty,
                no_repeat_ngram_size=options.no_repeat_ngram_size,
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=options.suppress_blank,
                suppress_tokens=options.suppress_tokens,
                max_initial_timestamp_index=int(round(options.max_initial_timestamp / self.time_precision)),
                **kwargs,
            )[0]
            tokens = result.sequences_ids[0]
            # The score is the length-penalised cumulative log-probability.
            avg_logprob = result.scores[0] * len(tokens) ** options.length_penalty / (len(tokens) + 1)
            decode = _Decode(result, avg_logprob, temperature, get_compression_ratio(tokenizer.decode(tokens).strip()))
            results.append(decode)
            if not fails_checks(
                decode.compression_ratio,
                avg_logprob,
                result.no_speech_prob,
                compression_ratio_threshold=options.compression_ratio_threshold,
                logprob_threshold=options.log_prob_threshold,
                no_speech_threshold=options.no_speech_threshold,
            ):
                break
        else:
            controls.kept_best_windows += 1
            decode = best_decode(results, options.compression_ratio_threshold)
            # The last temperature tried decides faster-whisper's prompt reset.
            decode = _Decode(decode.result, decode.avg_logprob, temperature, decode.compression_ratio)
        if len(results) > 1:
            controls.fallback_windows += 1
        if options.condition_on_previous_text and decode.temperature > options.prompt_reset_on_temperature:
            controls.prompt_resets += 1
        return decode.result, decode.avg_logprob, decode.temperature, decode.compression_ratio


class _Decode:
    __slots__ = ("result", "avg_logprob", "temperature", "compression_ratio")

    def __init__(self, result, avg_logprob: float, temperature: float, compression_ratio: float) -> None:
        self.result, self.avg_logprob = result, avg_logprob
        self.temperature, self.compression_ratio = temperature, compression_ratio


def _convert(segments: Iterable, with_words: bool) -> Iterator[Segment]:
    for s in segments:
        words = tuple(
            Word(float(w.start), float(w.end), w.word, finite(w.probability))
            for w in (s.words or () if with_words else ())
        )
        yield Segment(
            start=float(s.start),
            end=float(s.end),
            text=s.text.strip(),
            words=words,
            avg_logprob=finite(s.avg_logprob),
            no_speech_prob=finite(s.no_speech_prob),
        )
