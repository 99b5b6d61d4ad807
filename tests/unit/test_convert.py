import pytest
from google.protobuf import struct_pb2

from encoders.common.errors import InvalidInput
from indexing.types import Condition, Modality, Range
from protos.loupe.v1 import common_pb2
from services.client.sdk import build_filter
from services.config import RequestLimits
from services.rpc import convert


def test_where_dict_round_trips_to_conditions():
    flt = build_filter({"colour": "red", "tags": ["a", "b"], "price": {"gte": 1, "lt": 5.5}, "sale": True})
    assert convert.conditions(flt) == (
        Condition(key="colour", equals="red"),
        Condition(key="tags", any_of=("a", "b")),
        Condition(key="price", range=Range(gte=1.0, lt=5.5)),
        Condition(key="sale", equals=True),
    )


@pytest.mark.parametrize(
    "cond, words",
    [
        (common_pb2.FieldCondition(field="x"), "has no match"),
        (common_pb2.FieldCondition(equals=struct_pb2.Value(string_value="a")), "no field name"),
        (common_pb2.FieldCondition(field="x", range=common_pb2.Range()), "no bounds"),
        (common_pb2.FieldCondition(field="x", range=common_pb2.Range(gte=5, lt=1)), "is empty"),
        (common_pb2.FieldCondition(field="x", any_of=common_pb2.ValueList()), "at least one value"),
        (common_pb2.FieldCondition(field="x", equals=struct_pb2.Value(null_value=0)), "must be a string"),
    ],
)
def test_malformed_filters_are_rejected(cond, words):
    with pytest.raises(InvalidInput, match=words) as info:
        convert.conditions(common_pb2.Filter(must=[cond]))
    assert info.value.field.startswith("filter.must[0]")


def test_metadata_keeps_whole_numbers_as_ints_and_rejects_nesting():
    s = struct_pb2.Struct()
    s.update({"n": 3, "x": 1.5, "tags": ["a", 2], "ok": True})
    assert convert.metadata(s, RequestLimits(), "m") == {"n": 3, "x": 1.5, "tags": ["a", 2], "ok": True}
    nested = struct_pb2.Struct()
    nested.update({"deep": {"a": 1}})
    with pytest.raises(InvalidInput, match="flat lists"):
        convert.metadata(nested, RequestLimits(), "m")
    bad_key = struct_pb2.Struct()
    bad_key.update({"has space": 1})
    with pytest.raises(InvalidInput, match="metadata key"):
        convert.metadata(bad_key, RequestLimits(), "m")


def test_collection_names_and_ids():
    assert convert.collection_name("") == "default"
    with pytest.raises(InvalidInput):
        convert.collection_name("../etc")
    assert convert.caller_id("", "id") is None
    with pytest.raises(InvalidInput, match="reserved"):
        convert.caller_id("sha256:abc", "id")


def test_modalities():
    assert convert.modalities([common_pb2.MODALITY_TEXT, common_pb2.MODALITY_TEXT], "m") == (Modality.TEXT,)
    with pytest.raises(InvalidInput):
        convert.modalities([common_pb2.MODALITY_UNSPECIFIED], "m")
