"""Where CLIP weights come from: a model spec string resolved to something open_clip loads.

Spec forms (the same strings work in `ray_config.yaml`, `LOUPE_MODEL` and `--model`):

    bundled:tiny-clip                 the small model shipped inside this package
    ViT-B-32/laion2b_s34b_b79k        open_clip architecture + pretrained tag (hub or cache)
    ViT-B-32/random                   real architecture, random weights (benchmarks only)
    ViT-B-32//path/to/weights.pt      architecture + a local checkpoint file
    hf-hub:org/repo                   an open_clip repository on the Hugging Face hub
    /path/to/folder  or local-dir:/path/to/folder
                                      a folder with open_clip_config.json + weights
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from encoders.common.errors import InvalidInput, ModelUnavailable
from encoders.loading.hub import in_hf_cache, require_download
from encoders.loading.specs import BUNDLED, HUB, PATH, parse

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_MODELS = {"tiny-clip": BUNDLED_DIR / "tiny-clip"}
DEFAULT_MODEL = "ViT-B-32/laion2b_s34b_b79k"

HOW_TO_SUPPLY = (
    "Ways to supply CLIP weights: (1) run with --bundled-models (or LOUPE_PROFILE=bundled) to use "
    "the small offline model shipped with Loupe; (2) point LOUPE_MODEL at a local folder holding "
    "open_clip_config.json and open_clip_model.safetensors; (3) give an architecture and a local "
    "checkpoint file, e.g. LOUPE_MODEL='ViT-B-32//data/vit-b-32.safetensors'; (4) pre-fill the "
    'Hugging Face cache (HF_HOME) on a machine with internet, e.g. `python -c "import open_clip; '
    "open_clip.create_model_and_transforms('ViT-B-32', pretrained='laion2b_s34b_b79k')\"`."
)


@dataclass(frozen=True)
class ClipSource:
    """Arguments for open_clip plus the identity Loupe stores with every point."""

    # First argument of open_clip.create_model_and_transforms ("ViT-B-32", "local-dir:/x").
    model_name: str
    # Pretrained tag or checkpoint path, None for schema'd names and random init.
    pretrained: str | None
    # Stable public name of the model, e.g. "open_clip:ViT-B-32/laion2b_s34b_b79k".
    model_id: str
    # Changes whenever the weights change: a file hash prefix or the pretrained tag.
    model_version: str


def resolve(spec: str, *, cache_dir: str | None = None, hub_timeout_s: float = 3.0) -> ClipSource:
    """Turn a spec into a loadable source, or fail fast with ways to supply the weights."""
    parsed = parse(spec, what="CLIP model", how_to_supply=HOW_TO_SUPPLY)
    spec = parsed.raw
    if parsed.kind == BUNDLED:
        return _bundled(parsed.value)
    if parsed.kind == HUB:
        require_download(spec, HOW_TO_SUPPLY, hub_timeout_s)
        return ClipSource(spec, None, f"open_clip:{spec}", "hub")
    if parsed.kind == PATH:
        if parsed.path.is_file():
            raise InvalidInput(
                f"{spec} is a file; give its architecture too, e.g. 'ViT-B-32/{spec}', or a "
                "folder with open_clip_config.json. " + HOW_TO_SUPPLY,
                field="model",
            )
        return _local_dir(parsed.path)
    if "/" not in spec:
        raise InvalidInput(
            f"model spec {spec!r} needs a pretrained tag or checkpoint, e.g. "
            f"'{spec}/laion2b_s34b_b79k'. " + HOW_TO_SUPPLY,
            field="model",
        )
    arch, pretrained = spec.split("/", 1)
    _require_architecture(arch)
    if pretrained == "random":
        return ClipSource(arch, None, f"open_clip:{arch}/random", "random-init")
    if pretrained.startswith("/") or os.path.isfile(pretrained):
        return _checkpoint(arch, Path(pretrained))
    return _pretrained_tag(arch, pretrained, cache_dir, hub_timeout_s)


def list_bundled() -> list[str]:
    return [f"bundled:{name}" for name in sorted(BUNDLED_MODELS)]


def _bundled(name: str) -> ClipSource:
    folder = BUNDLED_MODELS.get(name)
    if folder is None:
        raise InvalidInput(
            f"unknown bundled model {name!r}; bundled models: {', '.join(list_bundled())}", field="model"
        )
    source = _local_dir(folder)
    return ClipSource(source.model_name, None, f"bundled:{name}", source.model_version)


def _local_dir(folder: Path) -> ClipSource:
    if not (folder / "open_clip_config.json").is_file():
        raise ModelUnavailable(f"{folder} has no open_clip_config.json. " + HOW_TO_SUPPLY)
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
    if not weights:
        raise ModelUnavailable(f"{folder} has no weights file (*.safetensors, *.bin, *.pt). " + HOW_TO_SUPPLY)
    return ClipSource(f"local-dir:{folder}", None, f"open_clip:local-dir:{folder.name}", file_version(weights[0]))


def _checkpoint(arch: str, path: Path) -> ClipSource:
    if not path.is_file():
        raise ModelUnavailable(f"checkpoint file {path} does not exist. " + HOW_TO_SUPPLY)
    return ClipSource(arch, str(path), f"open_clip:{arch}/{path.name}", file_version(path))


def _pretrained_tag(arch: str, tag: str, cache_dir: str | None, hub_timeout_s: float) -> ClipSource:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(t for a, t in open_clip.list_pretrained() if a == arch) or "none"
        raise InvalidInput(f"unknown pretrained tag {tag!r} for {arch}; known tags: {tags}", field="model")
    if not _in_hf_cache(cfg.get("hf_hub", ""), cache_dir):
        require_download(f"{arch}/{tag}", HOW_TO_SUPPLY, hub_timeout_s)
    return ClipSource(arch, tag, f"open_clip:{arch}/{tag}", tag)


def _require_architecture(arch: str) -> None:
    import open_clip

    if arch not in open_clip.list_models():
        raise InvalidInput(
            f"unknown open_clip architecture {arch!r}; e.g. ViT-B-32, ViT-B-16, ViT-L-14 "
            f"(open_clip.list_models() lists all)",
            field="model",
        )


def _in_hf_cache(hf_hub: str, cache_dir: str | None) -> bool:
    if not hf_hub:
        return False
    # open_clip writes "org/repo/" or "org/repo/filename".
    parts = hf_hub.strip("/").split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return in_hf_cache(repo, (filename, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"), cache_dir)


def file_version(path: Path) -> str:
    """First 12 hex digits of the file's sha256: the stored model version for local weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:12]
