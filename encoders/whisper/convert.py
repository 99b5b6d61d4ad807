"""Convert a CTranslate2 Whisper folder (faster-whisper's format) into an openai-whisper checkpoint.

    python -m encoders.whisper.convert CT2_FOLDER OUT.pt [--dtype auto|float16|float32] [--no-verify]

The output is what `whisper.load_model(path)` reads: {"dims": {...}, "model_state_dict": {...}}
plus "alignment_heads" (openai's base85/gzip format, from config.json) which `whisper.load_model`
ignores and `encoders.whisper.oa` applies, so word timestamps use the model's real alignment heads.

CTranslate2's model.bin (little endian; see ctranslate2/specs/model_spec.py `_serialize` and
src/models/model.cc `Model::load`):

    u32 binary_version                        6 today; 1..6 are read
    str spec name, u32 spec revision          version >= 2 ("WhisperSpec", revision 3)
    u32 n_variables, then per variable:
        str name, u8 rank, u32 dims[rank]
        version >= 4: u8 dtype id (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), u32 n_bytes
        version <  4: u8 item size (4 f32, 2 i16, 1 i8), u32 n_items
        raw data
    u32 n_aliases, then (str alias, str target) pairs   version >= 3
    str = u16 length including a trailing NUL, then the bytes and the NUL.

Quantised weights ("<x>/weight" stored as int8) carry "<x>/weight_scale": float32, one scale per
output row (conv weights are flattened to rows first), with int8 = round(w * scale), so
w = int8 / scale. int16 uses one scalar scale the same way. An alias also aliases its "_scale".
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import re
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoders.common.errors import ModelUnavailable

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_LEGACY_ITEM_SIZES = {4: np.float32, 2: np.int16, 1: np.int8}
MAX_BINARY_VERSION = 6
HEAD_DIM = 64  # every Whisper size uses 64-wide attention heads (fallback when num_heads is absent)


@dataclass(frozen=True)
class Ct2Model:
    """The contents of a model.bin, variables exactly as stored."""

    # Format version of the file (1..6).
    binary_version: int
    # Model specification name, e.g. "WhisperSpec" ("" before binary version 2).
    spec: str
    # Revision of the specification's weight layout.
    revision: int
    # Variable name -> array in its stored dtype (bfloat16 is widened to float32 on read).
    variables: dict[str, np.ndarray]
    # Alias name -> name of the variable it shares storage with.
    aliases: dict[str, str]


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        # A memoryview: slices (the tensors) share the file's bytes instead of copying them.
        self.data, self.pos, self.path = memoryview(data), 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ModelUnavailable(
                f"{self.path} is truncated: needed {n} bytes at offset {self.pos} of "
                f"{len(self.data)}. Re-install or re-download the model."
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        return bytes(self.take(self.unpack("H"))).rstrip(b"\0").decode("utf-8")


def read_model_bin(path: str | os.PathLike) -> Ct2Model:
    """Parse a CTranslate2 model.bin into raw arrays (no dequantisation)."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    version = reader.unpack("I")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise ModelUnavailable(
            f"{path} has CTranslate2 binary version {version}; this reader knows "
            f"versions 1..{MAX_BINARY_VERSION}. Is it a CTranslate2 model.bin?"
        )
    spec, revision = (reader.string(), reader.unpack("I")) if version >= 2 else ("", 1)
    variables = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        rank = reader.unpack("B")
        shape = struct.unpack(f"<{rank}I", reader.take(4 * rank))
        variables[name] = _read_array(reader, version, shape, name)
    aliases = {}
    if version >= 3:
        for _ in range(reader.unpack("I")):
            alias = reader.string()
            aliases[alias] = reader.string()
    return Ct2Model(version, spec, revision, variables, aliases)


def _read_array(reader: _Reader, version: int, shape: tuple[int, ...], name: str) -> np.ndarray:
    if version >= 4:
        type_id, n_bytes = reader.unpack("B"), reader.unpack("I")
        dtype = _DTYPES.get(type_id)
    else:
        item_size, n_items = reader.unpack("B"), reader.unpack("I")
        dtype, n_bytes = _LEGACY_ITEM_SIZES.get(item_size), n_items * item_size
        type_id = item_size
    if dtype is None:
        raise ModelUnavailable(f"variable {name!r} in {reader.path} has unknown data type id {type_id}")
    raw = reader.take(n_bytes)
    if dtype == "bfloat16":
        wide = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return wide.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def dequantize(model: Ct2Model, dtype=np.float32) -> dict[str, np.ndarray]:
    """Every tensor as `dtype` (aliases resolved, int8/int16 scales applied in float32); scalars
    and scales kept as stored. Tensors already in `dtype` are the file's read-only views."""
    stored = dict(model.variables)
    for alias, target in model.aliases.items():
        if target in stored:
            stored[alias] = stored[target]
            if target + "_scale" in stored:
                stored[alias + "_scale"] = stored[target + "_scale"]
    zero_points = [n for n in stored if n.endswith("_zero")]
    if zero_points:
        raise ModelUnavailable(
            f"{zero_points[0]!r}: weights quantised with zero points (AWQ/int4) cannot be "
            "converted; use a float16, float32 or int8 CTranslate2 model."
        )
    out = {}
    for name, value in stored.items():
        if name.endswith("_scale") or value.ndim == 0:
            out[name] = value
        elif value.dtype in (np.int8, np.int16):
            out[name] = _apply_scale(name, value, stored.get(name + "_scale")).astype(dtype, copy=False)
        else:
            out[name] = value.astype(dtype, copy=False)
    return out


def _apply_scale(name: str, value: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    if scale is None:
        raise ModelUnavailable(f"quantised variable {name!r} has no {name}_scale; the model.bin is incomplete")
    scale = np.asarray(scale, dtype=np.float32)
    if scale.ndim == 1:  # one scale per output row
        scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
    return value.astype(np.float32) / scale


def to_openai_state_dict(weights: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Map dequantised CT2 Whisper tensors to openai-whisper's (dims, state_dict)."""
    dims = infer_dims(weights)
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in weights:
            raise ModelUnavailable(f"CTranslate2 Whisper variable {name!r} is missing; not a complete Whisper model")
        used.add(name)
        return weights[name]

    sd: dict[str, np.ndarray] = {
        "encoder.conv1.weight": take("encoder/conv1/weight"),
        "encoder.conv1.bias": take("encoder/conv1/bias"),
        "encoder.conv2.weight": take("encoder/conv2/weight"),
        "encoder.conv2.bias": take("encoder/conv2/bias"),
        "encoder.positional_embedding": take("encoder/position_encodings/encodings"),
        "decoder.positional_embedding": take("decoder/position_encodings/encodings"),
        "decoder.token_embedding.weight": take("decoder/embeddings/weight"),
    }
    _norm(sd, "encoder.ln_post", "encoder/layer_norm", take)
    _norm(sd, "decoder.ln", "decoder/layer_norm", take)
    for i in range(dims["n_audio_layer"]):
        _block(sd, f"encoder.blocks.{i}", f"encoder/layer_{i}", take, cross=False)
    for i in range(dims["n_text_layer"]):
        _block(sd, f"decoder.blocks.{i}", f"decoder/layer_{i}", take, cross=True)
    _check_tied_projection(weights, used)
    leftover = sorted(n for n, v in weights.items() if n not in used and v.ndim > 0 and not n.endswith("_scale"))
    if leftover:
        raise ModelUnavailable(
            f"unexpected CTranslate2 variables {leftover[:5]}: this Whisper layout is not supported by the converter"
        )
    return dims, sd


def _norm(sd, oa: str, ct2: str, take) -> None:
    sd[oa + ".weight"], sd[oa + ".bias"] = take(ct2 + "/gamma"), take(ct2 + "/beta")


def _linear(sd, oa: str, ct2: str, take) -> None:
    sd[oa + ".weight"], sd[oa + ".bias"] = take(ct2 + "/weight"), take(ct2 + "/bias")


def _split(sd, oa_names: list[str], ct2: str, take) -> None:
    """Un-fuse a CT2 linear (q|k|v or k|v stacked on rows). Key projections have no bias in
    openai-whisper; CT2 stores zeros there, and a key bias cannot change attention anyway
    (it adds the same q.b to every key's score, which softmax ignores)."""
    weight, bias = take(ct2 + "/weight"), take(ct2 + "/bias")
    for oa, w, b in zip(oa_names, np.split(weight, len(oa_names)), np.split(bias, len(oa_names))):
        sd[oa + ".weight"] = w
        if not oa.endswith(".key"):
            sd[oa + ".bias"] = b


def _block(sd, oa: str, ct2: str, take, *, cross: bool) -> None:
    _norm(sd, f"{oa}.attn_ln", f"{ct2}/self_attention/layer_norm", take)
    _split(sd, [f"{oa}.attn.query", f"{oa}.attn.key", f"{oa}.attn.value"], f"{ct2}/self_attention/linear_0", take)
    _linear(sd, f"{oa}.attn.out", f"{ct2}/self_attention/linear_1", take)
    if cross:
        _norm(sd, f"{oa}.cross_attn_ln", f"{ct2}/attention/layer_norm", take)
        _linear(sd, f"{oa}.cross_attn.query", f"{ct2}/attention/linear_0", take)
        _split(sd, [f"{oa}.cross_attn.key", f"{oa}.cross_attn.value"], f"{ct2}/attention/linear_1", take)
        _linear(sd, f"{oa}.cross_attn.out", f"{ct2}/attention/linear_2", take)
    _norm(sd, f"{oa}.mlp_ln", f"{ct2}/ffn/layer_norm", take)
    _linear(sd, f"{oa}.mlp.0", f"{ct2}/ffn/linear_0", take)
    _linear(sd, f"{oa}.mlp.2", f"{ct2}/ffn/linear_1", take)


def _check_tied_projection(weights: dict[str, np.ndarray], used: set[str]) -> None:
    """openai-whisper computes logits with the token embedding; CT2 aliases the projection to it."""
    projection = weights.get("decoder/projection/weight")
    if projection is not None:
        if not np.array_equal(projection, weights["decoder/embeddings/weight"]):
            raise ModelUnavailable(
                "decoder/projection/weight differs from the token embedding; openai-whisper "
                "ties them, so this model cannot be converted"
            )
        used.add("decoder/projection/weight")
    bias = weights.get("decoder/projection/bias")
    if bias is not None:
        if np.any(bias != 0):
            raise ModelUnavailable("decoder/projection/bias is non-zero; openai-whisper has no output bias")
        used.add("decoder/projection/bias")


def infer_dims(weights: dict[str, np.ndarray]) -> dict[str, int]:
    """openai-whisper ModelDimensions from tensor shapes and the stored head counts."""
    try:
        conv1 = weights["encoder/conv1/weight"]
        audio_pos = weights["encoder/position_encodings/encodings"]
        text_pos = weights["decoder/position_encodings/encodings"]
        embeddings = weights["decoder/embeddings/weight"]
    except KeyError as exc:
        raise ModelUnavailable(f"not a CTranslate2 Whisper model: variable {exc} is missing") from exc

    def layers(prefix: str) -> int:
        return len({n.split("/")[1] for n in weights if re.match(prefix + r"/layer_\d+/", n)})

    def heads(prefix: str, width: int) -> int:
        value = weights.get(prefix + "/num_heads")
        return int(value) if value is not None else width // HEAD_DIM

    return {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(audio_pos.shape[0]),
        "n_audio_state": int(audio_pos.shape[1]),
        "n_audio_head": heads("encoder", audio_pos.shape[1]),
        "n_audio_layer": layers("encoder"),
        "n_vocab": int(embeddings.shape[0]),
        "n_text_ctx": int(text_pos.shape[0]),
        "n_text_state": int(text_pos.shape[1]),
        "n_text_head": heads("decoder", text_pos.shape[1]),
        "n_text_layer": layers("decoder"),
    }


def alignment_heads_dump(config: dict, dims: dict[str, int]) -> bytes | None:
    """config.json's [[layer, head], ...] as openai-whisper's base85(gzip(bool mask)) bytes."""
    pairs = config.get("alignment_heads")
    if not pairs:
        return None
    mask = np.zeros((dims["n_text_layer"], dims["n_text_head"]), dtype=bool)
    for layer, head in pairs:
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes(), mtime=0))  # mtime=0: same bytes every run


def convert(ct2_folder: str | os.PathLike, out_path: str | os.PathLike, *, dtype: str = "auto") -> Path:
    """Write an openai-whisper checkpoint for a CT2 Whisper folder (atomically); return its path.

    dtype "auto" keeps float16 when every stored weight was float16 (lossless), else float32."""
    import torch

    folder, out_path = Path(ct2_folder), Path(out_path)
    if not (folder / "model.bin").is_file():
        raise ModelUnavailable(
            f"{folder} has no model.bin; expected a CTranslate2 Whisper folder "
            "(model.bin, config.json, tokenizer.json or vocabulary.txt)"
        )
    model = read_model_bin(folder / "model.bin")
    if model.spec and model.spec != "WhisperSpec":
        raise ModelUnavailable(f"{folder} holds a {model.spec}, not a Whisper model")
    if dtype not in ("auto", "float16", "float32"):
        raise ValueError(f"dtype must be auto, float16 or float32, not {dtype!r}")
    if dtype == "auto":
        stored = [v.dtype for n, v in model.variables.items() if v.ndim > 0 and not n.endswith("_scale")]
        dtype = "float16" if all(d == np.float16 for d in stored) else "float32"
    # Straight to the output dtype: a float16 model never takes float32 space.
    dims, state = to_openai_state_dict(dequantize(model, np.float16 if dtype == "float16" else np.float32))
    checkpoint = {
        "dims": dims,
        "model_state_dict": {k: torch.tensor(np.ascontiguousarray(v)) for k, v in state.items()},
    }
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    heads = alignment_heads_dump(config, dims)
    if heads is not None:
        checkpoint["alignment_heads"] = heads
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(checkpoint, fh)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def verify(pt_path: str | os.PathLike) -> dict[str, int]:
    """Load the checkpoint the way openai-whisper does (strict state dict) and return its dims."""
    import whisper

    model = whisper.load_model(str(pt_path), device="cpu")
    return dict(vars(model.dims))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m encoders.whisper.convert", description=__doc__.split("\n")[0])
    parser.add_argument("ct2_folder", help="CTranslate2 Whisper folder (model.bin, config.json, ...)")
    parser.add_argument("out", help="openai-whisper checkpoint to write, e.g. base.pt")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "float32"])
    parser.add_argument("--no-verify", action="store_true", help="skip loading the result with whisper.load_model")
    args = parser.parse_args(argv)
    try:
        path = convert(args.ct2_folder, args.out, dtype=args.dtype)
        dims = None if args.no_verify else verify(path)
    except ModelUnavailable as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)" + (f"; dims {dims}" if dims else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
