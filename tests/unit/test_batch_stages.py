"""Batch pipeline steps without Ray: reading URIs, decoding, the PIL crop that must give the
service's vectors, encoding, and how failures are recorded."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
from PIL import Image

from encoders.clip.encoder import ClipEncoder, ClipOptions
from encoders.image.decode import ImageLimits
from indexing.batch import stages
from tests.fixtures.catalog import image_bytes


@pytest.fixture(scope="module")
def clip() -> ClipEncoder:
    return ClipEncoder(ClipOptions(model="bundled:tiny-clip", device="cpu", threads=1)).load()


def test_square_side_recognises_clip_transforms(clip):
    import open_clip

    assert stages.square_side(clip.preprocessor()) == 64
    assert stages.square_side(open_clip.image_transform(224, is_train=False)) == 224
    assert stages.square_side(open_clip.image_transform(224, is_train=False, resize_mode="squash")) is None


@pytest.mark.parametrize("size", [(64, 64), (200, 90), (33, 170), (64, 65)])
def test_fit_square_gives_the_services_vectors(clip, size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    fitted = stages.fit_square(image, 64)
    assert fitted.size == (64, 64)
    np.testing.assert_allclose(clip.encode_images([fitted]), clip.encode_images([image]), atol=1e-6)


def _table(rows):
    return stages.table([{"row": i + 1, "uri": u, "meta": "", **extra} for i, (u, extra) in enumerate(rows)])


def test_read_decode_encode(clip, tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(image_bytes(1, 40))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, not an image")
    (tmp_path / "cut.jpg").write_bytes(image_bytes(2, 64)[:300])
    (tmp_path / "big.jpg").write_bytes(b"\xff" * 5000)
    uris = [
        str(good),
        str(tmp_path / "missing.jpg"),
        str(tmp_path / "empty.jpg"),
        str(tmp_path / "text.jpg"),
        str(tmp_path / "cut.jpg"),
        "s3://bucket/x.jpg",
        str(tmp_path / "big.jpg"),
        f"file://{good}",
    ]
    read = stages.read_batch(_table([(u, {}) for u in uris]), max_bytes=4096, audio=True).to_pylist()
    reasons = [(r["status"], r["stage"], r["reason"]) for r in read]
    assert reasons[0] == (None, None, None) and read[0]["kind"] == "image"
    assert read[0]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest() == read[7]["sha256"]
    assert reasons[1][:2] == ("failed", "read") and "no such file" in reasons[1][2]
    assert "empty" in reasons[2][2] and "not an image or audio" in reasons[3][2]
    assert reasons[4][0] is None  # its header says JPEG; decoding finds the truncation
    assert "unsupported URI scheme 's3'" in reasons[5][2] and "over the limit of 4,096" in reasons[6][2]

    options = stages.DecodeOptions(limits=ImageLimits(), ocr_mode="never", side=stages.square_side(clip.preprocessor()))
    decoded = stages.decode_batch(stages.table(read), options=options).to_pylist()
    assert decoded[0]["width"] == 40 and decoded[0]["data"] is None and len(decoded[0]["crop"]) == 64 * 64 * 3
    assert (decoded[4]["status"], decoded[4]["stage"]) == ("failed", "decode")
    assert "truncated" in decoded[4]["reason"]

    encoder = stages.Encode.__new__(stages.Encode)
    encoder.clip = clip
    encoded = encoder(stages.table(decoded)).to_pylist()
    vector = np.frombuffer(encoded[0]["vector"], np.float32)
    np.testing.assert_allclose(vector, clip.encode_images([Image.open(good).convert("RGB")])[0], atol=1e-6)
    assert encoded[0]["crop"] is None and encoded[1]["vector"] is None


def test_tensor_path_when_the_transform_is_not_a_plain_crop(clip, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(image_bytes(3, 50, fmt="PNG"))
    read = stages.read_batch(_table([(str(path), {})]), max_bytes=10**6, audio=False)
    options = stages.DecodeOptions(limits=ImageLimits(), ocr_mode="never", preprocess=pickle.dumps(clip.preprocessor()))
    decoded = stages.decode_batch(read, options=options).to_pylist()
    assert decoded[0]["crop"] is None and len(decoded[0]["pixels"]) == 3 * 64 * 64 * 4
    encoder = stages.Encode.__new__(stages.Encode)
    encoder.clip = clip
    [row] = encoder(stages.table(decoded)).to_pylist()
    expected = clip.encode_images([Image.open(path).convert("RGB")])[0]
    np.testing.assert_allclose(np.frombuffer(row["vector"], np.float32), expected, atol=1e-6)
