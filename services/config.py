"""Settings: typed, from `ray_config.yaml` app args, overridden by `LOUPE_*` environment.

Topology (replicas, CPUs, batch sizes per deployment) lives in `ray_config.yaml`; what the
service does (model, store, limits) is `LoupeSettings`. Nested fields use `__` in the
environment, e.g. `LOUPE_LIMITS__MAX_LIMIT=50`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from encoders.audio.decode import AudioLimits
from encoders.clip.encoder import ClipOptions, TextOverflow
from encoders.clip.sources import DEFAULT_MODEL
from encoders.image.decode import ImageLimits
from services.secrets import RedactedRepr, fill_from_files

BUNDLED_CLIP = "bundled:tiny-clip"
DEFAULT_COLLECTION = "default"


# Largest message between deployments (Serve's gRPC transport between replicas, which the
# handle calls use): a request's images travel to the Encoder in one such message.
HOP_MESSAGE_BYTES = 256 * 1024 * 1024


class RequestLimits(BaseModel):
    # Largest request message (bytes). The gRPC server is capped at this size; larger requests
    # fail with RESOURCE_EXHAUSTED before they are read. At most HOP_MESSAGE_BYTES, or a
    # request that passed the cap could not reach the Encoder.
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1, le=HOP_MESSAGE_BYTES)
    # Items (images or texts) in one IndexImages / IndexTexts call.
    max_items_per_call: int = 64
    # Largest `limit` a search may ask for.
    max_limit: int = 100
    # offset + limit may not exceed this (deep paging is a scan, not a search).
    max_window: int = 1000
    # Longest search query, in characters (the model reads ~77 tokens anyway).
    max_query_chars: int = 1000
    # Longest text item to index, in characters.
    max_text_chars: int = 10_000
    # Metadata keys per item and characters per string value.
    max_metadata_keys: int = 64
    max_metadata_value_chars: int = 4096
    # Images: bytes, pixels, sides and formats (see encoders.image.decode.ImageLimits).
    image_max_bytes: int = 20 * 1024 * 1024
    image_max_pixels: int = 40_000_000
    image_max_side: int = 12_000
    # Audio uploads: bytes and duration (seconds; 3 h of 16 kHz float32 is ~0.7 GB decoded).
    audio_max_bytes: int = 64 * 1024 * 1024
    audio_max_duration_s: float = 3 * 3600

    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.image_max_bytes, max_pixels=self.image_max_pixels, max_side=self.image_max_side
        )

    def audio_limits(self) -> AudioLimits:
        return AudioLimits(max_bytes=self.audio_max_bytes, max_duration_s=self.audio_max_duration_s)


class EncoderSettings(BaseModel):
    # Model spec (encoders.clip.sources); empty means the profile's default.
    model: str = ""
    # "auto", "cpu", "cuda".
    device: str = "auto"
    # "fp32", "fp16", "bf16".
    precision: str = "fp32"
    # torch threads per encoder replica; 0 = torch default.
    threads: int = 0
    # Images or texts per forward pass (also the Serve dynamic batch size).
    batch_size: int = 32
    # How long a batch waits to fill up before running (seconds). 0: a lone call runs at once,
    # and calls arriving during a forward pass form the next batch.
    batch_wait_timeout_s: float = 0.0
    text_overflow: TextOverflow = TextOverflow.TRUNCATE
    # "auto" (onnx on CPU at fp32, torch on GPU), "torch", "onnx" (fp32 ONNX Runtime, CPU) or
    # "onnx-int8" (only when its drift gate passes); see encoders.clip.runtimes and the README.
    runtime: str = "auto"
    # Where exported ONNX graphs are cached (empty: $LOUPE_ONNX_CACHE or ~/.cache/loupe/onnx).
    onnx_cache_dir: str = ""
    # The int8 drift gate's bounds against fp32.
    int8_min_cosine: float = 0.99
    int8_max_recall_loss: float = 0.02


class AdmissionSettings(BaseModel):
    """Bounded waits in the Ingress (services.serve.admission): per lane, how many calls run at once;
    a call that waits longer than max_wait_s for a slot gets RESOURCE_EXHAUSTED with RetryInfo."""

    max_wait_s: float = Field(default=2.0, gt=0)
    read: int = Field(default=64, ge=1)  # Count, GetItem, GetStatus
    search: int = Field(default=32, ge=1)  # SearchText, SearchImage (the Encoder batches up to 32)
    index: int = Field(default=8, ge=1)  # IndexImages, IndexTexts, Delete (up to 64 items each)
    audio: int = Field(default=4, ge=1)  # IndexAudio, Transcribe
    ask: int = Field(default=4, ge=1)  # Ask

    def lanes(self) -> dict[str, int]:
        return {"read": self.read, "search": self.search, "index": self.index, "audio": self.audio, "ask": self.ask}


class TranscriberSettings(BaseModel):
    # "faster-whisper" (CTranslate2; the fast one on CPU) or "openai-whisper".
    backend: str = "faster-whisper"
    # Whisper model spec (encoders.whisper.models); empty means "base".
    model: str = ""
    # "auto", "cpu", "cuda".
    device: str = "auto"
    # "auto" (int8 on CPU, float16 on GPU for faster-whisper) or a backend's own name.
    compute_type: str = "auto"
    # CPU threads for one transcription.
    threads: int = 2
    beam_size: int = 5
    # Voice-activity filtering: no invented text over silence or music.
    vad_filter: bool = True
    # Per-word timings (they also make segment chunks' start/end exact).
    word_timestamps: bool = True
    # Words of overlap between consecutive chunks of a transcript, in CLIP tokens.
    chunk_overlap_tokens: int = 4
    # Repetition and hallucination controls (encoders.whisper.controls; README "Audio"): drop a
    # segment repeating the previous one and cut loops; skip likely-invented text between
    # silences longer than this (seconds; null turns it off); stop conditioning on the previous
    # text after a window that needed the temperature fallback.
    drop_repeats: bool = True
    hallucination_silence_s: float | None = 2.0
    prompt_reset_on_fallback: bool = True
    # Seed of the sampling fallback: the same audio always gives the same transcript.
    seed: int = 0

    @property
    def spec(self) -> str:
        return self.model or "base"


class OcrSettings(BaseModel):
    # "auto": OCR images that look like screenshots or documents at index time; "always"; "never".
    mode: Literal["auto", "always", "never"] = "auto"
    # Engine (encoders.ocr); empty: the default, chosen by measured error rate (README).
    engine: str = ""
    threads: int = 2


class AskSettings(RedactedRepr, BaseModel):
    # Run the Answerer deployment (QAService.Ask).
    enabled: bool = True
    # "transformers" (a local or hub image-text-to-text model) or "openai" (a compatible endpoint).
    backend: str = "transformers"
    # Model spec; empty: the profile's ("bundled:tiny-vlm" or "HuggingFaceTB/SmolVLM-256M-Instruct").
    model: str = ""
    # For backend "openai": e.g. http://vllm:8000/v1 (key from LOUPE_VLM_API_KEY).
    base_url: str | None = None
    # A file holding base_url (its credentials stay out of the YAML): read at load.
    base_url_file: str | None = None
    device: str = "auto"
    max_new_tokens: int = 256
    # Drafts per question (1 + retries) before abstaining.
    max_attempts: int = 2
    max_images: int = 4
    max_question_chars: int = 2000
    max_answer_chars: int = 2000
    # Content check: answers containing these words are not returned.
    blocked_words: list[str] = Field(default_factory=list)
    # Personal data in answers (lmm.pipeline.AskOptions.answer_pii): "strict" (only what the
    # question asks for, from the request itself) or "request" (any of the request's own values).
    # Card numbers leave as their last four digits under both.
    answer_pii: Literal["strict", "request"] = "strict"
    # Questions about these topics are refused (blocked) before any model runs.
    out_of_scope_topics: list[str] = Field(default_factory=list)
    # Folders whose files retrieved items may be read from, so the model sees their pixels;
    # otherwise it sees their stored text (OCR, captions) only.
    image_roots: list[str] = Field(default_factory=list)
    prompt: str = "ask/v1"
    # What retrieval may put in the context: images (with their OCR text), text items and
    # transcript segments (cited with their time range).
    retrieval_modalities: list[Literal["image", "text", "audio_segment"]] = Field(
        default_factory=lambda: ["image", "text", "audio_segment"]
    )
    # Relevance floor: dense cosine below which a retrieved item is not packed in (in hybrid
    # mode, an item passes with this similarity or a content word shared with the question).
    retrieval_min_score: float = 0.2
    # Optional judge (lmm.judge): a second model asked whether the context supports each answer.
    # "" (off, the default: a second generation per answer costs seconds on CPU), "same" (the
    # Ask VLM), "openai" (an OpenAI-compatible endpoint at judge_base_url) or "transformers".
    judge: Literal["", "same", "openai", "transformers"] = ""
    judge_model: str = ""
    judge_base_url: str | None = None
    # A file holding judge_base_url, read at load.
    judge_base_url_file: str | None = None


class GrpcSettings(BaseModel):
    """The gRPC port, served by the Ingress replica itself (services.serve.grpcserver)."""

    # 127.0.0.1: this machine only; 0.0.0.0 (or "::") for every interface, behind TLS or a firewall.
    host: str = "127.0.0.1"
    port: int = Field(default=9000, ge=1, le=65535)
    # A call still running after this long ends with DEADLINE_EXCEEDED (a client's own shorter
    # deadline wins).
    request_timeout_s: float = Field(default=120, gt=0)
    # Calls in progress at once; beyond it gRPC refuses with RESOURCE_EXHAUSTED at once.
    max_concurrent_calls: int = Field(default=1024, ge=1)
    # On stop: new calls are refused, calls in flight get this long to finish.
    drain_s: float = Field(default=10, ge=0, le=15)


class HttpSettings(BaseModel):
    """Who the web page and JSON API answer (services.web.http), on Serve's HTTP port."""

    # Host names (the Host header, without its port) answered besides localhost, 127.0.0.1 and
    # [::1]; "*" for any. Others get 421, so a page on another site cannot reach the service
    # by pointing its own name at this machine (DNS rebinding).
    allowed_hosts: list[str] = Field(default_factory=list)
    # Origins (scheme://host[:port]) whose pages may call the API from a browser, besides the
    # service's own page; they get CORS answers. Other pages' calls get 403.
    allowed_origins: list[str] = Field(default_factory=list)


class MetricsSettings(BaseModel):
    """Prometheus metrics of every replica, served by `loupe serve` (services.serve.metrics)."""

    host: str = "127.0.0.1"
    # 0: no metrics endpoint.
    port: int = Field(default=9464, ge=0, le=65535)


class LogSettings(BaseModel):
    """Replica logs (services.serve.calllog): one line per call, each with its request id."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class TracingSettings(RedactedRepr, BaseModel):
    """OpenTelemetry spans per step (services.serve.tracing); off without an endpoint."""

    # OTLP/HTTP collector base URL, e.g. http://otel-collector:4318 (spans go to /v1/traces).
    endpoint: str = ""
    # A file holding endpoint (for a collector URL with credentials), read at load.
    endpoint_file: str | None = None


class FeedbackSettings(BaseModel):
    """What users saw, kept for their feedback and the review queue (services.events.feedback)."""

    # Keep a copy of every SearchText, SearchImage and Ask response (false: no feedback possible).
    record: bool = True
    # Unrated copies are dropped after this many days (abstained/blocked: once reviewed).
    keep_days: float = Field(default=30, gt=0)
    # Uploaded images of unrated calls are dropped sooner (rated and queued ones are kept).
    upload_keep_hours: float = Field(default=24, ge=0)


class CacheEntrySettings(BaseModel):
    enabled: bool = True
    # Entries kept per process (in-process backend); with Redis, bound the server's memory.
    max_entries: int = Field(default=10000, ge=1)
    ttl_s: float = Field(default=86400, gt=0)


class CacheSettings(RedactedRepr, BaseModel):
    """Exact caches (services/cache.py). Off: `enabled: false`, or one cache's `enabled`."""

    enabled: bool = True
    # IndexImages / IndexTexts look up each item's content first: stored by this model version,
    # it is not decoded, encoded or OCR'd again (its sources and metadata are merged).
    skip_stored: bool = True
    # redis://host:port/db: shared by every replica and kept across restarts; None: in-process.
    redis_url: str | None = None
    # A file holding redis_url (redis://:PASSWORD@host:port/db), read at load.
    redis_url_file: str | None = None
    redis_prefix: str = "loupe:"
    embeddings: CacheEntrySettings = Field(default_factory=lambda: CacheEntrySettings(max_entries=20000))
    ocr: CacheEntrySettings = Field(default_factory=lambda: CacheEntrySettings(max_entries=5000, ttl_s=7 * 86400))
    transcripts: CacheEntrySettings = Field(
        default_factory=lambda: CacheEntrySettings(max_entries=200, ttl_s=7 * 86400)
    )
    answers: CacheEntrySettings = Field(default_factory=lambda: CacheEntrySettings(max_entries=2000, ttl_s=3600))


class CalibrationSettings(BaseModel):
    """Confidence calibration per collection (indexing.calibration, `loupe calibrate`)."""

    # Hits of a calibrated collection below this confidence are dropped (SearchOptions.
    # min_confidence overrides it per call; 0 keeps every hit) and Ask retrieves none of them.
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    # Items the self-supervised probes are made from.
    sample_items: int = Field(default=300, ge=10, le=5000)
    # Metadata fields whose string value describes the item the way a search would: each is
    # a text query that should find its item.
    caption_fields: list[str] = Field(default_factory=lambda: ["caption", "title", "description", "alt", "name"])
    # Out-of-domain images drawn (noise, gradients, patterns, rendered text) as negatives.
    negative_images: int = Field(default=120, ge=0, le=1000)
    # Model priors (`python -m services.cli.prior`) beside the ones the package ships: what a
    # model's scores mean before a collection is calibrated, and the positives calibration
    # borrows where a collection has none (pictures without captions).
    prior_files: list[str] = Field(default_factory=list)


class RerankerSettings(BaseModel):
    """One reranker (indexing.rerank): a rerank endpoint or a local cross-encoder."""

    # "http" (a TEI / Infinity / Jina / Cohere-style endpoint) or "cross-encoder" (a local folder).
    kind: Literal["http", "cross-encoder"]
    # http: the endpoint with its path, e.g. http://127.0.0.1:7997/v1/rerank.
    url: str = ""
    # http: "cohere" (documents -> results[].relevance_score; Infinity, Jina, Cohere) or "tei".
    api: Literal["cohere", "tei"] = "cohere"
    # http: the model name sent; cross-encoder: the model folder (transformers or model.onnx).
    model: str = ""
    api_key: str = ""
    api_key_file: str = ""
    # Hits (from the top, those with text) a call reranks at most; requests may ask fewer.
    candidates: int = Field(default=50, ge=1, le=500)
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    max_chars: int = Field(default=2000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _key_from_file(self) -> RerankerSettings:
        from services.secrets import read_secret_file

        if self.api_key_file:
            key = read_secret_file(self.api_key_file, "rerank.rerankers.*.api_key_file")
            if self.api_key and self.api_key != key:
                raise ValueError("a reranker's api_key and api_key_file hold different keys; keep one")
            self.api_key = key
        return self

    def config(self, candidates: int = 0):
        """The indexing.rerank config, asking at most `candidates` hits (0: the configured bound)."""
        from indexing.rerank import RerankConfig

        bound = min(candidates, self.candidates) if candidates > 0 else self.candidates
        return RerankConfig(
            kind=self.kind,
            url=self.url,
            api=self.api,
            model=self.model,
            api_key=self.api_key,
            candidates=bound,
            timeout_s=self.timeout_s,
            max_chars=self.max_chars,
        )


class RerankSettings(BaseModel):
    """The optional second stage of search: named rerankers, which collection uses which by
    default (a request names another, or "none"), and the diversity stage's window."""

    rerankers: dict[str, RerankerSettings] = Field(default_factory=dict)
    # Collection -> reranker name used when a request does not say.
    collections: dict[str, str] = Field(default_factory=dict)
    # Hits MMR reorders (SearchOptions.mmr_lambda turns it on per request).
    mmr_candidates: int = Field(default=50, ge=2, le=500)

    @model_validator(mode="after")
    def _known_names(self) -> RerankSettings:
        for collection, name in self.collections.items():
            if name not in self.rerankers and name != "none":
                raise ValueError(
                    f"rerank.collections[{collection!r}] names {name!r}, which is not in rerank.rerankers "
                    f"({', '.join(sorted(self.rerankers)) or 'none defined'})"
                )
        return self


# The privacy policy's content key in the data folder when `privacy.content_secret` is unset.
CONTENT_SECRET_FILE = "privacy-content.key"


def _data_folder_key(path: Path) -> bytes:
    """32 random bytes kept in `path` (owner-only), made by the first process that needs them."""
    import os
    import secrets

    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it just now
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
    return path.read_bytes()


PiiKind = Literal["SECRET", "EMAIL", "IBAN", "CARD", "IP", "PHONE", "NAME", "ADDRESS"]


class PrivacyRuleSettings(BaseModel):
    """Kinds of personal data (encoders.text.pii.KINDS); None: as the level above says."""

    # Masked before storing (cards keep their last four); default [CARD].
    stored_masked: list[PiiKind] | None = None
    # Shown only to clients with the personal_data right, masked for the others; default: the rest.
    shown_masked: list[PiiKind] | None = None


class PrivacySettings(PrivacyRuleSettings):
    """Personal data in stored text (indexing.privacy; README "Personal data")."""

    # Per collection: a name, "prefix*" or "*"; the longest pattern that matches wins.
    collections: dict[str, PrivacyRuleSettings] = Field(default_factory=dict)
    # Key of the digest (HMAC-SHA256) that stands for a text holding personal data in its
    # `sha256` and default id, so the digest cannot be used to test guesses of the hidden
    # values. None: a random key made once and kept in the data folder (CONTENT_SECRET_FILE);
    # set it (or content_secret_file) when Ingress replicas on several machines share a
    # Qdrant server, so the same text gets the same id everywhere.
    content_secret: str | None = None
    content_secret_file: str | None = None

    def policy(self, content_key: bytes = b""):
        from indexing.privacy import Privacy

        return Privacy.from_config(self.model_dump(), content_key=content_key)


class LoupeSettings(RedactedRepr, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOUPE_", env_nested_delimiter="__", extra="ignore")

    # "default" runs the real models; "bundled" runs the small models shipped in the package.
    profile: Literal["default", "bundled"] = "default"
    # Embedded Qdrant Edge data folder (ignored when qdrant_url is set).
    data_dir: str = "./loupe-data"
    # Qdrant server URL; set it to use qdrant-client instead of the embedded store.
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    # Files holding the two above, read at load (README "Secrets": secrets stay out of the YAML).
    qdrant_url_file: str | None = None
    qdrant_api_key_file: str | None = None
    # When set, every call must send `authorization: Bearer <key>` or `x-api-key: <key>`: the
    # one-client case of the gateway (all rights, all collections).
    api_key: str | None = None
    # A file holding api_key, read at load.
    api_key_file: str | None = None
    # The gateway's clients file (YAML: ids, key hashes, rights, collections; README "Access").
    # Takes precedence over api_key; with neither, the service is open to anyone who reaches it.
    clients_file: str | None = None
    # Where usage and audit records go: "sqlite:///path" or "postgresql://user:pass@host/db";
    # None: loupe-events.db (SQLite) in data_dir.
    events_url: str | None = None
    # A file holding events_url (for a PostgreSQL URL with its password), read at load.
    events_url_file: str | None = None
    # Ingress replicas (set by `loupe serve` from the config): each enforces 1/N of a rate limit.
    ingress_replicas: int = Field(default=1, ge=1)
    # Build the vector index (HNSW) after this many new points, once writes pause; 0 = never.
    optimize_after_points: int = 5000
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    ocr: OcrSettings = Field(default_factory=OcrSettings)
    ask: AskSettings = Field(default_factory=AskSettings)
    # Run the Transcriber deployment (audio indexing and transcription).
    audio: bool = True
    transcriber: TranscriberSettings = Field(default_factory=TranscriberSettings)
    limits: RequestLimits = Field(default_factory=RequestLimits)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # Environment beats the YAML app args (init); nested values are deep-merged.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _absolute_data_dir(self) -> LoupeSettings:
        # Ray workers do not share the caller's working directory.
        self.data_dir = str(Path(self.data_dir).expanduser().resolve())
        return self

    @model_validator(mode="after")
    def _read_secret_files(self) -> LoupeSettings:
        # `<field>_file` options (services.secrets): the secret lives in a file, not in the YAML
        # that Ray is handed and logs, nor in the environment.
        fill_from_files(self)
        return self

    @property
    def clip_model(self) -> str:
        if self.encoder.model:
            return self.encoder.model
        return BUNDLED_CLIP if self.profile == "bundled" else DEFAULT_MODEL

    @property
    def vlm_model(self) -> str:
        if self.ask.model:
            return self.ask.model
        return "bundled:tiny-vlm" if self.profile == "bundled" else "HuggingFaceTB/SmolVLM-256M-Instruct"

    def transcribe_options(self):
        from encoders.whisper.transcribe import TranscribeOptions

        t = self.transcriber
        return TranscribeOptions(
            beam_size=t.beam_size,
            vad_filter=t.vad_filter,
            word_timestamps=t.word_timestamps,
            threads=t.threads,
            device=t.device,
            compute_type=t.compute_type,
            drop_repeats=t.drop_repeats,
            hallucination_silence_s=t.hallucination_silence_s,
            prompt_reset_on_fallback=t.prompt_reset_on_fallback,
            seed=t.seed,
        )

    def events_store_url(self) -> str:
        from services.events.store import default_url

        return self.events_url or default_url(self.data_dir)

    def privacy_policy(self):
        """The privacy policy (indexing.privacy.Privacy) with its content key: `privacy.
        content_secret`, else the key kept in the data folder (made on first use)."""
        secret = self.privacy.content_secret
        key = secret.encode() if secret else _data_folder_key(Path(self.data_dir) / CONTENT_SECRET_FILE)
        return self.privacy.policy(content_key=key)

    def clip_options(self) -> ClipOptions:
        e = self.encoder
        return ClipOptions(
            model=self.clip_model,
            device=e.device,
            precision=e.precision,
            threads=e.threads,
            batch_size=e.batch_size,
            text_overflow=e.text_overflow,
            runtime=e.runtime,
            onnx_cache_dir=e.onnx_cache_dir or None,
            int8_min_cosine=e.int8_min_cosine,
            int8_max_recall_loss=e.int8_max_recall_loss,
        )


def load_settings(args: dict[str, Any] | None = None) -> LoupeSettings:
    """App args (from YAML) first, then LOUPE_* environment variables win."""
    return LoupeSettings(**(args or {}))
