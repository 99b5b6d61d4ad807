"""Vision-language model backends for Ask: options, the registry, and `create_vlm`.

Which model (`VlmOptions.model`) is separate from how it runs (backend, device, dtype,
timeouts). Backends are named in `BACKENDS` and imported only when created, so importing
this module pulls in neither torch nor an HTTP client.

    transformers   in-process, any image-text-to-text model transformers loads
                   (`lmm.transformers_vlm`); model: hub id, local folder or "bundled:tiny-vlm"
    openai         an OpenAI-compatible chat completions server with image inputs, as vLLM and
                   Ollama serve them (`lmm.openai_vlm`); model: the name the server serves

Every backend satisfies `lmm.types.VisionLanguageModel`.
"""

from __future__ import annotations

from dataclasses import dataclass

from encoders.common.errors import InvalidInput
from encoders.loading.registry import Entry, Registry
from lmm.types import VisionLanguageModel

DEFAULT_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"

# Backend name -> "module:Class"; the class takes a VlmOptions.
BACKENDS = Registry(
    "VLM backend",
    {
        "transformers": Entry(
            "lmm.transformers_vlm:TransformersVlm", ("transformers", "torch"), "pip install transformers"
        ),
        "openai": Entry("lmm.openai_vlm:OpenAiVlm", ("httpx",), "pip install httpx"),
    },
)


@dataclass(frozen=True)
class VlmOptions:
    # Backend name, a key of BACKENDS: "transformers" or "openai".
    backend: str = "transformers"
    # transformers: hub id ("HuggingFaceTB/SmolVLM-256M-Instruct"), local folder (or "local-dir:/x"),
    # or "bundled:tiny-vlm"; openai: the model name the server serves ("HuggingFaceTB/SmolVLM-256M-Instruct",
    # "llava:7b").
    model: str = DEFAULT_MODEL
    # transformers: "cpu", "cuda", "cuda:1" or "auto" (cuda when available).
    device: str = "auto"
    # transformers: "fp32", "bf16" or "fp16" (GPU only).
    dtype: str = "fp32"
    # Ceiling on generated tokens; a call asking for more gets this many.
    max_new_tokens: int = 256
    # Most images one prompt may carry; more is an InvalidInput (memory and context stay bounded).
    max_images: int = 8
    # Longest image edge sent to the model in pixels; 0: the processor's own size (transformers)
    # or 1536 (openai). Larger images are downscaled, keeping the aspect ratio.
    max_image_edge: int = 0
    # transformers: torch intra-op threads on CPU; 0 keeps torch's default.
    threads: int = 0
    # transformers: generation stops after this many seconds (partial answer); openai: read timeout
    # of one request.
    timeout_s: float = 120.0
    # openai: seconds to open a connection.
    connect_timeout_s: float = 3.0
    # openai: extra tries after a timeout, a refused connection, HTTP 429 or 5xx.
    retries: int = 2
    # openai: first pause between tries in seconds, doubled each try.
    backoff_s: float = 0.5
    # openai: longest pause between tries; a Retry-After longer than this fails at once with Overloaded.
    max_backoff_s: float = 8.0
    # openai: server root up to and including /v1 (vLLM: http://host:8000/v1, Ollama: http://host:11434/v1).
    base_url: str = "http://localhost:8000/v1"
    # openai: API key sent as "Authorization: Bearer"; None reads the variable named by api_key_env.
    api_key: str | None = None
    # openai: environment variable holding the API key when api_key is None (unset: no header).
    api_key_env: str = "LOUPE_VLM_API_KEY"
    # openai: image encoding in the data URLs, "png" (screenshots) or "jpeg" (photos).
    image_format: str = "png"
    # transformers: Hugging Face cache folder for hub weights (None: HF_HOME / default).
    cache_dir: str | None = None
    # transformers: seconds to wait for the hub before failing when weights are not cached.
    hub_timeout_s: float = 3.0


def list_backends() -> list[str]:
    return BACKENDS.names()


def create_vlm(options: VlmOptions = VlmOptions()) -> VisionLanguageModel:
    """Build the backend `options.backend` names. Cheap: weights load on first use or `load()`."""
    cls = BACKENDS.cls(options.backend)
    if options.max_new_tokens < 1:
        raise InvalidInput(f"max_new_tokens must be at least 1, got {options.max_new_tokens}", field="max_new_tokens")
    return cls(options)


def token_budget(requested: int | None, ceiling: int) -> int:
    """Tokens to generate: the request, bounded by the options' ceiling."""
    if requested is None:
        return ceiling
    if requested < 1:
        raise InvalidInput(f"max_new_tokens must be at least 1, got {requested}", field="max_new_tokens")
    return min(requested, ceiling)


def generation_budget(prompt, options: VlmOptions, max_new_tokens: int | None) -> int:
    """Tokens to generate for `prompt`, after checking it fits the options (image count)."""
    if len(prompt.pixel_images) > options.max_images:
        raise InvalidInput(
            f"{len(prompt.pixel_images)} images in one prompt; at most {options.max_images} fit this model's settings",
            field="images",
        )
    return token_budget(max_new_tokens, options.max_new_tokens)
