"""Bad input through the real gRPC service: the right code, a reason, nothing lost, still up."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from protos.loupe.v1 import common_pb2, index_pb2, search_pb2
from services.client.sdk import ImageInput, LoupeCallError, TextInput
from tests.fixtures import bad_media
from tests.integration.conftest import LEGACY_COLLECTION

pytestmark = pytest.mark.slow

COLLECTION = "badinput"
IMAGE_CAP = 20 * 1024 * 1024  # ray_config.yaml limits.image_max_bytes


@pytest.fixture(scope="module")
def seeded(service):
    with service.client() as client:
        client.index_texts(
            [TextInput("a yellow cross on a blue background", id="keep-me", metadata={"n": 1})], collection=COLLECTION
        )
        client.index_images([ImageInput(bad_media.rgba_png(), source="ok.png")], collection=COLLECTION)
        return client.count(collection=COLLECTION)


def _expect(call, code: grpc.StatusCode, *words: str) -> LoupeCallError:
    with pytest.raises(LoupeCallError) as info:
        call()
    err = info.value
    assert err.code == code, err
    for word in words:
        assert word.lower() in err.reason.lower(), err.reason
    assert "Traceback" not in err.reason
    return err


@pytest.fixture
def client(service, seeded):
    with service.client() as c:
        yield c
        # After every bad call: still answering, earlier points intact.
        assert c.health() == "SERVING"
        assert c.count(collection=COLLECTION) == seeded
        assert c.get("keep-me", collection=COLLECTION).text.startswith("a yellow cross")


IMAGES = {
    "empty bytes": (bad_media.empty_bytes, ["empty"]),
    "random bytes": (bad_media.random_bytes, ["not an image"]),
    "truncated jpeg": (bad_media.truncated_jpeg, ["truncated"]),
    "png decompression bomb": (bad_media.png_bomb, ["pixels", "limit"]),
    "20000x20000 image": (bad_media.huge_dimensions, ["20000x20000", "pixels"]),
    "over the byte cap": (lambda: bad_media.over_byte_cap(IMAGE_CAP), ["bytes", "limit"]),
    "unsupported format": (bad_media.pdf_bytes, ["not accepted"]),
}


@pytest.mark.parametrize("case", sorted(IMAGES))
def test_bad_images_are_rejected_on_index_and_search(client, case):
    make, words = IMAGES[case]
    data = make()
    err = _expect(
        lambda: client.index_images([ImageInput(data)], collection=COLLECTION), grpc.StatusCode.INVALID_ARGUMENT, *words
    )
    assert err.violations and err.violations[0][0] == "items[0].data"
    _expect(lambda: client.search_image(data, collection=COLLECTION), grpc.StatusCode.INVALID_ARGUMENT, *words)


def test_one_bad_image_in_a_batch_stores_nothing(client):
    good, bad = bad_media.palette_png_with_transparency(), bad_media.truncated_jpeg()
    err = _expect(
        lambda: client.index_images([ImageInput(good), ImageInput(bad)], collection=COLLECTION),
        grpc.StatusCode.INVALID_ARGUMENT,
        "items[1]",
    )
    assert [f for f, _ in err.violations] == ["items[1].data"]


@pytest.mark.parametrize(
    "query, words",
    [("", ["query is empty"]), ("   ", ["query is empty"]), ("x" * 10_000, ["10000 characters", "limit is 1000"])],
)
def test_bad_queries(client, query, words):
    _expect(lambda: client.search_text(query, collection=COLLECTION), grpc.StatusCode.INVALID_ARGUMENT, *words)


@pytest.mark.parametrize("limit", [0, 1_000_000, -3])
def test_limit_out_of_range(client, limit):
    _expect(
        lambda: client.search_text("a cross", limit=limit, collection=COLLECTION),
        grpc.StatusCode.INVALID_ARGUMENT,
        "limit",
        "between 1 and 100",
    )


def test_unknown_filter_field(client):
    err = _expect(
        lambda: client.search_text("a cross", where={"colr": "red"}, collection=COLLECTION),
        grpc.StatusCode.INVALID_ARGUMENT,
        "colr",
    )
    assert "n" in err.reason  # names the known fields


def test_malformed_filters(client):
    request = search_pb2.SearchTextRequest(
        query="a cross",
        options=search_pb2.SearchOptions(
            collection=COLLECTION, filter=common_pb2.Filter(must=[common_pb2.FieldCondition(field="n")])
        ),
    )
    _expect(lambda: client._call(client._search.SearchText, request), grpc.StatusCode.INVALID_ARGUMENT, "no match")
    _expect(
        lambda: client.search_text("a cross", where={"n": {"gte": 5, "lt": 1}}, collection=COLLECTION),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty",
    )


def test_wrong_model_collection(client):
    clip = (Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "printer_error_en-us.wav").read_bytes()
    for call in (
        lambda: client.search_text("old things", collection=LEGACY_COLLECTION),
        lambda: client.index_texts([TextInput("new")], collection=LEGACY_COLLECTION),
        lambda: client.index_audio(clip, collection=LEGACY_COLLECTION),
    ):
        _expect(call, grpc.StatusCode.FAILED_PRECONDITION, "some-other-model", "bundled:tiny-clip")


def test_delete_missing_id(client):
    _expect(
        lambda: client.delete(["no-such-id", "keep-me"], collection=COLLECTION), grpc.StatusCode.NOT_FOUND, "no-such-id"
    )


def test_missing_things(client):
    _expect(lambda: client.get("nope", collection=COLLECTION), grpc.StatusCode.NOT_FOUND, "nope")
    _expect(lambda: client.search_text("a cross", collection="never-made"), grpc.StatusCode.NOT_FOUND, "never-made")
    _expect(lambda: client.search_image(id="nope", collection=COLLECTION), grpc.StatusCode.NOT_FOUND, "nope")


def test_bad_requests_shapes(client):
    _expect(lambda: client.index_images([], collection=COLLECTION), grpc.StatusCode.INVALID_ARGUMENT, "items")
    _expect(
        lambda: client.index_texts([TextInput("x")] * 65, collection=COLLECTION),
        grpc.StatusCode.INVALID_ARGUMENT,
        "65 items",
    )
    _expect(
        lambda: client._call(client._index.Delete, index_pb2.DeleteRequest(collection=COLLECTION)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ids or filter",
    )
    _expect(
        lambda: client.search_text("x", collection="../../etc"), grpc.StatusCode.INVALID_ARGUMENT, "collection name"
    )
    _expect(
        lambda: client.index_texts([TextInput("x", id="sha256:abc")], collection=COLLECTION),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reserved",
    )
