"""Ask reads a retrieved item's pixels only from its own file under `ask.image_roots`.

An item's `sources` are whatever its indexing caller wrote, so under a root shared by
tenants one may name another's file: a file is the item's own only when its bytes hash to
the item's stored `sha256`. Anything else counts by the item's stored text alone.
"""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from PIL import Image

from services.serve.ask import _NO_PIXELS, AnswerWorker


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(out, format="PNG")
    return out.getvalue()


OWN, FOREIGN = png((200, 10, 10)), png((10, 10, 200))


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "shared"
    (root / "tenant-a").mkdir(parents=True)
    (root / "tenant-b").mkdir()
    (root / "tenant-a" / "own.png").write_bytes(OWN)
    (root / "tenant-b" / "theirs.png").write_bytes(FOREIGN)
    return root


@pytest.fixture
def worker(root) -> AnswerWorker:
    worker = AnswerWorker.__new__(AnswerWorker)  # the context step alone, without a VLM
    worker.roots, worker.max_image_bytes = [root.resolve()], 1024 * 1024
    return worker


def payload(*sources: str, content: bytes = OWN) -> dict:
    return {
        "id": "item-1",
        "modality": "image",
        "sha256": hashlib.sha256(content).hexdigest(),
        "sources": list(sources),
        "text": "stored caption",
    }


def colour_of(image: Image.Image) -> tuple[int, int, int]:
    return image.convert("RGB").getpixel((8, 8))


def test_the_items_own_file_is_read(worker, root):
    item = worker._context_item(payload(str(root / "tenant-a" / "own.png")))
    assert colour_of(item.image) == (200, 10, 10) and item.ocr_text == "stored caption"
    assert colour_of(worker._pixels(payload("file://" + str(root / "tenant-a" / "own.png")))) == (200, 10, 10)


def test_a_foreign_file_under_the_root_is_not_read(worker, root):
    item = worker._context_item(payload(str(root / "tenant-b" / "theirs.png")))
    assert item.image is _NO_PIXELS  # the model sees the stored text, not the other tenant's pixels
    assert item.ocr_text == "stored caption"


def test_the_own_file_is_found_after_a_foreign_one(worker, root):
    found = worker._pixels(payload(str(root / "tenant-b" / "theirs.png"), str(root / "tenant-a" / "own.png")))
    assert colour_of(found) == (200, 10, 10)


def test_a_file_changed_since_indexing_is_not_read(worker, root):
    (root / "tenant-a" / "own.png").write_bytes(FOREIGN)
    assert worker._pixels(payload(str(root / "tenant-a" / "own.png"))) is _NO_PIXELS


def test_an_item_without_a_content_hash_gets_no_pixels(worker, root):
    item = payload(str(root / "tenant-a" / "own.png"))
    del item["sha256"]
    assert worker._pixels(item) is _NO_PIXELS


def test_files_outside_the_roots_are_refused_even_with_the_right_bytes(worker, root, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(OWN)
    link = root / "tenant-a" / "link.png"
    os.symlink(outside, link)  # a link under the root that leads out of it
    for source in (str(outside), str(link), str(root / "tenant-a" / ".." / ".." / "outside.png")):
        assert worker._pixels(payload(source)) is _NO_PIXELS, source


def test_a_link_inside_the_root_to_the_items_own_bytes_is_read(worker, root):
    link = root / "tenant-b" / "alias.png"
    os.symlink(root / "tenant-a" / "own.png", link)
    assert colour_of(worker._pixels(payload(str(link)))) == (200, 10, 10)


def test_a_file_larger_than_any_image_is_not_read(worker, root):
    worker.max_image_bytes = len(OWN) - 1
    assert worker._pixels(payload(str(root / "tenant-a" / "own.png"))) is _NO_PIXELS
