"""In-process VLM backend over transformers: any image-text-to-text model.

Loads `AutoProcessor` + `AutoModelForImageTextToText` (older transformers:
`AutoModelForVision2Seq`) from a local folder, the Hugging Face cache or the hub, once,
under a lock, on first use or on `load()`. Prompts go through the model's own chat template
with one image placeholder per context image; decoding is greedy and bounded.

Model specs:

    HuggingFaceTB/SmolVLM-256M-Instruct    hub id: from the cache, or the hub when reachable
    /path/to/folder  or local-dir:/path     a folder with config.json, weights, processor files
    bundled:tiny-vlm                        a tiny random model built locally on first use
                                            (lmm.tiny_vlm); its answers are noise
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from encoders.common.errors import InvalidInput, ModelUnavailable, Overloaded
from encoders.loading.hub import in_hf_cache, unreachable
from encoders.loading.lazy import SourcedModel
from encoders.loading.runtime import pick_device, pick_dtype, set_threads
from encoders.loading.specs import BUNDLED, HUB, PATH, parse
from lmm.models import VlmOptions, generation_budget
from lmm.types import Draft, Prompt

BUNDLED_VLMS = ("tiny-vlm",)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")

HOW_TO_SUPPLY = (
    "Ways to supply VLM weights: (1) use model 'bundled:tiny-vlm' for a tiny random model built "
    "offline (tests and smoke runs only: its answers are noise); (2) point the model at a local "
    "folder holding a transformers image-text-to-text model (config.json, *.safetensors, processor "
    "and tokenizer files), made on a machine with internet by e.g. `hf download "
    "HuggingFaceTB/SmolVLM-256M-Instruct --local-dir /models/smolvlm-256m`; (3) pre-fill the Hugging "
    "Face cache (HF_HOME) with the same hub id; (4) use backend 'openai' with base_url pointing at an "
    "OpenAI-compatible server (vLLM, Ollama) that serves the model."
)


@dataclass(frozen=True)
class VlmSource:
    """What from_pretrained gets, and the identity reported with every draft."""

    # Folder path or hub id passed to from_pretrained.
    location: str
    # Public name, e.g. "transformers:HuggingFaceTB/SmolVLM-256M-Instruct".
    model_id: str
    # True: load from disk only (folder, bundled, or cached weights with the hub unreachable).
    local_only: bool
    # Name of the bundled model to build into `location` before loading, if any.
    bundled: str | None = None


def resolve(spec: str, *, cache_dir: str | None = None, hub_timeout_s: float = 3.0) -> VlmSource:
    """Turn a model spec into a loadable source, or fail fast with ways to supply the weights."""
    parsed = parse(spec, what="VLM model", how_to_supply=HOW_TO_SUPPLY)
    spec = parsed.raw
    if parsed.kind == BUNDLED:
        name = parsed.value
        if name not in BUNDLED_VLMS:
            raise InvalidInput(
                f"unknown bundled VLM {name!r}; bundled VLMs: {', '.join('bundled:' + n for n in BUNDLED_VLMS)}",
                field="model",
            )
        from lmm.tiny_vlm import MODEL_ID

        return VlmSource(str(bundled_dir(name)), MODEL_ID, True, bundled=name)
    if parsed.kind == PATH:
        return _local_dir(parsed.path)
    if parsed.kind == HUB or re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return _hub(parsed.value, cache_dir, hub_timeout_s)
    raise InvalidInput(
        f"VLM model spec {spec!r} is neither a hub id (org/name), a folder nor 'bundled:NAME'. " + HOW_TO_SUPPLY,
        field="model",
    )


def bundled_dir(name: str) -> Path:
    """Where a bundled VLM is built: $LOUPE_CACHE_DIR/vlm/NAME or $XDG_CACHE_HOME/loupe/vlm/NAME
    (default ~/.cache/loupe/vlm/NAME)."""
    root = os.environ.get("LOUPE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "loupe"
    )
    return Path(root) / "vlm" / name


def _local_dir(folder: Path) -> VlmSource:
    if not folder.is_dir():
        raise ModelUnavailable(f"VLM folder {folder} does not exist. " + HOW_TO_SUPPLY)
    if not (folder / "config.json").is_file():
        raise ModelUnavailable(f"VLM folder {folder} has no config.json. " + HOW_TO_SUPPLY)
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES):
        raise ModelUnavailable(f"VLM folder {folder} has no weights ({', '.join(WEIGHT_FILES)}). " + HOW_TO_SUPPLY)
    return VlmSource(str(folder), f"transformers:local-dir:{folder.name}", True)


def _hub(repo: str, cache_dir: str | None, timeout_s: float) -> VlmSource:
    reason = unreachable(timeout_s)
    if reason is None:
        return VlmSource(repo, f"transformers:{repo}", False)
    if _in_hf_cache(repo, cache_dir):
        return VlmSource(repo, f"transformers:{repo}", True)
    raise ModelUnavailable(f"weights for {repo} are not in the local Hugging Face cache and {reason}. " + HOW_TO_SUPPLY)


def _in_hf_cache(repo: str, cache_dir: str | None) -> bool:
    return in_hf_cache(repo, ("config.json",), cache_dir)


class TransformersVlm(SourcedModel):
    """A transformers image-text-to-text model answering prompts with images."""

    def __init__(self, options: VlmOptions = VlmOptions()) -> None:
        self.options = options
        self.source = resolve(options.model, cache_dir=options.cache_dir, hub_timeout_s=options.hub_timeout_s)
        super().__init__()
        # One generation at a time per instance: it saturates the cores (or the GPU) anyway.
        self._generate_lock = threading.Lock()
        self._model = None

    # -- loading ----------------------------------------------------------------------------
    def _load(self) -> None:
        import transformers

        set_threads(self.options.threads)
        device = pick_device(self.options.device)
        dtype = pick_dtype(self.options.dtype, device, field="dtype")
        location = self.source.location
        if self.source.bundled:
            from lmm.tiny_vlm import ensure_built

            try:
                location = str(ensure_built(location))
            except OSError as exc:
                raise ModelUnavailable(
                    f"cannot build {self.model_id} in {location}: {exc}; set LOUPE_CACHE_DIR to a writable folder"
                ) from exc
        # AutoModelForVision2Seq is the older name (removed in transformers 5).
        model_cls = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
        common = {"local_files_only": self.source.local_only, "cache_dir": self.options.cache_dir}
        try:
            processor = transformers.AutoProcessor.from_pretrained(location, **common)
            model = model_cls.from_pretrained(location, dtype=dtype, **common)
        except (OSError, ValueError, KeyError, ImportError) as exc:  # missing files or extras, unknown arch
            raise ModelUnavailable(f"could not load {self.model_id} from {location}: {exc}. " + HOW_TO_SUPPLY) from exc
        if getattr(processor, "chat_template", None) is None:
            raise ModelUnavailable(
                f"{self.model_id} has no chat template (chat_template.jinja or "
                "chat_template.json in its folder); Loupe needs one to place images"
            )
        self._device, self._dtype = device, dtype
        self._processor, self._model = processor, model.to(device).eval()

    # -- generation -------------------------------------------------------------------------
    def generate(self, prompt: Prompt, *, max_new_tokens: int | None = None) -> Draft:
        """Greedy answer to `prompt`, at most `max_new_tokens` (capped by the options) tokens."""
        budget = generation_budget(prompt, self.options, max_new_tokens)
        self.load()
        import torch

        started = time.perf_counter()
        images = [self._fit(img.image) for img in prompt.pixel_images]
        text = self._chat_text(prompt)
        inputs = self._processor(text=text, images=images or None, return_tensors="pt")
        inputs = {
            k: (v.to(self._device, dtype=self._dtype) if torch.is_floating_point(v) else v.to(self._device))
            for k, v in inputs.items()
            if hasattr(v, "to")
        }
        prompt_len = inputs["input_ids"].shape[1]
        try:
            with self._generate_lock, torch.inference_mode():
                out = self._model.generate(
                    **inputs, max_new_tokens=budget, do_sample=False, max_time=self.options.timeout_s
                )
        except torch.OutOfMemoryError as exc:
            raise Overloaded(
                f"{self.model_id} ran out of memory on {self._device}; retry later, or send fewer or smaller images",
                retry_after_s=5.0,
            ) from exc
        new = out[0, prompt_len:]
        pad = self._processor.tokenizer.pad_token_id
        tokens = int((new != pad).sum()) if pad is not None else int(new.numel())
        answer = self._processor.decode(new, skip_special_tokens=True).strip()
        return Draft(
            text=answer,
            model_id=self.model_id,
            tokens=tokens,
            seconds=time.perf_counter() - started,
            prompt_tokens=int(prompt_len),
        )

    def _chat_text(self, prompt: Prompt) -> str:
        """The prompt through the model's chat template: system turn, then images and the user text."""
        user = [{"type": "image"} for _ in prompt.pixel_images] + [{"type": "text", "text": prompt.user}]
        messages = [
            {"role": "system", "content": [{"type": "text", "text": prompt.system}]},
            {"role": "user", "content": user},
        ]
        from jinja2 import TemplateError

        try:
            return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except (TemplateError, ValueError, TypeError):  # some templates refuse a system role
            merged = [
                {
                    "role": "user",
                    "content": [{"type": "image"} for _ in prompt.pixel_images]
                    + [{"type": "text", "text": prompt.system + "\n\n" + prompt.user}],
                }
            ]
            return self._processor.apply_chat_template(merged, add_generation_prompt=True, tokenize=False)

    def _fit(self, image):
        """RGB copy of `image`, its longest edge at most max_image_edge (or the processor's size)."""
        limit = self.options.max_image_edge or _processor_edge(self._processor)
        image = image.convert("RGB")
        if limit and max(image.size) > limit:
            scale = limit / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, resample=3)  # bicubic
        return image


def _processor_edge(processor) -> int:
    """The longest edge the image processor resizes to, or 0 when it does not say."""
    size = getattr(getattr(processor, "image_processor", None), "size", None) or {}
    if not isinstance(size, dict):
        size = {k: getattr(size, k, None) for k in ("longest_edge", "height", "width", "shortest_edge")}
    edge = size.get("longest_edge") or max(size.get("height") or 0, size.get("width") or 0)
    return int(edge or 0)
