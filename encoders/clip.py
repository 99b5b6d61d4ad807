"""CLIP image/text encoder over open_clip.

What the model computes (open_clip) is separate from where it runs (device, precision,
threads: `ClipOptions`). Loading happens once, under a lock, on first use or on `load()`.
Output is always L2-normalised float32, one row per input.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np
from PIL import Image

from encoders.errors import InvalidInput, ModelUnavailable
from encoders.sources import ClipSource, resolve


class TextOverflow(str, Enum):
    # Cut the text to the model's context and report that it was cut.
    TRUNCATE = "truncate"
    # Refuse text that does not fit.
    REJECT = "reject"


@dataclass(frozen=True)
class ClipOptions:
    # Model spec, see encoders.sources (e.g. "ViT-B-32/laion2b_s34b_b79k", "bundled:tiny-clip").
    model: str = "ViT-B-32/laion2b_s34b_b79k"
    # "cpu", "cuda", "cuda:1" or "auto" (cuda when available).
    device: str = "auto"
    # "fp32", "fp16" (GPU only) or "bf16".
    precision: str = "fp32"
    # torch intra-op threads on CPU; 0 keeps torch's default.
    threads: int = 0
    # Images or texts per forward pass; larger inputs are split.
    batch_size: int = 32
    # What to do with text longer than the model's context length.
    text_overflow: TextOverflow = TextOverflow.TRUNCATE
    # Hugging Face cache folder for hub weights (None: HF_HOME / default).
    cache_dir: str | None = None


@dataclass(frozen=True)
class TextEmbedding:
    vectors: np.ndarray
    # One flag per input text: True when it was cut to the context length.
    truncated: tuple[bool, ...]


class ClipEncoder:
    """Images and texts into one normalised embedding space."""

    def __init__(self, options: ClipOptions = ClipOptions()) -> None:
        self.options = options
        self.source: ClipSource = resolve(options.model, cache_dir=options.cache_dir)
        self._lock = threading.Lock()
        self._model = None

    # -- identity ---------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def model_version(self) -> str:
        return self.source.model_version

    @property
    def dim(self) -> int:
        self.load()
        return self._embed_dim

    @property
    def context_length(self) -> int:
        self.load()
        return int(self._tokenizer.context_length)

    # -- loading ----------------------------------------------------------------------------
    def load(self) -> "ClipEncoder":
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._load()
        return self

    def _load(self) -> None:
        import open_clip
        import torch

        if self.options.threads > 0:
            torch.set_num_threads(self.options.threads)
        self._device = _pick_device(self.options.device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.source.model_name, pretrained=self.source.pretrained, device=self._device,
                cache_dir=self.options.cache_dir)
            tokenizer = open_clip.get_tokenizer(self.source.model_name, cache_dir=self.options.cache_dir)
        except Exception as exc:  # open_clip raises bare RuntimeError/FileNotFoundError
            from encoders.sources import HOW_TO_SUPPLY
            raise ModelUnavailable(f"could not load {self.model_id}: {exc}. {HOW_TO_SUPPLY}") from exc
        model.eval()
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.options.precision]
        if self._dtype is torch.float16 and self._device == "cpu":
            raise ModelUnavailable("precision fp16 needs a GPU; use fp32 or bf16 on CPU")
        self._embed_dim = int(model.encode_text(tokenizer(["probe"]).to(self._device)).shape[-1])
        self._preprocess, self._tokenizer, self._model = preprocess, tokenizer, model

    # -- encoding ---------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> (n, dim) float32, L2-normalised. Uses the model's own preprocessing."""
        self.load()
        import torch

        batches = []
        for chunk in _chunks(list(images), self.options.batch_size):
            pixels = torch.stack([self._preprocess(img) for img in chunk]).to(self._device)
            batches.append(self._forward(self._model.encode_image, pixels))
        return _concat(batches, self._embed_dim)

    def preprocessor(self):
        """The model's own image transform (PIL RGB -> float tensor), picklable, so batch
        pipelines can run it next to decoding and send `encode_pixels` only the tensors."""
        self.load()
        return self._preprocess

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) float32 from `preprocessor()` -> (n, dim) float32, L2-normalised."""
        self.load()
        import torch

        batches = [self._forward(self._model.encode_image, torch.from_numpy(np.ascontiguousarray(chunk)).to(self._device))
                   for chunk in _chunks(pixels, self.options.batch_size)]
        return _concat(batches, self._embed_dim)

    def encode_texts(self, texts: Sequence[str]) -> TextEmbedding:
        """Texts -> (n, dim) float32, L2-normalised, applying the overflow policy."""
        self.load()
        truncated = tuple(self.text_overflows(t) for t in texts)
        if self.options.text_overflow is TextOverflow.REJECT and any(truncated):
            i = truncated.index(True)
            raise InvalidInput(f"text {i} is longer than the model's context of {self.context_length} tokens",
                               field=f"texts[{i}]")
        batches = [self._forward(self._model.encode_text, self._tokenizer(chunk).to(self._device))
                   for chunk in _chunks(list(texts), self.options.batch_size)]
        return TextEmbedding(_concat(batches, self._embed_dim), truncated)

    def count_tokens(self, text: str) -> int:
        """BPE tokens of `text`, without the start/end tokens."""
        self.load()
        encode = getattr(self._tokenizer, "encode", None)
        return len(encode(text)) if encode else len(text.split())

    def text_overflows(self, text: str) -> bool:
        """True when `text` has more tokens than fit between the start and end tokens."""
        encode = getattr(self._tokenizer, "encode", None)
        if encode is None:  # HF tokenizers wrap differently; they truncate themselves
            return False
        return len(encode(text)) > self.context_length - 2

    def _forward(self, fn, inputs) -> np.ndarray:
        import torch

        autocast = torch.autocast(device_type=self._device.split(":")[0], dtype=self._dtype,
                                  enabled=self._dtype is not torch.float32)
        with torch.inference_mode(), autocast:
            out = fn(inputs).float()
        out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy().astype(np.float32, copy=False)


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {device!r} was asked for but no CUDA device is visible; use device 'cpu'")
    return device


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def _concat(batches: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(batches) if batches else np.zeros((0, dim), np.float32)
