"""Re-embedding a collection for a new model: a second named vector filled next to the one
that keeps serving, then switched to. One contract, every backend (as in
test_store_contract), plus the services on either model.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from encoders.common.errors import InvalidInput, ModelMismatch, NotFound, VectorStateConflict
from encoders.text.keywords import keyword_vector, query_vector
from indexing.ids import point_id
from indexing.index import Index, NewItem
from indexing.types import CollectionSchema, Condition, Modality, VectorSpec
from services.rpc.errors import to_status

COLL = "shots"
OLD = CollectionSchema(vector_name="clip", dim=8, model_id="old-model", model_version="v1")
NEW = CollectionSchema(vector_name="clip_v2", dim=4, model_id="new-model", model_version="v2")
# How a service configured with the new model names its vector: not how the collection does.
NEW_AS_CLIP = CollectionSchema(vector_name="clip", dim=4, model_id="new-model", model_version="v2")


@pytest.fixture
def index(reopen) -> Index:
    """a, b, c indexed by the old model (query e0 ranks them a > b > c), plus the new
    model's empty vector."""
    index = reopen()
    index.upsert(COLL, [item("a", vec(8, 1, 0)), item("b", vec(8, 1, 1)), item("c", vec(8, 0, 1))], OLD)
    index.add_vector(COLL, NEW)
    return index


def vec(dim: int, *components: float) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(components)] = components
    return v / np.linalg.norm(v)


def item(public_id: str, vector: np.ndarray, *, source: str | None = None, text: str | None = None, **meta) -> NewItem:
    return NewItem(
        public_id=public_id,
        sha256=f"{ord(public_id[0]):064x}",
        modality=Modality.TEXT if text else Modality.IMAGE,
        vector=vector,
        source=source,
        metadata=meta,
        text=text,
        keywords=keyword_vector(text) if text else None,
    )


def ids(hits) -> list[str]:
    return [payload["id"] for payload, _ in hits]


def fill_new(index: Index, *public_ids: str) -> None:
    """The new model ranks the items the other way round: c > b > a for query e0."""
    vectors = {"a": vec(4, 0, 1), "b": vec(4, 1, 1), "c": vec(4, 1, 0), "d": vec(4, 1, 0.5)}
    index.upsert(COLL, [item(i, vectors[i]) for i in public_ids], NEW_AS_CLIP)


# -- adding and searching ---------------------------------------------------------------------


def test_added_vector_is_incomplete_and_adding_again_changes_nothing(index: Index):
    old, new = VectorSpec.of(OLD, complete=True), VectorSpec.of(NEW, complete=False)
    assert index.vectors(COLL) == [old, new]
    assert index.add_vector(COLL, NEW) == new
    assert index.vectors(COLL) == [old, new]
    assert index.schema(COLL) == OLD  # the active vector is unchanged
    assert index.schema_for(COLL, NEW_AS_CLIP) == NEW
    assert index.schema_for(COLL, OLD) == OLD
    index.require_collection(COLL, NEW_AS_CLIP)
    index.ensure_collection(COLL, NEW_AS_CLIP)


def test_new_vector_is_searched_while_the_old_keeps_its_results(index: Index):
    fill_new(index, "a", "b")
    assert ids(index.search(COLL, vec(8, 1, 0), limit=10)) == ["a", "b", "c"]
    # Only points already filled are found through the new vector.
    assert ids(index.search(COLL, vec(4, 1, 0), limit=10, vector_name="clip_v2")) == ["b", "a"]
    with pytest.raises(InvalidInput):
        index.search(COLL, vec(8, 1, 0), limit=10, vector_name="clip_v2")  # the old model's width
    with pytest.raises(NotFound):
        index.search(COLL, vec(4, 1, 0), limit=10, vector_name="nope")


def test_writes_keep_the_other_vector(index: Index):
    fill_new(index, "a")
    index.upsert(COLL, [item("a", vec(8, 0, 0, 1), source="old-service")], OLD)
    payload, new_vector = index.get_vector(COLL, "a", "clip_v2")
    np.testing.assert_allclose(new_vector, vec(4, 0, 1), atol=1e-6)
    assert payload["vectors"] == {"clip": "v1", "clip_v2": "v2"}
    assert (payload["model_id"], payload["model_version"]) == ("old-model", "v1")  # the latest write's

    fill_new(index, "a")
    payload, old_vector = index.get_vector(COLL, "a")
    np.testing.assert_allclose(old_vector, vec(8, 0, 0, 1), atol=1e-6)
    assert payload["vectors"] == {"clip": "v1", "clip_v2": "v2"}
    assert (payload["model_id"], payload["model_version"]) == ("new-model", "v2")
    assert payload["sources"] == ["old-service"]


def test_keywords_and_hybrid_search_work_on_either_vector(index: Index):
    index.upsert(COLL, [item("t", vec(8, 1, 0), text="printer error e42")], OLD)
    index.upsert(COLL, [item("t", vec(4, 1, 0), text="printer error e42")], NEW_AS_CLIP)
    query = query_vector("e42")
    assert ids(index.search(COLL, None, limit=5, mode="keyword", keyword_query=query)) == ["t"]
    for vector, name in ((vec(8, 1, 0), None), (vec(4, 1, 0), "clip_v2")):
        hits = index.search(COLL, vector, limit=1, mode="hybrid", keyword_query=query, vector_name=name)
        assert ids(hits) == ["t"]


# -- what a batch job asks -----------------------------------------------------------------------


def test_encoded_lists_only_items_with_a_vector_from_that_version(index: Index):
    keys = ["a", "b", "c", "unknown"]
    assert index.encoded(COLL, keys, NEW_AS_CLIP) == {}
    assert set(index.encoded(COLL, keys, OLD)) == {"a", "b", "c"}
    assert set(index.existing(COLL, keys)) == {"a", "b", "c"}
    fill_new(index, "a")
    assert set(index.encoded(COLL, keys, NEW)) == {"a"}
    assert index.encoded(COLL, [], NEW) == {}
    with pytest.raises(ModelMismatch):
        index.encoded(COLL, keys, CollectionSchema("clip", 4, "new-model", "v3"))
    with pytest.raises(InvalidInput):
        index.existing(COLL, "a")  # a string, not a list of keys
    # Dropped and added again under the same name: the `vectors` entry of "a" outlives its
    # vector, which is gone.
    index.drop_vector(COLL, "clip_v2")
    index.add_vector(COLL, NEW)
    assert index.get(COLL, "a")["vectors"]["clip_v2"] == "v2"
    assert index.encoded(COLL, keys, NEW) == {}


def test_points_from_before_the_vectors_map_count_as_built_by_their_model(index: Index):
    store, pid = index.store, point_id(COLL, "a")
    legacy = {k: v for k, v in index.get(COLL, "a").items() if k != "vectors"}
    store.overwrite_payloads(COLL, {pid: legacy})
    assert set(index.encoded(COLL, ["a"], OLD)) == {"a"}
    assert index.encoded(COLL, ["a"], NEW) == {}
    fill_new(index, "a")
    assert index.get(COLL, "a")["vectors"] == {"clip": "v1", "clip_v2": "v2"}


def test_merge_payloads_unions_sources_and_merges_metadata(index: Index):
    first = index.get(COLL, "a")
    assert index.merge_payload(COLL, "a", "s1", {"colour": "red", "n": 1}) is True
    payload = index.get(COLL, "a")
    assert payload["sources"] == ["s1"] and payload["meta"] == {"colour": "red", "n": 1}
    assert payload["updated_at"] > first["updated_at"] and payload["created_at"] == first["created_at"]
    assert payload["vectors"] == first["vectors"]
    assert index.merge_payload(COLL, "a", "s1", {"colour": "red"}) is False
    assert index.get(COLL, "a")["updated_at"] == payload["updated_at"]  # nothing written
    # 1.0 and True are other values than 1 to a filter.
    results = index.merge_payloads(
        COLL, [("a", "s1", {"n": 1.0}), ("b", None, {}), ("b", "s2", {"tags": ("x", "y")}), ("b", "s2", {})]
    )
    assert results == [True, False, True, False]
    assert index.get(COLL, "a")["meta"]["n"] == 1.0
    assert index.get(COLL, "b")["meta"] == {"tags": ["x", "y"]}
    # Field types are recorded, so filters may name the new fields.
    assert index.count(COLL, index.resolve_filter(COLL, [Condition(key="tags", equals="x")])) == 1
    _, vector = index.get_vector(COLL, "a")
    np.testing.assert_allclose(vector, vec(8, 1, 0), atol=1e-6)


def test_merge_payloads_writes_nothing_if_a_key_is_missing_or_an_update_is_bad(index: Index):
    with pytest.raises(NotFound) as e:
        index.merge_payloads(COLL, [("a", "s1", {}), ("nope", "s1", {})])
    assert "nope" in e.value.reason
    with pytest.raises(InvalidInput):
        index.merge_payloads(COLL, [("a", "s1", {}), ("b", None, {"a.b": 1})])
    assert index.get(COLL, "a")["sources"] == []
    with pytest.raises(NotFound):
        index.merge_payload(COLL, "nope", None, {})


def test_missing_vector_pages_through_points_without_it(index: Index):
    index.upsert(COLL, [item("d", vec(8, 1)), item("e", vec(8, 1))], OLD)
    fill_new(index, "a", "b")
    assert index.count_missing_vector(COLL, "clip_v2") == 3
    assert index.count_missing_vector(COLL, "clip") == 0
    payloads, cursor = index.missing_vector(COLL, "clip_v2", 2)
    assert len(payloads) == 2 and cursor is not None
    seen = [p["id"] for p in payloads]
    # Filling a page's items while paging skips nothing.
    fill_new(index, *(i for i in seen if i != "e"))
    payloads, cursor = index.missing_vector(COLL, "clip_v2", 2, after=cursor)
    seen += [p["id"] for p in payloads]
    while cursor is not None:
        payloads, cursor = index.missing_vector(COLL, "clip_v2", 2, after=cursor)
        seen += [p["id"] for p in payloads]
    assert sorted(seen) == ["c", "d", "e"]
    with pytest.raises(InvalidInput):
        index.missing_vector(COLL, "clip_v2", 2, after="page-2")
    with pytest.raises(InvalidInput):
        index.missing_vector(COLL, "clip_v2", 0)


# -- completing, switching, dropping -------------------------------------------------------------


def test_mark_complete_and_switch_are_refused_while_points_lack_the_vector(index: Index):
    fill_new(index, "a", "b")
    with pytest.raises(VectorStateConflict, match="1 point"):
        index.mark_complete(COLL, "clip_v2")
    with pytest.raises(VectorStateConflict):
        index.switch_vector(COLL, "clip_v2")
    assert index.schema(COLL) == OLD
    assert to_status(VectorStateConflict("x")).code == grpc.StatusCode.FAILED_PRECONDITION


def test_switch_makes_the_new_vector_active_and_both_models_keep_working(index: Index):
    fill_new(index, "a", "b", "c")
    index.mark_complete(COLL, "clip_v2")
    index.switch_vector(COLL, "clip_v2")
    assert index.schema(COLL) == NEW
    assert index.vectors(COLL) == [VectorSpec.of(NEW, complete=True), VectorSpec.of(OLD, complete=True)]
    assert [c[:2] for c in index.collections()] == [(COLL, NEW)]
    assert ids(index.search(COLL, vec(4, 1, 0), limit=10)) == ["c", "b", "a"]
    assert index.schema_for(COLL, OLD) == OLD
    assert ids(index.search(COLL, vec(8, 1, 0), limit=10, vector_name="clip")) == ["a", "b", "c"]
    index.switch_vector(COLL, "clip_v2")  # already active: nothing to do
    # An item created by the new model's service lacks the old vector: it is no longer complete.
    fill_new(index, "d")
    assert index.vectors(COLL)[1] == VectorSpec.of(OLD, complete=False)
    with pytest.raises(VectorStateConflict):
        index.switch_vector(COLL, "clip")


def test_drop_vector_removes_it_but_never_the_active_one(index: Index):
    fill_new(index, "a")
    with pytest.raises(VectorStateConflict, match="active"):
        index.drop_vector(COLL, "clip")
    index.drop_vector(COLL, "clip_v2")
    assert index.vectors(COLL) == [VectorSpec.of(OLD, complete=True)]
    with pytest.raises(ModelMismatch):
        index.schema_for(COLL, NEW_AS_CLIP)
    with pytest.raises(NotFound):
        index.search(COLL, vec(4, 1), limit=1, vector_name="clip_v2")
    with pytest.raises(NotFound):
        index.drop_vector(COLL, "clip_v2")
    assert ids(index.search(COLL, vec(8, 1, 0), limit=10)) == ["a", "b", "c"]
    # The name is free again, for any model; nothing of the dropped vector comes back.
    index.add_vector(COLL, CollectionSchema("clip_v2", 6, "third-model", "v1"))
    assert index.count_missing_vector(COLL, "clip_v2") == 3


def test_registry_and_vectors_survive_reopening(index: Index, reopen):
    fill_new(index, "a", "b", "c")
    index.mark_complete(COLL, "clip_v2")
    index.switch_vector(COLL, "clip_v2")
    vectors = index.vectors(COLL)
    index = reopen()
    assert index.vectors(COLL) == vectors
    assert index.schema(COLL) == NEW
    assert ids(index.search(COLL, vec(4, 1, 0), limit=10)) == ["c", "b", "a"]
    _, old = index.get_vector(COLL, "a", "clip")
    np.testing.assert_allclose(old, vec(8, 1, 0), atol=1e-6)
    index.add_vector(COLL, CollectionSchema("clip_v3", 4, "model-3", "v1"))
    index = reopen()
    assert [v.vector_name for v in index.vectors(COLL)] == ["clip_v2", "clip", "clip_v3"]
    index.upsert(COLL, [item("a", vec(4, 1, 0))], CollectionSchema("x", 4, "model-3", "v1"))
    _, third = index.get_vector(COLL, "a", "clip_v3")
    np.testing.assert_allclose(third, vec(4, 1, 0), atol=1e-6)


# -- errors -------------------------------------------------------------------------------------


def test_bad_vector_names_and_conflicting_models_are_refused(index: Index):
    for bad in ("keywords", "../x", "", ".hidden"):
        with pytest.raises(InvalidInput):
            index.add_vector(COLL, CollectionSchema(bad, 4, "m", "1"))
    with pytest.raises(ModelMismatch) as e:
        index.add_vector(COLL, CollectionSchema("clip_v2", 4, "new-model", "v3"))
    assert e.value.field == "vector_name"
    with pytest.raises(VectorStateConflict):
        index.add_vector(COLL, CollectionSchema("clip_again", 8, "old-model", "v1"))
    with pytest.raises(NotFound):
        index.add_vector("elsewhere", NEW)
    for call in (index.mark_complete, index.switch_vector, index.drop_vector, index.count_missing_vector):
        with pytest.raises(NotFound):
            call(COLL, "nope")
    with pytest.raises(ModelMismatch) as e:
        index.require_collection(COLL, CollectionSchema("clip", 8, "third-model", "v1"))
    for part in ("'clip'", "'clip_v2'", "old-model", "new-model", "third-model", "re-index"):
        assert part in e.value.reason
    with pytest.raises(InvalidInput):
        index.upsert(COLL, [item("a", vec(8, 1))], NEW_AS_CLIP)  # a vector of the wrong width
    assert index.vectors(COLL)[1] == VectorSpec.of(NEW, complete=False)


# -- services on either model -------------------------------------------------------------------


def test_a_service_on_the_new_model_uses_its_own_vector(tmp_path):
    from protos.loupe.v1 import index_pb2, search_pb2
    from services.config import load_settings
    from services.rpc.api import LoupeApi
    from services.serve.workers import EncoderWorker, IndexWorker, ThreadCalls

    settings = load_settings(
        {"profile": "bundled", "data_dir": str(tmp_path), "optimize_after_points": 0, "ocr": {"mode": "never"}}
    )
    encoder, worker = EncoderWorker(settings), None
    try:
        worker = IndexWorker(settings)
        api = LoupeApi(settings, ThreadCalls(encoder), ThreadCalls(worker))
        mine = asyncio.run(api.info()).schema()
        old = CollectionSchema("clip", mine.dim, "open_clip:retired", "1")
        # Built by another model, whose vector the store still calls "clip"; ours is added.
        worker.index.upsert("docs", [item("x", vec(mine.dim, 1))], old)
        worker.index.add_vector("docs", CollectionSchema("clip_next", mine.dim, mine.model_id, mine.model_version))
        texts = [index_pb2.TextItem(id="x", text="a red circle")]
        asyncio.run(api.index_texts(index_pb2.IndexTextsRequest(collection="docs", items=texts)))
        payload = worker.index.get("docs", "x")
        assert payload["vectors"] == {"clip": "1", "clip_next": mine.model_version}
        options = search_pb2.SearchOptions(collection="docs")
        hits = asyncio.run(api.search_text(search_pb2.SearchTextRequest(query="a red circle", options=options)))
        assert [h.item.id for h in hits.hits] == ["x"] and hits.hits[0].score > 0.5
        _, by_id = worker.vector_of("docs", mine, "x")
        np.testing.assert_array_equal(by_id, worker.index.get_vector("docs", "x", "clip_next")[1])
        worker.check_model("docs", mine)
        with pytest.raises(ModelMismatch, match="'clip_next'"):
            worker.check_model("docs", CollectionSchema("clip", mine.dim, "open_clip:unknown", "1"))
    finally:
        if worker is not None:
            worker.close()
