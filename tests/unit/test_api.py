"""The RPC logic in-process (no Ray): bundled CLIP + embedded store behind the async faces."""

from __future__ import annotations

import asyncio
import io

import pytest

from encoders.clip.bundled.shapes import make_pairs
from encoders.common.errors import BatchInvalid, InvalidInput, ModelMismatch, NotFound
from protos.loupe.v1 import common_pb2, index_pb2, search_pb2
from services.config import load_settings
from services.rpc.api import LoupeApi
from services.serve.workers import EncoderWorker, IndexWorker, ThreadCalls
from tests.fixtures import bad_media


@pytest.fixture(scope="module")
def encoder():
    return EncoderWorker(load_settings({"profile": "bundled", "encoder": {"threads": 1}}))


@pytest.fixture
def api(encoder, tmp_path):
    settings = load_settings({"profile": "bundled", "data_dir": str(tmp_path), "optimize_after_points": 0})
    index = IndexWorker(settings)
    yield LoupeApi(settings, ThreadCalls(encoder), ThreadCalls(index))
    index.close()


def run(coro):
    return asyncio.run(coro)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_index_then_search_each_way(api):
    pairs = make_pairs(6, seed=777, size=64, distinct=True)
    req = index_pb2.IndexImagesRequest(
        items=[index_pb2.ImageItem(data=_png(img), source=f"{i}.png") for i, (img, _) in enumerate(pairs)]
    )
    stored = run(api.index_images(req))
    assert stored.model_id == "bundled:tiny-clip" and all(it.created for it in stored.items)
    assert all(it.id.startswith("sha256:") for it in stored.items)
    again = run(api.index_images(req))
    assert [it.id for it in again.items] == [it.id for it in stored.items] and not any(it.created for it in again.items)

    hits = run(api.search_image(search_pb2.SearchImageRequest(image=req.items[2].data))).hits
    assert hits[0].item.id == stored.items[2].id and hits[0].item.sources == ["2.png"]
    by_id = run(api.search_image(search_pb2.SearchImageRequest(id=stored.items[2].id)))
    assert stored.items[2].id not in [h.item.id for h in by_id.hits]
    text = run(api.search_text(search_pb2.SearchTextRequest(query=pairs[0][1])))
    assert text.model_id == "bundled:tiny-clip" and len(text.hits) == 6 and text.next_offset == 0


def test_images_keep_a_thumbnail_returned_only_when_asked(api):
    from PIL import Image

    big = Image.new("RGB", (640, 320), "red")
    (stored,) = run(api.index_images(index_pb2.IndexImagesRequest(items=[index_pb2.ImageItem(data=_png(big))]))).items
    plain = run(api.get_item(index_pb2.GetItemRequest(id=stored.id)))
    assert plain.thumbnail == b""
    item = run(api.get_item(index_pb2.GetItemRequest(id=stored.id, with_thumbnail=True)))
    preview = Image.open(io.BytesIO(item.thumbnail))
    assert preview.format == "JPEG" and preview.size == (128, 64) and len(item.thumbnail) < 8000
    options = search_pb2.SearchOptions(with_thumbnails=True)
    hits = run(api.search_text(search_pb2.SearchTextRequest(query="red", options=options))).hits
    assert hits[0].item.thumbnail == item.thumbnail
    assert not run(api.search_text(search_pb2.SearchTextRequest(query="red"))).hits[0].item.thumbnail


def test_a_bad_item_stores_nothing(api):
    good = _png(make_pairs(1, seed=1)[0][0])
    req = index_pb2.IndexImagesRequest(
        items=[
            index_pb2.ImageItem(data=good),
            index_pb2.ImageItem(data=b""),
            index_pb2.ImageItem(data=bad_media.truncated_jpeg()),
        ]
    )
    with pytest.raises(BatchInvalid) as info:
        run(api.index_images(req))
    assert [p.field for p in info.value.problems] == ["items[1].data", "items[2].data"]
    with pytest.raises(NotFound):  # not even the collection was created
        run(api.count(index_pb2.CountRequest()))


def test_limits_and_options(api):
    run(api.index_texts(index_pb2.IndexTextsRequest(items=[index_pb2.TextItem(text="a red ring")])))
    for limit in (0, 101):
        with pytest.raises(InvalidInput, match="limit"):
            run(api.search_text(search_pb2.SearchTextRequest(query="x", options=search_pb2.SearchOptions(limit=limit))))
    with pytest.raises(InvalidInput, match="offset"):
        run(api.search_text(search_pb2.SearchTextRequest(query="x", options=search_pb2.SearchOptions(offset=995))))
    long = run(api.search_text(search_pb2.SearchTextRequest(query="ring " * 100)))
    assert long.query_truncated


def test_unknown_filter_field_lists_known_ones(api):
    item = index_pb2.TextItem(text="a blue star")
    item.metadata.update({"colour": "blue"})
    run(api.index_texts(index_pb2.IndexTextsRequest(items=[item])))
    flt = common_pb2.Filter(must=[common_pb2.FieldCondition(field="color")])
    flt.must[0].equals.string_value = "blue"
    with pytest.raises(InvalidInput, match="colour"):
        run(api.search_text(search_pb2.SearchTextRequest(query="x", options=search_pb2.SearchOptions(filter=flt))))


def test_other_model_collection_is_refused(api, tmp_path):
    from indexing.types import CollectionSchema

    other = CollectionSchema(vector_name="clip", dim=8, model_id="open_clip:elsewhere", model_version="1")
    run(api.index.add("old", other, []))
    with pytest.raises(ModelMismatch, match="elsewhere"):
        run(
            api.search_text(search_pb2.SearchTextRequest(query="x", options=search_pb2.SearchOptions(collection="old")))
        )
