"""One contract, every backend: `Index` must behave the same over Edge and Qdrant.

Vectors are tiny (dim 8) and hand-made so expected orderings are obvious.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from encoders.errors import InvalidInput, ModelMismatch, NotFound
from indexing.edge import EdgeStore
from indexing.ids import content_key
from indexing.index import Index, NewItem
from indexing.qdrant_server import QdrantStore
from indexing.types import CollectionSchema, Condition, Modality, Range

DIM = 8
SCHEMA = CollectionSchema(vector_name="clip", dim=DIM, model_id="bundled:tiny-clip", model_version="v1")
COLL = "photos"

BACKENDS = {
    "edge": lambda path: EdgeStore(str(path / "edge")),
    "qdrant-local": lambda path: QdrantStore(path=str(path / "qdrant")),
}


class Clock:
    """Deterministic time: each call is one second later."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1_700_000_000)

    def __call__(self) -> float:
        return float(next(self._ticks))


@pytest.fixture(params=sorted(BACKENDS))
def reopen(request, tmp_path):
    """Returns a function giving a fresh Index over the same data (closing the previous)."""
    opened: list[Index] = []

    def _open() -> Index:
        if opened:
            opened[-1].close()
        index = Index(BACKENDS[request.param](tmp_path), clock=Clock())
        opened.append(index)
        return index

    yield _open
    opened[-1].close()


@pytest.fixture
def index(reopen) -> Index:
    return reopen()


def vec(*components: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(components)] = components
    return v / np.linalg.norm(v)


def sha(n: int) -> str:
    return f"{n:064x}"


def item(num: int, vector: np.ndarray, /, *, public_id=None, modality=Modality.IMAGE, source=None, **meta) -> NewItem:
    return NewItem(
        public_id=public_id,
        sha256=sha(num),
        modality=modality,
        vector=vector,
        source=source,
        metadata=meta,
        text="text %d" % num if modality is Modality.TEXT else None,
        width=640 if modality is Modality.IMAGE else None,
        height=480 if modality is Modality.IMAGE else None,
    )


def load_five(index: Index) -> Index:
    """Five items at decreasing similarity to e0: a (1.0) > b > c > d > t (text)."""
    index.upsert(
        COLL,
        [
            item(1, vec(1, 0), public_id="a", source="s1", colour="red", n=1, ratio=0.5, hdr=True, tags=["x", "y"]),
            item(2, vec(1, 0.5), public_id="b", source="s2", colour="blue", n=2, ratio=1.5, hdr=False, tags=["y"]),
            item(3, vec(1, 1), public_id="c", source="s1", colour="red", n=3, ratio=2.5, hdr=False),
            item(4, vec(0.2, 1), public_id="d", source="s3", colour="green", n=4, ratio=3.5, hdr=True),
            item(5, vec(0, 1), public_id="t", modality=Modality.TEXT, source="s1", colour="red", n=5),
        ],
        SCHEMA,
    )
    return index


@pytest.fixture
def loaded(index: Index) -> Index:
    """The five items, in a store of this test's own (for tests that write)."""
    return load_five(index)


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def shared(request, tmp_path_factory) -> Index:
    """The five items, one store per backend for all read-only tests: creating an Edge
    collection costs ~0.5 s of fsyncs, too much to pay per filter case."""
    index = Index(BACKENDS[request.param](tmp_path_factory.mktemp(request.param)), clock=Clock())
    yield load_five(index)
    index.close()


def ids(hits) -> list[str]:
    return [payload["id"] for payload, _ in hits]


def search(index: Index, user_conditions=(), **kwargs) -> list[str]:
    f = index.resolve_filter(COLL, list(user_conditions)) if user_conditions else None
    return ids(index.search(COLL, vec(1, 0), limit=kwargs.pop("limit", 10), filter=f, **kwargs))


# -- upsert -------------------------------------------------------------------------------


def test_upsert_creates_points_with_full_payload(index: Index):
    items = [item(1, vec(1), source="s1", colour="red"), item(2, vec(0, 1), public_id="mine")]
    result = index.upsert(COLL, items, SCHEMA)
    assert result == [(content_key(sha(1)), True), ("mine", True)]
    assert index.count(COLL) == 2
    payload = index.get(COLL, content_key(sha(1)))
    assert payload["id"] == "sha256:" + sha(1)
    assert payload["modality"] == "image"
    assert payload["sha256"] == sha(1)
    assert payload["sources"] == ["s1"]
    assert payload["meta"] == {"colour": "red"}
    assert (payload["width"], payload["height"]) == (640, 480)
    assert (payload["model_id"], payload["model_version"]) == ("bundled:tiny-clip", "v1")
    assert payload["created_at"] == payload["updated_at"]


def test_reupsert_is_idempotent_and_merges(index: Index):
    index.upsert(COLL, [item(1, vec(1), source="s1", colour="red", n=1)], SCHEMA)
    first = index.get(COLL, content_key(sha(1)))
    result = index.upsert(COLL, [item(1, vec(1, 1), source="s2", n=2, shape="round")], SCHEMA)
    index.upsert(COLL, [item(1, vec(1, 1), source="s1")], SCHEMA)
    assert result == [(content_key(sha(1)), False)]
    assert index.count(COLL) == 1
    payload, vector = index.get_vector(COLL, content_key(sha(1)))
    assert payload["sources"] == ["s1", "s2"]
    assert payload["meta"] == {"colour": "red", "n": 2, "shape": "round"}
    assert payload["created_at"] == first["created_at"]
    assert payload["updated_at"] > first["updated_at"]
    np.testing.assert_allclose(vector, vec(1, 1), atol=1e-6)


def test_same_key_twice_in_one_batch_is_one_point(index: Index):
    result = index.upsert(COLL, [item(1, vec(1), source="s1"), item(1, vec(1), source="s2")], SCHEMA)
    assert result == [(content_key(sha(1)), True), (content_key(sha(1)), False)]
    assert index.count(COLL) == 1
    assert index.get(COLL, content_key(sha(1)))["sources"] == ["s1", "s2"]


def test_invalid_items_store_nothing(index: Index):
    bad_dim = item(2, np.ones(DIM + 1, dtype=np.float32))
    with pytest.raises(InvalidInput) as e:
        index.upsert(COLL, [item(1, vec(1)), bad_dim, item(3, vec(1), **{"a.b": 1})], SCHEMA)
    assert e.value.field == "items[1].vector"
    assert len(e.value.problems) == 2  # every bad item is reported, not just the first
    assert index.collections() == []  # not even the collection was created
    index.upsert(COLL, [item(1, vec(1))], SCHEMA)
    with pytest.raises(InvalidInput) as e:
        index.upsert(COLL, [item(2, vec(1), public_id="")], SCHEMA)
    assert e.value.field == "items[0].id"
    assert index.count(COLL) == 1


# -- search -------------------------------------------------------------------------------


def test_search_orders_by_similarity(shared: Index):
    hits = shared.search(COLL, vec(1, 0), limit=10)
    assert ids(hits) == ["a", "b", "c", "d", "t"]
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[-1] == pytest.approx(0.0, abs=1e-5)


def test_search_offset_pages(shared: Index):
    assert search(shared, limit=2) == ["a", "b"]
    assert search(shared, limit=2, offset=2) == ["c", "d"]
    assert search(shared, limit=2, offset=4) == ["t"]


def test_search_score_threshold(shared: Index):
    # cos(e0, (1,1)) = 0.707; cos(e0, (0.2,1)) = 0.196
    assert search(shared, score_threshold=0.7) == ["a", "b", "c"]


def test_search_modality_restriction(shared: Index):
    assert search(shared, modalities=(Modality.TEXT,)) == ["t"]
    assert search(shared, modalities=(Modality.IMAGE,)) == ["a", "b", "c", "d"]
    assert search(shared, modalities=(Modality.AUDIO_SEGMENT,)) == []


def test_search_excludes_ids(shared: Index):
    assert search(shared, exclude_ids=["a", "c"]) == ["b", "d", "t"]


@pytest.mark.parametrize(
    "condition, expected",
    [
        (Condition(key="colour", equals="red"), ["a", "c", "t"]),
        (Condition(key="meta.colour", equals="blue"), ["b"]),
        (Condition(key="n", equals=3), ["c"]),
        (Condition(key="n", equals=3.0), ["c"]),  # clients may send every number as a double
        (Condition(key="ratio", equals=1.5), ["b"]),
        (Condition(key="hdr", equals=True), ["a", "d"]),
        (Condition(key="hdr", equals=False), ["b", "c"]),
        (Condition(key="tags", equals="y"), ["a", "b"]),  # list field: any element matches
        (Condition(key="colour", any_of=("blue", "green")), ["b", "d"]),
        (Condition(key="n", any_of=(1, 4, 9)), ["a", "d"]),
        (Condition(key="n", range=Range(gte=2, lt=4)), ["b", "c"]),
        (Condition(key="ratio", range=Range(gt=0.5, lte=2.5)), ["b", "c"]),
        (Condition(key="source", equals="s1"), ["a", "c", "t"]),
        (Condition(key="source", any_of=("s2", "s3")), ["b", "d"]),
        (Condition(key="id", equals="b"), ["b"]),
        (Condition(key="sha256", equals=sha(4)), ["d"]),
        (Condition(key="model_id", equals="other"), []),
        (Condition(key="width", range=Range(gte=600)), ["a", "b", "c", "d"]),
    ],
)
def test_filter_kinds(shared: Index, condition: Condition, expected: list[str]):
    assert search(shared, [condition]) == expected


def test_filters_combine_with_and(shared: Index):
    conditions = [Condition(key="colour", equals="red"), Condition(key="n", range=Range(lte=3))]
    assert search(shared, conditions, modalities=(Modality.IMAGE,)) == ["a", "c"]


# -- filter validation --------------------------------------------------------------------


def test_unknown_filter_field_lists_known_fields(shared: Index):
    with pytest.raises(InvalidInput) as e:
        shared.resolve_filter(COLL, [Condition(key="colour", equals="red"), Condition(key="flavour", equals="x")])
    assert e.value.field == "filter.must[1].field"
    assert "flavour" in e.value.reason
    for known in ("colour", "ratio", "source", "sha256", "model_id"):
        assert known in e.value.reason


@pytest.mark.parametrize(
    "condition",
    [
        Condition(key="colour", range=Range(gte=1)),  # range on a string field
        Condition(key="source", range=Range(gte=1)),
        Condition(key="n", equals=[1, 2]),  # list given to equals
        Condition(key="colour", equals=3),  # wrong type
        Condition(key="hdr", any_of=(True,)),  # Qdrant sets hold strings or integers
        Condition(key="n", any_of=()),
        Condition(key="n", range=Range()),
        Condition(key="n"),  # nothing set
        Condition(key="n", equals=1, range=Range(gte=1)),  # two things set
    ],
)
def test_invalid_conditions_are_rejected(shared: Index, condition: Condition):
    with pytest.raises(InvalidInput) as e:
        shared.resolve_filter(COLL, [condition])
    assert e.value.field.startswith("filter.must[0]")


# -- get / delete / count -----------------------------------------------------------------


def test_get_and_get_missing(shared: Index):
    assert shared.get(COLL, "b")["meta"]["colour"] == "blue"
    payload, vector = shared.get_vector(COLL, "c")
    assert payload["id"] == "c"
    np.testing.assert_allclose(vector, vec(1, 1), atol=1e-6)
    with pytest.raises(NotFound) as e:
        shared.get(COLL, "nope")
    assert "nope" in e.value.reason


def test_delete_ids(loaded: Index):
    assert loaded.delete_ids(COLL, ["a", "b", "a"]) == 2
    assert loaded.count(COLL) == 3
    with pytest.raises(NotFound):
        loaded.get(COLL, "a")


def test_delete_missing_ids_deletes_nothing(loaded: Index):
    with pytest.raises(NotFound) as e:
        loaded.delete_ids(COLL, ["a", "ghost", "b", "phantom"])
    assert "ghost" in e.value.reason and "phantom" in e.value.reason
    assert loaded.count(COLL) == 5
    assert loaded.get(COLL, "a")["id"] == "a"


def test_delete_where(loaded: Index):
    f = loaded.resolve_filter(COLL, [Condition(key="colour", equals="red")])
    assert loaded.delete_where(COLL, f) == 3
    assert loaded.count(COLL) == 2
    assert loaded.delete_where(COLL, f) == 0
    with pytest.raises(InvalidInput):
        loaded.delete_where(COLL, loaded.resolve_filter(COLL, []))


def test_count_with_filter_and_modalities(shared: Index):
    red = shared.resolve_filter(COLL, [Condition(key="colour", equals="red")])
    assert shared.count(COLL, red) == 3
    assert shared.count(COLL, red, modalities=(Modality.IMAGE,)) == 2
    assert shared.count(COLL, modalities=(Modality.TEXT,)) == 1


# -- collections --------------------------------------------------------------------------


def test_model_mismatch(shared: Index):
    other = CollectionSchema(vector_name="clip", dim=DIM, model_id="open_clip:ViT-B-32", model_version="v9")
    for call in (shared.ensure_collection, shared.require_collection):
        with pytest.raises(ModelMismatch) as e:
            call(COLL, other)
        assert "bundled:tiny-clip" in e.value.reason and "open_clip:ViT-B-32" in e.value.reason
        assert "re-index" in e.value.reason
    with pytest.raises(ModelMismatch):
        shared.upsert(COLL, [item(9, np.ones(16, np.float32))], CollectionSchema("clip", 16, SCHEMA.model_id, "v1"))
    with pytest.raises(ModelMismatch):
        shared.ensure_collection(COLL, CollectionSchema("clip", DIM, SCHEMA.model_id, "v2"))


def test_require_missing_collection_lists_existing(shared: Index):
    with pytest.raises(NotFound) as e:
        shared.require_collection("elsewhere", SCHEMA)
    assert "elsewhere" in e.value.reason and COLL in e.value.reason
    with pytest.raises(NotFound):
        shared.search("elsewhere", vec(1), limit=1)


def test_collections_listing(loaded: Index):
    other = CollectionSchema(vector_name="clip", dim=4, model_id="m2", model_version="x")
    loaded.ensure_collection("empty", other)
    assert loaded.collections() == [("empty", other, 0), (COLL, SCHEMA, 5)]


def test_bad_collection_name(index: Index):
    with pytest.raises(InvalidInput):
        index.ensure_collection("../escape", SCHEMA)


def test_persists_across_reopen(loaded: Index, reopen):
    created = loaded.get(COLL, "a")["created_at"]
    index = reopen()
    assert index.collections() == [(COLL, SCHEMA, 5)]
    index.require_collection(COLL, SCHEMA)
    assert index.get(COLL, "a")["created_at"] == created
    # Metadata field types survive too: filters on them still resolve.
    assert search(index, [Condition(key="ratio", range=Range(gte=2))]) == ["c", "d"]
    assert search(index, [Condition(key="hdr", equals=True)]) == ["a", "d"]
    with pytest.raises(ModelMismatch):
        index.require_collection(COLL, CollectionSchema("clip", DIM, "other", "v1"))
    index.upsert(COLL, [item(1, vec(1, 0), public_id="a", source="s9")], SCHEMA)
    assert index.count(COLL) == 5
    assert index.get(COLL, "a")["sources"] == ["s1", "s9"]
