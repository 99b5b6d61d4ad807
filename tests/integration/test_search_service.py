"""Text->image, image->image and image->text search through the real gRPC service."""

from __future__ import annotations

import io

import grpc
import pytest

from encoders.clip.bundled.shapes import make_pairs
from services.client.sdk import ImageInput, LoupeCallError, TextInput

pytestmark = pytest.mark.slow

HELD_OUT_SEED = 12345  # never used in training (see encoders/clip/bundled/train_tiny_clip.py)
N = 200
COLLECTION = "shapes"


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def catalog(service):
    """200 held-out images with distinct captions, plus their captions as text items."""
    pairs = make_pairs(N, seed=HELD_OUT_SEED, size=96, distinct=True)
    images = [_png(img) for img, _ in pairs]
    captions = [cap for _, cap in pairs]
    with service.client() as client:
        image_ids, caption_ids = [], []
        for start in range(0, N, 50):
            items = [
                ImageInput(
                    images[i],
                    source=f"shape-{i}.png",
                    metadata={"n": i, "shape": captions[i].split()[2], "even": i % 2 == 0},
                )
                for i in range(start, min(N, start + 50))
            ]
            image_ids += [pid for pid, _ in client.index_images(items, collection=COLLECTION)]
            caption_ids += [
                pid
                for pid, _ in client.index_texts(
                    [TextInput(captions[i], source=f"caption-{i}") for i in range(start, min(N, start + 50))],
                    collection=COLLECTION,
                )
            ]
    return {"images": images, "captions": captions, "image_ids": image_ids, "caption_ids": caption_ids}


def test_health_reports_serving(service):
    with service.client() as client:
        assert client.health() == "SERVING"
        assert client.health("loupe.v1.SearchService") == "SERVING"
        with pytest.raises(LoupeCallError) as info:
            client.health("no.such.Service")
        assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_ray_serve_builtin_health_rpc(service):
    from ray.serve.generated import serve_pb2, serve_pb2_grpc

    with grpc.insecure_channel(service.target) as channel:
        reply = serve_pb2_grpc.RayServeAPIServiceStub(channel).Healthz(serve_pb2.HealthzRequest(), timeout=10)
    assert reply.message == "success"


def test_text_to_image_recall(service, catalog):
    ranks = []
    with service.client() as client:
        for i, caption in enumerate(catalog["captions"]):
            result = client.search_text(caption, limit=5, modalities=["image"], collection=COLLECTION)
            assert result.model_id == "bundled:tiny-clip"  # nobody mistakes it for the real model
            ids = [h.id for h in result]
            ranks.append(ids.index(catalog["image_ids"][i]) if catalog["image_ids"][i] in ids else None)
    r1 = sum(r == 0 for r in ranks) / N
    r5 = sum(r is not None for r in ranks) / N
    print(f"text->image over gRPC: R@1 {r1:.3f} R@5 {r5:.3f}")
    assert r1 >= 0.7 and r5 >= 0.95


def test_image_to_image_finds_the_same_picture_first(service, catalog):
    with service.client() as client:
        for i in range(0, N, 10):
            result = client.search_image(catalog["images"][i], limit=1, modalities=["image"], collection=COLLECTION)
            assert result.hits[0].id == catalog["image_ids"][i]
            assert result.hits[0].score > 0.99


def test_image_to_text_returns_the_caption(service, catalog):
    with service.client() as client:
        right = sum(
            client.search_image(catalog["images"][i], limit=1, modalities=["text"], collection=COLLECTION)
            .hits[0]
            .item.text
            == catalog["captions"][i]
            for i in range(N)
        )
    print(f"image->text over gRPC: top-1 {right / N:.3f}")
    assert right / N >= 0.6


def test_search_by_indexed_id_excludes_itself(service, catalog):
    with service.client() as client:
        result = client.search_image(id=catalog["image_ids"][0], limit=3, modalities=["image"], collection=COLLECTION)
    assert catalog["image_ids"][0] not in [h.id for h in result] and len(result) == 3


def test_filters_paging_and_threshold(service, catalog):
    with service.client() as client:
        circles = client.search_text("a red circle", limit=20, where={"shape": "circle"}, collection=COLLECTION)
        assert circles.hits and all(h.item.metadata["shape"] == "circle" for h in circles)
        some = client.search_text("a shape", limit=50, where={"n": {"gte": 10, "lt": 20}}, collection=COLLECTION)
        assert sorted(h.item.metadata["n"] for h in some) == list(range(10, 20))
        evens = client.search_text("a shape", limit=50, where={"even": True, "n": [1, 2, 3, 4]}, collection=COLLECTION)
        assert sorted(h.item.metadata["n"] for h in evens) == [2, 4]
        page1 = client.search_text("a blue square", limit=5, modalities=["image"], collection=COLLECTION)
        page2 = client.search_text(
            "a blue square", limit=5, offset=page1.next_offset, modalities=["image"], collection=COLLECTION
        )
        assert page1.next_offset == 5 and not {h.id for h in page1} & {h.id for h in page2}
        high = client.search_text("a blue square", limit=100, score_threshold=0.5, collection=COLLECTION)
        assert all(h.score >= 0.5 for h in high)
        assert client.count(collection=COLLECTION, modalities=["text"]) == N


def test_reindexing_is_idempotent_and_keeps_both_sources(service, catalog):
    with service.client() as client:
        before = client.count(collection=COLLECTION)
        [(pid, created)] = client.index_images(
            [ImageInput(catalog["images"][7], source="copy/of/shape-7.png", metadata={"extra": "yes"})],
            collection=COLLECTION,
        )
        assert (pid, created) == (catalog["image_ids"][7], False)
        assert client.count(collection=COLLECTION) == before
        item = client.get(pid, collection=COLLECTION)
        assert item.sources == ["shape-7.png", "copy/of/shape-7.png"]
        assert item.metadata["extra"] == "yes" and item.metadata["n"] == 7
        assert item.model_id == "bundled:tiny-clip" and (item.width, item.height) == (96, 96)


def test_caller_ids_get_and_delete(service):
    with service.client() as client:
        [(pid, created)] = client.index_texts(
            [TextInput("a green star on a black background", id="sku-1", metadata={"price": 3.5})], collection="ids"
        )
        assert (pid, created) == ("sku-1", True)
        assert client.get("sku-1", collection="ids").text == "a green star on a black background"
        client.index_texts([TextInput("a red ring", id="sku-2", metadata={"price": 9})], collection="ids")
        assert client.delete(where={"price": {"gt": 5}}, collection="ids") == 1
        assert client.delete(["sku-1"], collection="ids") == 1
        assert client.count(collection="ids") == 0


def test_status_lists_collections(service, catalog):
    with service.client() as client:
        status = client.status()
    assert status.profile == "bundled" and status.store_backend == "qdrant-edge"
    by_name = {c.name: c for c in status.collections}
    assert by_name[COLLECTION].count >= 2 * N and by_name[COLLECTION].model_id == "bundled:tiny-clip"
