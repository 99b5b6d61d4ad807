"""The ONNX runtimes of the CLIP encoder: same vectors as PyTorch, one export per weights, the int8 gate."""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace

import numpy as np
import pytest

from encoders.clip.bundled.shapes import render, sample_scenes
from encoders.clip.encoder import ClipEncoder, ClipOptions
from encoders.clip.runtimes import DriftReport, drift_report, gate_file, probe_set
from encoders.common.errors import InvalidInput, ModelUnavailable

MODEL = "bundled:tiny-clip"


def _encoder(runtime: str, cache, **kw) -> ClipEncoder:
    return ClipEncoder(
        ClipOptions(model=MODEL, device="cpu", threads=1, runtime=runtime, onnx_cache_dir=str(cache), **kw)
    ).load()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def held_out():
    scenes = sample_scenes(40, seed=777, distinct=True)
    rng = random.Random(777)
    return [s.caption for s in scenes], [render(s, rng, 64) for s in scenes]


@pytest.fixture(scope="module")
def torch_enc(cache):
    return _encoder("torch", cache)


@pytest.fixture(scope="module")
def onnx_enc(cache):
    return _encoder("onnx", cache)


def test_fp32_onnx_matches_pytorch_on_golden_and_held_out_inputs(torch_enc, onnx_enc, held_out):
    texts, images = held_out
    for a, b in (
        (torch_enc.encode_texts(texts).vectors, onnx_enc.encode_texts(texts).vectors),
        (torch_enc.encode_images(images), onnx_enc.encode_images(images)),
    ):
        assert a.shape == b.shape and b.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
        assert np.sum(a * b, axis=1).min() >= 0.9999
    assert (onnx_enc.dim, onnx_enc.context_length, onnx_enc.model_id) == (64, 32, torch_enc.model_id)


def test_onnx_batches_of_any_size_and_the_pixels_path(onnx_enc, torch_enc, held_out):
    _, images = held_out
    one = onnx_enc.encode_images(images[:1])
    many = onnx_enc.encode_images(images[:7])
    np.testing.assert_allclose(one[0], many[0], atol=1e-5)
    pixels = np.stack([onnx_enc.preprocessor()(im).numpy() for im in images[:3]])
    np.testing.assert_allclose(onnx_enc.encode_pixels(pixels), many[:3], atol=1e-5)
    assert onnx_enc.encode_texts([]).vectors.shape == (0, 64)


def test_export_is_cached_by_weights_hash_and_reused(onnx_enc, cache):
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert [f.name for f in folders] == [onnx_enc.onnx_folder.name]
    assert {"image.onnx", "text.onnx"} <= {p.name for p in onnx_enc.onnx_folder.iterdir()}
    stamps = {p.name: p.stat().st_mtime_ns for p in onnx_enc.onnx_folder.iterdir()}
    again = _encoder("onnx", cache)  # a second process or replica: no new export
    assert again.onnx_folder == onnx_enc.onnx_folder
    assert {p.name: p.stat().st_mtime_ns for p in again.onnx_folder.iterdir()} == stamps


def test_other_weights_get_their_own_export(tmp_path, onnx_enc):
    """A changed weight means a new folder, never the old graphs."""
    import shutil

    from safetensors.torch import load_file, save_file

    from encoders.clip.sources import BUNDLED_MODELS

    src = BUNDLED_MODELS["tiny-clip"]
    shutil.copytree(src, tmp_path / "model")
    weights = load_file(str(tmp_path / "model" / "open_clip_model.safetensors"))
    name = next(k for k in weights if k.endswith("proj") or "projection" in k)
    weights[name] = weights[name] * 1.01
    save_file(weights, str(tmp_path / "model" / "open_clip_model.safetensors"))
    changed = ClipEncoder(
        ClipOptions(
            model=str(tmp_path / "model"),
            device="cpu",
            threads=1,
            runtime="onnx",
            onnx_cache_dir=str(onnx_enc.onnx_folder.parent),
        )
    ).load()
    assert changed.onnx_folder != onnx_enc.onnx_folder


def test_int8_passes_the_gate_on_the_bundled_model_and_records_it(cache, torch_enc, held_out):
    int8 = _encoder("onnx-int8", cache)
    report = int8.drift
    assert report is not None and report.n_texts == report.n_images == 64
    assert report.min_cosine >= 0.99 and report.recall_loss <= 0.02
    saved = json.loads(gate_file(int8.onnx_folder).read_text())
    assert saved["report"]["min_cosine"] == report.min_cosine
    texts, images = held_out
    # Drifted, but still finds the right picture on captions it was not gated on.
    measured = drift_report(torch_enc, int8, texts, images, k=5)
    assert measured.min_cosine < 0.99999 and measured.recall_candidate >= measured.recall_reference - 0.05


def test_int8_is_refused_beyond_the_configured_loss(cache):
    with pytest.raises(ModelUnavailable, match=r"onnx-int8 refused .*min cosine .* < 0\.99999.*runtime onnx"):
        _encoder("onnx-int8", cache, int8_min_cosine=0.99999)


def test_check_drift_on_a_sample_of_the_data(cache, held_out):
    _, images = held_out
    int8 = _encoder("onnx-int8", cache)
    report = int8.check_drift(images[:16])
    assert report.n_images == 16 and report.min_cosine >= 0.99 and 0 < report.topk_overlap <= 1
    pixels = np.stack([int8.preprocessor()(im).numpy() for im in images[:8]])
    assert int8.check_drift(pixels=pixels).n_images == 8
    int8.options = replace(int8.options, int8_min_cosine=0.999999)
    with pytest.raises(ModelUnavailable, match="refused on this data"):
        int8.check_drift(images[:16])
    exact = _encoder("onnx", cache).check_drift(images[:4])
    assert exact == DriftReport(0, 4, 1.0, 1.0, 1.0, 1.0, 1.0, 10)


def test_unknown_runtime_and_wrong_device_are_clear(cache):
    with pytest.raises(InvalidInput, match="runtime 'tensorrt' is not one of auto, torch, onnx, onnx-int8"):
        _encoder("tensorrt", cache)
    with pytest.raises(ModelUnavailable, match="runs fp32 on CPU"):
        _encoder("onnx", cache, precision="bf16")


def test_auto_picks_onnx_on_cpu_and_torch_for_reduced_precision(cache):
    assert _encoder("auto", cache).runtime == "onnx"
    assert _encoder("auto", cache, precision="bf16").runtime == "torch"


def test_unwritable_cache_says_what_to_do(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelUnavailable, match="cannot write the ONNX cache .* LOUPE_ONNX_CACHE"):
        _encoder("onnx", blocker / "sub")


def test_corrupt_cached_graph_says_how_to_recover(tmp_path):
    enc = _encoder("onnx", tmp_path)
    (enc.onnx_folder / "image.onnx").write_bytes(b"truncated")
    with pytest.raises(ModelUnavailable, match="delete .* to re-export"):
        _encoder("onnx", tmp_path)


def test_probe_set_is_fixed():
    a, b = probe_set(8), probe_set(8)
    assert a[0] == b[0] and len(set(a[0])) == 8
    assert [np.asarray(x).tobytes() for x in a[1]] == [np.asarray(x).tobytes() for x in b[1]]


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    from encoders.clip.runtimes import cache_root

    monkeypatch.setenv("LOUPE_ONNX_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert cache_root(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("LOUPE_ONNX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "loupe" / "onnx"
    assert os.path.isabs(str(cache_root()))


def test_batch_encode_stage_checks_int8_on_its_first_batch(cache, held_out):
    from indexing.batch import stages

    _, images = held_out
    int8 = _encoder("onnx-int8", cache)
    rows = [
        {
            "kind": "image",
            "status": None,
            "crop": np.asarray(im.resize((64, 64))).tobytes(),
            "pixels": None,
            "vector": None,
        }
        for im in images[:4]
    ]
    encode = stages.Encode.__new__(stages.Encode)
    encode.clip = int8
    int8.options = replace(int8.options, int8_min_cosine=0.999999)
    with pytest.raises(ModelUnavailable, match="refused on this data"):
        encode(stages.table(rows))
    int8.options = replace(int8.options, int8_min_cosine=0.99)
    out = encode(stages.table(rows)).to_pylist()
    assert encode._drift_checked and all(r["vector"] for r in out)
