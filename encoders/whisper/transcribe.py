"""Speech to text with Whisper, behind one interface for several backends.

What is decoded (`TranscribeOptions`: language, beam, fallback temperatures, VAD, ...) is
separate from which library runs it (a backend, by name in `BACKENDS`) and from where the
weights come from (a model spec, see `encoders.whisper.models`). Loading happens once, under a
lock, on first use or on `load()`. `transcribe` returns the transcript's info at once and the
segments as a lazy iterator, each yielded as soon as it is decoded, so a server can stream.

    transcriber = create_transcriber("faster-whisper", "base")
    info, segments = transcriber.transcribe(samples)      # float32, 16 kHz, mono
    for segment in segments: ...

VAD is on by default in every backend (faster-whisper's bundled Silero model): only speech
is decoded, so silence and music do not come back as invented text.

Transcripts are deterministic: the same samples, model and options give the same segments on
every call. Whisper samples at temperature > 0 when a window fails the compression-ratio or
log-probability checks; every backend seeds that sampling from `options.seed` per call (see
each backend for how). Repetition and hallucination controls (`encoders.whisper.controls`)
are on by default and count what they removed in `TranscriptInfo.controls`.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import numpy as np

from encoders.common.errors import InvalidInput
from encoders.loading.lazy import SourcedModel
from encoders.loading.registry import Entry, Registry
from encoders.whisper.controls import TranscriptControls, controlled
from encoders.whisper.models import WhisperSource, resolve

SAMPLE_RATE = 16_000
MAX_THREADS = 64


BACKENDS: dict[str, Entry] = {
    "faster-whisper": Entry(
        "encoders.whisper.fw:FasterWhisperTranscriber", ("faster_whisper",), "pip install faster-whisper"
    ),
    # Uses faster-whisper's bundled Silero VAD, so it needs both libraries.
    "openai-whisper": Entry(
        "encoders.whisper.oa:OpenAIWhisperTranscriber",
        ("whisper", "faster_whisper"),
        "pip install openai-whisper faster-whisper",
    ),
}
TRANSCRIBERS = Registry("transcription backend", BACKENDS)
DEFAULT_BACKEND = "faster-whisper"
DEFAULT_MODEL = "base"
# Options read when the model loads; they cannot change per call.
LOAD_FIELDS = ("device", "compute_type", "threads", "seed")


@dataclass(frozen=True)
class TranscribeOptions:
    # Language code ("en", "de", ...) of the speech; None detects it from the first 30 s of speech.
    language: str | None = None
    # Beam width for the temperature-0 pass; 1 is greedy decoding.
    beam_size: int = 5
    # Candidates sampled per fallback pass at temperature > 0.
    best_of: int = 5
    # Decode only what the Silero voice-activity detector marks as speech (timestamps stay
    # those of the original audio). Off: silence and music may come back as invented text.
    vad_filter: bool = True
    # Silero speech probability above which a 32 ms window counts as speech.
    vad_threshold: float = 0.5
    # Silence shorter than this does not split speech regions (ms).
    vad_min_silence_ms: int = 2000
    # Padding kept around each speech region (ms).
    vad_speech_pad_ms: int = 400
    # Word-level start/end/probability on every segment (cross-attention alignment).
    word_timestamps: bool = True
    # Temperatures tried in order; a pass that fails the thresholds below is retried hotter.
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    # Retry hotter when the text's gzip compression ratio is above this (repetition loops).
    compression_ratio_threshold: float | None = 2.4
    # Retry hotter when the mean token log-probability is below this.
    logprob_threshold: float | None = -1.0
    # A window counts as silent when P(no speech) is above this and the log-prob test failed.
    no_speech_threshold: float | None = 0.6
    # Feed the previous window's text as the prompt for the next one.
    condition_on_previous_text: bool = True
    # Stop feeding the previous text after a window that needed the temperature fallback (a
    # window that went wrong must not steer the next one into the same loop).
    prompt_reset_on_fallback: bool = True
    # Skip text surrounded by more than this many seconds of silence when it looks invented
    # (short, improbable or stretched words; both backends' own check, needs word timings,
    # which are then computed even when not returned). None turns it off.
    hallucination_silence_s: float | None = 2.0
    # Drop a segment that repeats the one before it; cut a loop inside a segment.
    drop_repeats: bool = True
    # Seed of the sampling fallback: the same bytes give the same transcript on every call.
    seed: int = 0
    # CPU threads for the backend (CTranslate2 intra-op / torch); 1..MAX_THREADS.
    threads: int = 2
    # "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    # Weight/compute precision: "auto" picks per backend and device (faster-whisper: int8 on
    # CPU, float16 on GPU; openai-whisper: float32 on CPU, float16 on GPU), or a backend's own
    # name ("int8", "int8_float16", "float16", "float32", ...).
    compute_type: str = "auto"

    def __post_init__(self) -> None:
        if not 1 <= self.threads <= MAX_THREADS:
            raise InvalidInput(f"threads must be between 1 and {MAX_THREADS}, not {self.threads}", field="threads")
        if self.beam_size < 1 or self.best_of < 1:
            raise InvalidInput("beam_size and best_of must be at least 1", field="beam_size")
        if not self.temperatures or any(not 0.0 <= t <= 2.0 for t in self.temperatures):
            raise InvalidInput(
                f"temperatures must be a non-empty tuple of values in [0, 2], not {self.temperatures!r}",
                field="temperatures",
            )
        if not 0.0 < self.vad_threshold < 1.0:
            raise InvalidInput(f"vad_threshold must be in (0, 1), not {self.vad_threshold}", field="vad_threshold")
        if self.hallucination_silence_s is not None and not self.hallucination_silence_s > 0:
            raise InvalidInput(
                f"hallucination_silence_s must be > 0 seconds or None, not {self.hallucination_silence_s}",
                field="hallucination_silence_s",
            )
        if not 0 <= self.seed < 2**31:
            raise InvalidInput(f"seed must be in [0, 2**31), not {self.seed}", field="seed")
        if self.language is not None and not self.language.strip():
            raise InvalidInput("language must be a code like 'en' or None to detect it", field="language")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))


@dataclass(frozen=True)
class Word:
    start: float  # seconds from the start of the audio
    end: float
    text: str  # as the model spells it, with its leading space
    probability: float  # mean token probability, 0..1


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str  # without the leading space Whisper puts there
    words: tuple[Word, ...] = field(default=())  # empty unless word_timestamps
    avg_logprob: float = 0.0  # mean token log-probability of the chosen decode
    no_speech_prob: float = 0.0  # P(<|nospeech|>) for the window the segment came from


@dataclass(frozen=True)
class TranscriptInfo:
    language: str  # code, detected or as given
    language_probability: float  # of the detected language; 1.0 when given or English-only
    duration_s: float  # of the input audio
    model_id: str  # e.g. "whisper:base"
    # What the repetition/hallucination controls did; complete once the segments are consumed.
    controls: TranscriptControls = field(default_factory=TranscriptControls, compare=False)


class Transcriber(SourcedModel):
    """Whisper behind a backend library. Subclasses implement `_load_model` and `_transcribe`."""

    backend: str = ""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        options: TranscribeOptions = TranscribeOptions(),
        *,
        cache_dir: str | None = None,
        hub_timeout_s: float = 3.0,
    ) -> None:
        self.options = options
        self.cache_dir = cache_dir
        # Fails fast (seconds) when the weights cannot be had.
        self.source: WhisperSource = resolve(model, cache_dir=cache_dir, hub_timeout_s=hub_timeout_s)
        super().__init__()
        self._model = None

    def _load(self) -> None:
        self._model = self._load_model()

    def transcribe(
        self, samples: np.ndarray, options: TranscribeOptions | None = None
    ) -> tuple[TranscriptInfo, Iterator[Segment]]:
        """float32 16 kHz mono samples -> (info, lazily decoded segments in time order)."""
        options = self._call_options(options)
        samples = check_samples(samples)
        self.load()
        info, segments = self._transcribe(samples, options)
        return info, controlled(segments, info.controls, options.drop_repeats)

    def _call_options(self, options: TranscribeOptions | None) -> TranscribeOptions:
        if options is None:
            return self.options
        changed = [f for f in LOAD_FIELDS if getattr(options, f) != getattr(self.options, f)]
        if changed:
            raise InvalidInput(
                f"{', '.join(changed)} are fixed when the model loads (loaded with "
                f"{', '.join(f'{f}={getattr(self.options, f)!r}' for f in changed)}); "
                "create another transcriber for other values",
                field=changed[0],
            )
        return options

    # -- for subclasses ---------------------------------------------------------------------
    @abstractmethod
    def _load_model(self):
        """Load the backend's model; the result is kept as `self._model`."""

    @abstractmethod
    def _transcribe(self, samples: np.ndarray, options: TranscribeOptions) -> tuple[TranscriptInfo, Iterator[Segment]]:
        """(info, lazily decoded segments) for checked 16 kHz mono samples."""


def check_samples(samples: np.ndarray) -> np.ndarray:
    """The audio contract: 1-D float32 in [-1, 1]-ish at 16 kHz, no NaN/inf; empty is allowed."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise InvalidInput(
            f"audio must be mono 1-D samples, got shape {samples.shape}; decode with "
            "encoders.audio.decode.decode_audio first",
            field="audio",
        )
    if samples.dtype != np.float32:
        if not np.issubdtype(samples.dtype, np.floating):
            raise InvalidInput(f"audio samples must be float32 in [-1, 1], got {samples.dtype}", field="audio")
        samples = samples.astype(np.float32)
    if samples.size and not np.isfinite(samples).all():
        raise InvalidInput("audio samples contain NaN or infinity", field="audio")
    return np.ascontiguousarray(samples)


def check_language(language: str | None, known: Collection[str], multilingual: bool, model_id: str) -> str | None:
    """Normalised language code, or None to detect; refuses unknown codes and non-English on .en models."""
    if language is None:
        return None
    language = language.strip().lower()
    if language not in known:
        raise InvalidInput(
            f"unknown language code {language!r}; Whisper knows: {', '.join(sorted(known))}", field="language"
        )
    if not multilingual and language != "en":
        raise InvalidInput(
            f"{model_id} is English-only and cannot transcribe language {language!r}; use a "
            "multilingual model such as 'base'",
            field="language",
        )
    return language


def list_backends() -> list[str]:
    return TRANSCRIBERS.names()


def create_transcriber(
    backend: str = DEFAULT_BACKEND,
    model_spec: str = DEFAULT_MODEL,
    options: TranscribeOptions = TranscribeOptions(),
    **kwargs,
) -> Transcriber:
    """A transcriber for `backend` ("faster-whisper", "openai-whisper") over `model_spec`."""
    return TRANSCRIBERS.create(backend, model_spec, options, **kwargs)


def vad_options(options: TranscribeOptions):
    """faster-whisper's VadOptions for our options (shared by every backend)."""
    from faster_whisper.vad import VadOptions

    return VadOptions(
        threshold=options.vad_threshold,
        min_silence_duration_ms=options.vad_min_silence_ms,
        speech_pad_ms=options.vad_speech_pad_ms,
    )


def needs_word_timings(options: TranscribeOptions) -> bool:
    """Word timings are computed when asked for, or when the silence check needs them."""
    return options.word_timestamps or options.hallucination_silence_s is not None


def finite(value: float, default: float = 0.0) -> float:
    value = float(value)
    return value if math.isfinite(value) else default
