"""faster-whisper backend: Whisper on CTranslate2 (the default; int8 on CPU, float16 on GPU).

Needs a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json): the packaged
models, a local folder or a hub repository. openai-whisper .pt checkpoints run on the
openai-whisper backend instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from encoders.errors import ModelUnavailable
from encoders.transcribe import (SAMPLE_RATE, Segment, Transcriber, TranscribeOptions, TranscriptInfo, Word,
                                 check_language, finite, pick_device, vad_options)
from encoders.whisper_models import HOW_TO_SUPPLY, fetch


class FasterWhisperTranscriber(Transcriber):
    backend = "faster-whisper"

    def _load(self):
        import ctranslate2
        from faster_whisper import WhisperModel

        if self.source.format != "ct2":
            raise ModelUnavailable(f"{self.model_id} is an openai-whisper checkpoint; faster-whisper needs a "
                                   "CTranslate2 folder. Use backend 'openai-whisper' for .pt files. " + HOW_TO_SUPPLY)
        folder = fetch(self.source, cache_dir=self.cache_dir)
        if not (Path(folder) / "tokenizer.json").is_file():
            # Without it faster-whisper would fetch a tokenizer from the hub (and hang offline).
            raise ModelUnavailable(f"{folder} has no tokenizer.json; copy it from the model's hub repository "
                                   "next to model.bin. " + HOW_TO_SUPPLY)
        device = pick_device(self.options.device, ctranslate2.get_cuda_device_count() > 0)
        kind, _, index = device.partition(":")
        compute_type = self.options.compute_type
        if compute_type == "auto":
            compute_type = "int8" if kind == "cpu" else "float16"
        try:
            return WhisperModel(str(folder), device=kind, device_index=int(index or 0), compute_type=compute_type,
                                cpu_threads=self.options.threads, num_workers=1)
        except (RuntimeError, ValueError) as exc:  # CTranslate2 reports bad files and types this way
            raise ModelUnavailable(f"faster-whisper could not load {self.model_id} on {device} with compute "
                                   f"type {compute_type}: {exc}") from exc

    def _transcribe(self, samples: np.ndarray, options: TranscribeOptions
                    ) -> tuple[TranscriptInfo, Iterator[Segment]]:
        model = self._model
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        language = check_language(options.language, _LANGUAGE_CODES, model.model.is_multilingual, self.model_id)
        segments, info = model.transcribe(
            samples, language=language, beam_size=options.beam_size, best_of=options.best_of,
            temperature=list(options.temperatures),
            compression_ratio_threshold=options.compression_ratio_threshold,
            log_prob_threshold=options.logprob_threshold, no_speech_threshold=options.no_speech_threshold,
            condition_on_previous_text=options.condition_on_previous_text,
            word_timestamps=options.word_timestamps, vad_filter=options.vad_filter,
            vad_parameters=vad_options(options) if options.vad_filter else None)
        transcript = TranscriptInfo(language=info.language, language_probability=finite(info.language_probability),
                                    duration_s=len(samples) / SAMPLE_RATE, model_id=self.model_id)
        return transcript, _convert(segments)


def _convert(segments: Iterable) -> Iterator[Segment]:
    for s in segments:
        words = tuple(Word(float(w.start), float(w.end), w.word, finite(w.probability)) for w in s.words or ())
        yield Segment(start=float(s.start), end=float(s.end), text=s.text.strip(), words=words,
                      avg_logprob=finite(s.avg_logprob), no_speech_prob=finite(s.no_speech_prob))
