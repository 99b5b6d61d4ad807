"""The Encoder deployment's batching, run as a plain class: a lone text call skips the batch
queue and calls that arrive meanwhile go to it; image calls batch only the forward pass of
the images that decoded."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from encoders.clip.encoder import TextEmbedding
from encoders.common.errors import InvalidInput
from services.config import load_settings
from services.serve.workers import EncodedImage, EncoderWorker, PreparedImage


class FakeWorker:
    """Records each forward pass's size; a pass takes `seconds`."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds, self.passes, self.lock = seconds, [], threading.Lock()

    def encode_texts(self, texts):
        time.sleep(self.seconds)
        with self.lock:
            self.passes.append(("text", len(texts)))
        return TextEmbedding(np.array([[float(len(t))] for t in texts], np.float32), tuple(False for _ in texts))

    def prepare_images(self, blobs):
        return [
            InvalidInput("not an image", field="data")
            if b == b"bad"
            else PreparedImage(np.full((1,), len(b), np.float32), 1, 1, "", b"")
            for b in blobs
        ]

    def encode_pixels(self, pixels):
        time.sleep(self.seconds)
        with self.lock:
            self.passes.append(("image", len(pixels)))
        return np.stack(pixels)

    pixels_of = staticmethod(EncoderWorker.pixels_of)
    finish_images = staticmethod(EncoderWorker.finish_images)


def _encoder(worker: FakeWorker):
    """The deployment class around `worker`; its Serve batch (which needs a replica) replaced by
    a recorder that runs each call's list as it comes."""
    from services.serve.deployments import EncoderDeployment

    cls = EncoderDeployment.func_or_class
    encoder = cls.__new__(cls)
    encoder.worker, encoder._lone_texts, encoder.queued = worker, 0, []

    async def texts(batch):
        encoder.queued.append(("text", len(batch)))
        return await asyncio.to_thread(worker.encode_texts, batch)

    async def images(pixels):
        encoder.queued.append(("image", len(pixels)))
        return list(await asyncio.to_thread(worker.encode_pixels, pixels))

    encoder._texts, encoder._images = texts, images
    return encoder


def test_a_lone_text_skips_the_batch_queue_and_calls_meanwhile_join_it() -> None:
    worker = FakeWorker()
    encoder = _encoder(worker)

    async def run():
        first = asyncio.ensure_future(encoder.encode_texts(["a"]))
        await asyncio.sleep(0.05)  # the first is in its forward pass now
        rest = await asyncio.gather(*(encoder.encode_texts([x * (i + 2)]) for i, x in enumerate("bcd")))
        alone = await encoder.encode_texts(["e"])  # nothing runs now: at once again
        return await first, rest, alone

    first, rest, alone = asyncio.run(run())
    assert encoder.queued == [("text", 1)] * 3  # only the three that came during the first
    assert first.vectors[0, 0] == 1.0 and [r.vectors[0, 0] for r in rest] == [2.0, 3.0, 4.0]
    assert alone.vectors[0, 0] == 1.0 and len(worker.passes) == 5


@pytest.mark.parametrize("blobs", [[b"xx", b"bad", b"xxxx"], [b"bad"]])
def test_image_calls_batch_only_the_forward_pass_of_the_images_that_decoded(blobs) -> None:
    worker = FakeWorker(seconds=0.01)
    encoder = _encoder(worker)
    out = asyncio.run(encoder.encode_images(blobs))
    assert [isinstance(r, InvalidInput) for r in out] == [b == b"bad" for b in blobs]
    assert [float(r.vector[0]) for r in out if isinstance(r, EncodedImage)] == [len(b) for b in blobs if b != b"bad"]
    assert encoder.queued == ([("image", 2)] if len(blobs) == 3 else [])


def test_the_worker_prepares_then_encodes_like_encode_images() -> None:
    import io

    from PIL import Image

    settings = load_settings({"profile": "bundled", "ocr": {"mode": "never"}})
    worker = EncoderWorker(settings)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
    blobs = [buf.getvalue(), b"junk"]
    whole = worker.encode_images(blobs)
    prepared = worker.prepare_images(blobs)
    parts = worker.finish_images(prepared, worker.encode_pixels([p.pixels for p in prepared[:1]]))
    assert (whole[0].width, whole[0].height) == (parts[0].width, parts[0].height) == (40, 30)
    np.testing.assert_allclose(whole[0].vector, parts[0].vector, atol=1e-6)
    assert isinstance(whole[1], InvalidInput) and isinstance(parts[1], InvalidInput)
