"""Names, ids and metadata keys with a control character at the end are refused.

`re.match` with a pattern ending in "$" accepts "name\\n" ("$" matches before a trailing
newline), and a collection name becomes a folder of the embedded store: every check must
hold the whole string, at the wire and again at the store.
"""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import struct_pb2

from encoders.common.errors import InvalidInput
from indexing.index import Index, NewItem
from indexing.store.edge import EdgeStore
from indexing.types import CollectionSchema, Modality
from indexing.vectors import check_vector_name
from services.config import RequestLimits
from services.rpc import convert

ENDINGS = ["\n", "\r", "\x00"]
SCHEMA = CollectionSchema(vector_name="clip", dim=4, model_id="bundled:tiny-clip", model_version="v1")


@pytest.fixture
def index(tmp_path):
    index = Index(EdgeStore(str(tmp_path / "data")))
    yield index
    index.close()


def new_item(public_id: str | None = None, **metadata) -> NewItem:
    return NewItem(
        public_id=public_id,
        sha256="ab" * 32,
        modality=Modality.IMAGE,
        vector=np.array([1, 0, 0, 0], dtype=np.float32),
        metadata=metadata,
    )


# -- at the wire (services.rpc.convert) -------------------------------------------------------


@pytest.mark.parametrize("end", ENDINGS)
def test_wire_refuses_a_collection_name_with_a_control_character(end):
    assert convert.collection_name("photos") == "photos"
    with pytest.raises(InvalidInput) as e:
        convert.collection_name("photos" + end)
    assert e.value.field == "collection"


@pytest.mark.parametrize("end", ENDINGS)
def test_wire_refuses_an_id_with_a_control_character(end):
    assert convert.caller_id("a-1", "items[0].id") == "a-1"
    with pytest.raises(InvalidInput) as e:
        convert.caller_id("a-1" + end, "items[0].id")
    assert e.value.field == "items[0].id"


@pytest.mark.parametrize("end", ENDINGS)
def test_wire_refuses_a_metadata_key_with_a_control_character(end):
    good = struct_pb2.Struct()
    good.update({"colour": "red"})
    assert convert.metadata(good, RequestLimits(), "items[0].metadata") == {"colour": "red"}
    bad = struct_pb2.Struct()
    bad.update({"colour" + end: "red"})
    with pytest.raises(InvalidInput, match="metadata key") as e:
        convert.metadata(bad, RequestLimits(), "items[0].metadata")
    assert e.value.field.startswith("items[0].metadata.")


@pytest.mark.parametrize("end", ENDINGS)
def test_wire_refuses_a_language_with_a_control_character_inside(end):
    # Surrounding whitespace is trimmed (a sloppy "en\n" is "en"); a NUL is not whitespace.
    if end.isspace():
        assert convert.language("en" + end) == "en"
    else:
        with pytest.raises(InvalidInput):
            convert.language("en" + end)


# -- at the store (indexing) ------------------------------------------------------------------


@pytest.mark.parametrize("end", ENDINGS)
def test_store_refuses_a_collection_name_with_a_control_character(index, tmp_path, end):
    with pytest.raises(InvalidInput) as e:
        index.ensure_collection("photos" + end, SCHEMA)
    assert e.value.field == "collection"
    with pytest.raises(InvalidInput):
        index.upsert("photos" + end, [new_item()], SCHEMA)
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith(".")) == []


@pytest.mark.parametrize("end", ENDINGS)
def test_embedded_store_refuses_such_a_folder_name_even_past_the_index(tmp_path, end):
    store = EdgeStore(str(tmp_path / "data"))
    try:
        with pytest.raises(InvalidInput):
            store.create_collection("photos" + end, SCHEMA)
    finally:
        store.close()


@pytest.mark.parametrize("end", ENDINGS)
def test_store_refuses_an_id_with_a_control_character(index, end):
    with pytest.raises(InvalidInput) as e:
        index.upsert("photos", [new_item("a-1" + end)], SCHEMA)
    assert e.value.field == "items[0].id"
    with pytest.raises(InvalidInput) as e:
        index.upsert("photos", [_with_parent("a-1" + end)], SCHEMA)
    assert e.value.field == "items[0].parent_id"


def _with_parent(parent_id: str) -> NewItem:
    item = new_item()
    item.parent_id = parent_id
    return item


@pytest.mark.parametrize("end", ENDINGS)
def test_store_refuses_a_metadata_key_with_a_control_character(index, end):
    with pytest.raises(InvalidInput, match="metadata key") as e:
        index.upsert("photos", [new_item(**{"colour" + end: "red"})], SCHEMA)
    assert e.value.field.startswith("items[0].metadata.")
    assert index.upsert("photos", [new_item(colour="red")], SCHEMA)[0][1]


@pytest.mark.parametrize("end", ENDINGS)
def test_store_refuses_a_vector_name_sha256_or_language_with_a_control_character(index, end):
    with pytest.raises(InvalidInput):
        check_vector_name("clip" + end, None)
    item = new_item()
    item.sha256 = "ab" * 32 + end
    with pytest.raises(InvalidInput) as e:
        index.upsert("photos", [item], SCHEMA)
    assert e.value.field == "items[0].sha256"
    item = new_item()
    item.language = "en" + end
    with pytest.raises(InvalidInput) as e:
        index.upsert("photos", [item], SCHEMA)
    assert e.value.field == "items[0].language"
