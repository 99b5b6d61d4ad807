"""CLIP image/text encoder over open_clip.

What the model computes (open_clip) is separate from where it runs (device, precision,
threads: `ClipOptions`). Loading happens once, under a lock, on first use or on `load()`.
Output is always L2-normalised float32, one row per input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from encoders.clip.sources import ClipSource, resolve
from encoders.common.errors import InvalidInput, ModelUnavailable
from encoders.loading.lazy import LazyModel, SourcedModel
from encoders.loading.runtime import pick_device, pick_dtype, set_threads

if TYPE_CHECKING:
    from encoders.clip.runtimes import DriftReport


class TextOverflow(str, Enum):
    # Cut the text to the model's context and report that it was cut.
    TRUNCATE = "truncate"
    # Refuse text that does not fit.
    REJECT = "reject"


@dataclass(frozen=True)
class ClipOptions:
    # Model spec, see encoders.clip.sources (e.g. "ViT-B-32/laion2b_s34b_b79k", "bundled:tiny-clip").
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
    # What runs the forward pass: "torch", "onnx" (fp32 ONNX Runtime, CPU), "onnx-int8" (int8
    # weights, allowed only when the drift gate passes) or "auto" (onnx on CPU at fp32, else
    # torch). See encoders.clip.runtimes.
    runtime: str = "torch"
    # Exported ONNX graphs (None: $LOUPE_ONNX_CACHE or ~/.cache/loupe/onnx).
    onnx_cache_dir: str | None = None
    # The int8 drift gate: int8 is refused when any vector's cosine to fp32 falls below
    # int8_min_cosine, or text->image recall@10 on the held-out set drops by more than this.
    int8_min_cosine: float = 0.99
    int8_max_recall_loss: float = 0.02


@dataclass(frozen=True)
class TextEmbedding:
    vectors: np.ndarray
    # One flag per input text: True when it was cut to the context length.
    truncated: tuple[bool, ...]


class ClipEncoder(SourcedModel):
    """Images and texts into one normalised embedding space."""

    def __init__(self, options: ClipOptions = ClipOptions()) -> None:
        self.options = options
        self.source: ClipSource = resolve(options.model, cache_dir=options.cache_dir)
        super().__init__()
        # Set by load(): pixels / tokens (torch tensors) -> normalised float32 rows.
        self._run_image = self._run_text = None
        # The int8 drift gate's result (None unless runtime is onnx-int8).
        self.drift: DriftReport | None = None

    # -- identity ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        self.load()
        return self._embed_dim

    @property
    def context_length(self) -> int:
        self.load()
        return int(self._tokenizer.context_length)

    # -- loading ----------------------------------------------------------------------------
    @property
    def runtime(self) -> str:
        """The runtime in use: torch, onnx or onnx-int8 ("auto" resolved at load)."""
        self.load()
        return self._runtime

    def _load(self) -> None:
        import open_clip
        import torch

        from encoders.clip.runtimes import RUNTIMES

        if self.options.runtime not in RUNTIMES:
            raise InvalidInput(
                f"encoder runtime {self.options.runtime!r} is not one of {', '.join(RUNTIMES)}", field="encoder.runtime"
            )
        set_threads(self.options.threads)
        self._device = pick_device(self.options.device)
        try:
            # Random weights are seeded: the same spec is the same model in every process, so
            # benchmarks compare runtimes on one model and its ONNX export is cached once.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.source.model_name,
                    pretrained=self.source.pretrained,
                    device=self._device,
                    cache_dir=self.options.cache_dir,
                )
            tokenizer = open_clip.get_tokenizer(self.source.model_name, cache_dir=self.options.cache_dir)
        except Exception as exc:  # open_clip raises bare RuntimeError/FileNotFoundError
            from encoders.clip.sources import HOW_TO_SUPPLY

            raise ModelUnavailable(f"could not load {self.model_id}: {exc}. {HOW_TO_SUPPLY}") from exc
        model.eval()
        self._dtype = pick_dtype(self.options.precision, self._device)
        with torch.inference_mode():
            self._embed_dim = int(model.encode_text(tokenizer(["probe"]).to(self._device)).shape[-1])
        self._preprocess, self._tokenizer = preprocess, tokenizer
        runtime = self.options.runtime
        if runtime == "auto":  # measured on CPU: same image throughput, ~1.7x faster text queries
            runtime = "onnx" if self._device == "cpu" and self._dtype is torch.float32 else "torch"
        self._runtime = runtime
        if runtime == "torch":
            encode_image, encode_text = model.encode_image, model.encode_text
            self._run_image = lambda pixels: self._forward(encode_image, pixels.to(self._device))
            self._run_text = lambda tokens: self._forward(encode_text, tokens.to(self._device))
            return
        if self._device != "cpu" or self._dtype is not torch.float32:
            raise ModelUnavailable(f"runtime {runtime} runs fp32 on CPU; on a GPU (or for fp16/bf16) use runtime torch")
        from encoders.clip.runtimes import load_towers

        size = getattr(model.visual, "image_size", 224)
        self._image_size = int(size[0] if isinstance(size, tuple) else size)
        int8 = runtime == "onnx-int8"
        towers = load_towers(
            model,
            model_name=self.model_id,
            image_size=self._image_size,
            context_length=int(tokenizer.context_length),
            int8=int8,
            threads=self.options.threads,
            cache_dir=self.options.onnx_cache_dir,
        )
        self.onnx_folder = towers.folder
        if int8:
            self._gate_int8(towers)
        self._use_towers(towers)
        # ONNX Runtime holds its own copy of the weights: give the torch model's memory back.
        del model
        _release_freed_memory()

    def _view(self, towers) -> ClipEncoder:
        """This encoder (loaded) running on other towers: one side of a drift comparison."""
        import copy

        view = copy.copy(self)
        LazyModel.__init__(view)
        view._loaded = True
        view._use_towers(towers)
        return view

    def _use_towers(self, towers) -> None:
        self._run_image = lambda pixels: _normalise(towers.encode_image(pixels.numpy()))
        self._run_text = lambda tokens: _normalise(towers.encode_text(tokens.numpy()))

    def _fp32_view(self) -> ClipEncoder:
        from encoders.clip.runtimes import open_towers

        return self._view(open_towers(self.onnx_folder, self.options.threads, int8=False))

    def _gate_int8(self, towers) -> None:
        """int8 against fp32 on the shipped held-out set (measured once per weights); refuse beyond the bound."""
        from encoders.clip.runtimes import PROBE_KEY, cached_gate, drift_report, probe_set, store_gate

        report = cached_gate(towers.folder, PROBE_KEY)
        if report is None:
            texts, images = probe_set(size=self._image_size)
            report = drift_report(self._fp32_view(), self._view(towers), texts, images)
            store_gate(towers.folder, PROBE_KEY, report)
        self.drift = report
        failures = report.failures(self.options.int8_min_cosine, self.options.int8_max_recall_loss)
        if failures:
            raise ModelUnavailable(
                f"runtime onnx-int8 refused for {self.model_id}: {'; '.join(failures)} on the "
                f"held-out set ({report.n_texts} captions, {report.n_images} images). Use runtime "
                "onnx (exact), or relax encoder.int8_min_cosine / int8_max_recall_loss if that "
                "loss is acceptable"
            )

    def check_drift(
        self, images: Sequence[Image.Image] = (), texts: Sequence[str] = (), pixels: np.ndarray | None = None
    ) -> DriftReport:
        """int8 vs fp32 on a sample of the data it will serve (images, or `preprocessor()`
        tensors: e.g. a batch job's first batch); raises ModelUnavailable beyond the configured
        loss. A no-op report for the exact runtimes."""
        from encoders.clip.runtimes import DriftReport, drift_report

        self.load()
        n_images = len(pixels) if pixels is not None else len(images)
        if self.runtime != "onnx-int8":
            return DriftReport(len(texts), n_images, 1.0, 1.0, 1.0, 1.0, 1.0, 10)
        report = drift_report(self._fp32_view(), self, list(texts), list(images), pixels=pixels)
        failures = report.failures(self.options.int8_min_cosine, self.options.int8_max_recall_loss)
        if failures:
            raise ModelUnavailable(
                f"runtime onnx-int8 refused on this data: {'; '.join(failures)} ({n_images} images); use runtime onnx"
            )
        return report

    # -- encoding ---------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> (n, dim) float32, L2-normalised. Uses the model's own preprocessing."""
        self.load()
        import torch

        batches = []
        for chunk in _chunks(list(images), self.options.batch_size):
            batches.append(self._run_image(torch.stack([self._preprocess(img) for img in chunk])))
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

        batches = [
            self._run_image(torch.from_numpy(np.ascontiguousarray(chunk)))
            for chunk in _chunks(pixels, self.options.batch_size)
        ]
        return _concat(batches, self._embed_dim)

    def encode_texts(self, texts: Sequence[str]) -> TextEmbedding:
        """Texts -> (n, dim) float32, L2-normalised, applying the overflow policy."""
        self.load()
        truncated = tuple(self.text_overflows(t) for t in texts)
        if self.options.text_overflow is TextOverflow.REJECT and any(truncated):
            i = truncated.index(True)
            raise InvalidInput(
                f"text {i} is longer than the model's context of {self.context_length} tokens", field=f"texts[{i}]"
            )
        batches = [self._run_text(self._tokenizer(chunk)) for chunk in _chunks(list(texts), self.options.batch_size)]
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

        autocast = torch.autocast(
            device_type=self._device.split(":")[0], dtype=self._dtype, enabled=self._dtype is not torch.float32
        )
        with torch.inference_mode(), autocast:
            out = fn(inputs).float()
        out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy().astype(np.float32, copy=False)


def _release_freed_memory() -> None:
    """Return freed heap to the OS (glibc keeps it otherwise): ~300 MB for ViT-B-32 on onnx."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _normalise(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float32, copy=False)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def _concat(batches: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(batches) if batches else np.zeros((0, dim), np.float32)
