"""CLIP towers on ONNX Runtime: the CPU fast path of `encoders.clip.encoder.ClipEncoder`.

The graphs are exported from the very open_clip model the encoder loaded (so fp32 ONNX
computes what PyTorch computes), once, and cached under a folder named by the weights' hash:
new weights get new graphs, the same weights are never exported twice. `onnx-int8` adds
dynamically quantised copies (int8 weights, fp32 activations), which are faster but drift;
`drift_report` measures that drift so the encoder can refuse int8 beyond a configured loss.

    runtime   what runs                      when to choose it
    torch     open_clip in PyTorch           GPU, fp16/bf16 ("auto" picks it there)
    onnx      fp32 graphs, ONNX Runtime      CPU fp32 ("auto" picks it: measured >= torch)
    onnx-int8 int8 weights, ONNX Runtime     CPU, ~1.6x fp32, only when the drift gate passes
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from encoders.common.errors import ModelUnavailable

log = logging.getLogger("loupe")

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
# Bump when the exported graphs change shape or meaning: old cache folders are then ignored.
EXPORT_FORMAT = 1
OPSET = 18


def cache_root(cache_dir: str | None = None) -> Path:
    """Where exported graphs live: `cache_dir`, else $LOUPE_ONNX_CACHE, else ~/.cache/loupe/onnx."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("LOUPE_ONNX_CACHE"):
        return Path(os.environ["LOUPE_ONNX_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "loupe" / "onnx"


def weights_hash(model) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes, bytes): the export's key."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(tensor.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Towers:
    """ONNX Runtime sessions for both towers; outputs are raw (unnormalised) embeddings."""

    image: object
    text: object
    folder: Path
    int8: bool

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self.image.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        return self.text.run(None, {"tokens": np.ascontiguousarray(tokens, dtype=np.int64)})[0]


def load_towers(
    model,
    *,
    model_name: str,
    image_size: int,
    context_length: int,
    int8: bool,
    threads: int,
    cache_dir: str | None = None,
) -> Towers:
    """Sessions for `model`, exporting (and quantising) into the cache on first use."""
    folder = cache_root(cache_dir) / f"{_safe(model_name)}-{weights_hash(model)[:16]}-v{EXPORT_FORMAT}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for tower in ("image", "text"):
            fp32 = folder / f"{tower}.onnx"
            if not fp32.exists():
                log.info("exporting the CLIP %s tower to %s (once per weights)", tower, fp32)
                _export(model, tower, fp32, image_size, context_length)
            if int8 and not (folder / f"{tower}.int8.onnx").exists():
                _quantise(fp32, folder / f"{tower}.int8.onnx")
    except ModelUnavailable:
        raise
    except OSError as exc:
        raise ModelUnavailable(
            f"cannot write the ONNX cache at {folder}: {exc}; set encoder.onnx_cache_dir "
            "(or LOUPE_ONNX_CACHE) to a writable folder, or use runtime torch"
        ) from exc
    return open_towers(folder, threads, int8)


def open_towers(folder: Path, threads: int, int8: bool) -> Towers:
    """Sessions over graphs already in `folder` (see load_towers)."""
    suffix = ".int8.onnx" if int8 else ".onnx"
    return Towers(
        _session(folder / f"image{suffix}", threads), _session(folder / f"text{suffix}", threads), folder, int8
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[-60:] or "model"


def _export(model, tower: str, path: Path, image_size: int, context_length: int) -> None:
    import torch

    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError as exc:
        raise ModelUnavailable("runtime onnx needs the 'onnx' package: pip install onnx") from exc

    class Tower(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.model, self.fn = model, fn

        def forward(self, x):
            return getattr(self.model, self.fn)(x)

    if tower == "image":
        module, example, name = Tower("encode_image"), torch.zeros(2, 3, image_size, image_size), "pixels"
    else:
        module, example, name = Tower("encode_text"), torch.zeros(2, context_length, dtype=torch.long), "tokens"
    import warnings

    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    # With autograd on, nn.MultiheadAttention skips its fused fast path, which has no ONNX form.
    with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that hold for every batch size
        torch.onnx.export(
            module.eval(),
            (example,),
            str(tmp),
            input_names=[name],
            output_names=["embedding"],
            dynamic_axes={name: {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    os.replace(tmp, path)  # a concurrent exporter of the same weights writes the same bytes


def _quantise(fp32: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.info("quantising %s to int8 (dynamic, weights only)", fp32.name)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
    os.replace(tmp, out)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning for work: in the service the Encoder shares the
    # CPUs with the Ingress, which a spinning pool would slow after every call.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a truncated or foreign file in the cache
        raise ModelUnavailable(f"cannot load the ONNX graph {path}: {exc}; delete {path.parent} to re-export") from exc


# -- the int8 drift gate ---------------------------------------------------------------------
@dataclass(frozen=True)
class DriftReport:
    """How far int8 vectors are from fp32 ones on a held-out set of captions and images."""

    n_texts: int
    n_images: int
    min_cosine: float
    mean_cosine: float
    # text -> image recall@k (pair i is the right image for caption i), both runtimes.
    recall_reference: float
    recall_candidate: float
    # Share of the reference's top-k that the candidate also returns (no labels needed).
    topk_overlap: float
    k: int

    @property
    def recall_loss(self) -> float:
        return round(self.recall_reference - self.recall_candidate, 4)

    def failures(self, min_cosine: float, max_recall_loss: float) -> list[str]:
        out = []
        if self.min_cosine < min_cosine:
            out.append(f"min cosine to fp32 {self.min_cosine:.4f} < {min_cosine}")
        if self.recall_loss > max_recall_loss:
            out.append(
                f"recall@{self.k} {self.recall_candidate:.3f} vs fp32 {self.recall_reference:.3f} "
                f"(loss {self.recall_loss:.3f} > {max_recall_loss})"
            )
        return out

    def to_json(self) -> dict:
        return {**asdict(self), "recall_loss": self.recall_loss}


def drift_report(reference, candidate, texts: list[str], images: list, k: int = 10, pixels=None) -> DriftReport:
    """Compare two encoders (e.g. onnx and onnx-int8) on paired captions and images.

    `texts[i]` describes `images[i]` for the first min(len) pairs; images beyond them (or all of
    them, when no texts are given: a sample of a collection) count for the cosine and the top-k
    overlap only."""
    ref_t, cand_t = reference.encode_texts(texts).vectors, candidate.encode_texts(texts).vectors
    if pixels is not None:  # already preprocessed (the batch pipeline's tensors)
        ref_i, cand_i, images = reference.encode_pixels(pixels), candidate.encode_pixels(pixels), list(pixels)
    else:
        ref_i, cand_i = reference.encode_images(images), candidate.encode_images(images)
    cos = np.concatenate([np.sum(ref_t * cand_t, axis=1), np.sum(ref_i * cand_i, axis=1)])
    k = max(1, min(k, len(images)))
    pairs = min(len(texts), len(images))
    # Queries: the captions; with none (an unlabelled sample), each image against the others.
    ref_q, cand_q = (ref_t, cand_t) if len(texts) else (ref_i, cand_i)
    ref_top = np.argsort(-(ref_q @ ref_i.T), axis=1)[:, :k]
    cand_top = np.argsort(-(cand_q @ cand_i.T), axis=1)[:, :k]
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref_top, cand_top)]))

    def recall(top) -> float:
        return float(np.mean([i in top[i] for i in range(pairs)])) if pairs else 1.0

    return DriftReport(
        len(texts),
        len(images),
        round(float(cos.min()), 6),
        round(float(cos.mean()), 6),
        round(recall(ref_top), 4),
        round(recall(cand_top), 4),
        round(overlap, 4),
        k,
    )


def probe_set(n: int = 64, size: int = 224, seed: int = 20261201) -> tuple[list[str], list]:
    """The shipped held-out set: captions and renders of the bundled shapes world (not training seeds)."""
    import random

    from encoders.clip.bundled.shapes import render, sample_scenes

    scenes = sample_scenes(n, seed, distinct=True)
    rng = random.Random(seed)
    return [s.caption for s in scenes], [render(s, rng, size) for s in scenes]


# Names the held-out set a cached gate result was measured on; change it with probe_set.
PROBE_KEY = "shapes-64-seed20261201"


def gate_file(folder: Path) -> Path:
    return folder / "int8-gate.json"


def cached_gate(folder: Path, key: str) -> DriftReport | None:
    try:
        data = json.loads(gate_file(folder).read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key:
        return None
    report = data["report"]
    report.pop("recall_loss", None)
    return DriftReport(**report)


def store_gate(folder: Path, key: str, report: DriftReport) -> None:
    tmp = gate_file(folder).with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "report": report.to_json()}, indent=1))
    os.replace(tmp, gate_file(folder))
