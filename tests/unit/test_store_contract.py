"""One contract, every backend: `Index` must behave the same over Edge and Qdrant.

Vectors are tiny (dim 8) and hand-made so expected orderings are obvious.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from encoders.common.errors import InvalidInput, ModelMismatch, NotFound
from encoders.text.keywords import SparseVector, keyword_vector, query_vector
from indexing.ids import content_key, point_id
from indexing.index import Index, NewItem
from indexing.types import CollectionSchema, Condition, KeywordsUnavailable, Modality, Range
from tests.unit.conftest import BACKENDS, Clock

DIM = 8
SCHEMA = CollectionSchema(vector_name="clip", dim=DIM, model_id="bundled:tiny-clip", model_version="v1")
COLL = "photos"


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
        text=f"text {num}" if modality is Modality.TEXT else None,
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


# -- keywords, hybrid search, recordings ----------------------------------------------------
#
# A second shared store per backend: text items that look alike to CLIP (one dense direction
# per group, tiny variations) but differ by an exact code, recordings with their segments,
# images without text, and a collection created before keyword vectors existed.

LEGACY = "legacy"
DOCS = "docs"
WINDOWS_CODES = [
    "0x80070005",
    "0x80070006",
    "0x80070015",
    "0x80070057",
    "0x80070002",
    "0x80070003",
    "0x8007000d",
    "0x80070020",
    "0x80070070",
    "0x80070422",
    "0x80070643",
    "0x80072efd",
]


def doc(
    num: int, public_id: str, text: str | None, vector: np.ndarray, /, *, modality=Modality.TEXT, **fields
) -> NewItem:
    meta = fields.pop("meta", {})
    keywords = fields.pop("keywords", keyword_vector(text) if text else None)
    return NewItem(
        public_id=public_id,
        sha256=sha(num),
        modality=modality,
        vector=vector,
        metadata=meta,
        text=text,
        keywords=keywords,
        **fields,
    )


def docs_items() -> list[NewItem]:
    items = [
        # Hybrid: "both" is near the query vector e0 *and* matches the keywords.
        doc(100, "dense-only", "sunset over the harbour", vec(1, 0)),
        doc(101, "both", "fan overheating, code QX-7731 on the display", vec(1, 0.3)),
        doc(102, "kw-only", "service manual entry QX-7731", vec(0.05, 0, 0, 0, 0, 0, 0, 1)),
        doc(103, "net", "Chrome shows ERR_CONNECTION_RESET on the login page", vec(0, 0, 0, 0, 0, 0, 1, 0.2)),
        doc(104, "cam", "Nikon Z6 II camera firmware v2.3.1 release notes", vec(0, 0, 0, 0, 0, 0, 1, 0.4)),
        doc(105, "img", None, vec(0, 0, 0, 0, 0, 0, 0.3, 1), modality=Modality.IMAGE, width=10, height=10),
    ]
    for i, code in enumerate(WINDOWS_CODES):  # near-identical to CLIP: one direction, tiny steps
        items.append(
            doc(
                200 + i,
                f"win-{code}",
                f"Windows Update failed with error {code}",
                vec(0, 0, 1, 0.01 * i),
                meta={"os": "win11" if i % 2 else "win10"},
            )
        )
    recordings = {
        "rec-en": (
            "en",
            [
                (0.0, 4.0, "Welcome to the support call."),
                (4.0, 10.5, "The printer shows error E-42 after the firmware update."),
                (10.5, 13.0, "Please restart the printer."),
            ],
        ),
        "rec-de": (
            "de",
            [(0.0, 5.0, "Der Drucker zeigt den Fehler E-42."), (5.0, 9.0, "Bitte den Drucker neu starten.")],
        ),
    }
    n = 300
    for r, (rec_id, (language, segments)) in enumerate(recordings.items()):
        full = " ".join(text for _, _, text in segments)
        items.append(
            doc(
                n,
                rec_id,
                full,
                vec(0, 0, 0, 0, 1, 0.1 * r),
                modality=Modality.AUDIO,
                language=language,
                duration_s=segments[-1][1],
            )
        )
        n += 1
        for s, (start, end, text) in enumerate(segments):
            items.append(
                doc(
                    n,
                    f"{rec_id}/{s}",
                    text,
                    vec(0, 0, 0, 0, 1, 0.1 * r, 0.05 * (s + 1)),
                    modality=Modality.AUDIO_SEGMENT,
                    parent_id=rec_id,
                    start_s=start,
                    end_s=end,
                    language=language,
                )
            )
            n += 1
    return items


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def docs(request, tmp_path_factory) -> Index:
    index = Index(BACKENDS[request.param](tmp_path_factory.mktemp("docs-" + request.param)), clock=Clock())
    index.upsert(DOCS, docs_items(), SCHEMA)
    index.upsert(LEGACY, [doc(1, "old", "error 0x80070005", vec(1))], DENSE_ONLY)
    yield index
    index.close()


DENSE_ONLY = dataclasses.replace(SCHEMA, keyword_vector=None)


def kw(index: Index, text: str, user_conditions=(), *, coll=DOCS, **kwargs) -> list[tuple[str, float]]:
    f = index.resolve_filter(coll, list(user_conditions)) if user_conditions else None
    hits = index.search(
        coll, None, limit=kwargs.pop("limit", 50), filter=f, mode="keyword", keyword_query=query_vector(text), **kwargs
    )
    return [(payload["id"], score) for payload, score in hits]


def kw_ids(index: Index, text: str, user_conditions=(), **kwargs) -> list[str]:
    return [i for i, _ in kw(index, text, user_conditions, **kwargs)]


def hybrid(index: Index, vector: np.ndarray, text: str, user_conditions=(), **kwargs) -> list[tuple[str, float]]:
    f = index.resolve_filter(DOCS, list(user_conditions)) if user_conditions else None
    hits = index.search(
        DOCS, vector, limit=kwargs.pop("limit", 50), filter=f, mode="hybrid", keyword_query=query_vector(text), **kwargs
    )
    return [(payload["id"], score) for payload, score in hits]


def test_keyword_search_finds_an_exact_code_among_lookalikes(docs: Index):
    assert kw_ids(docs, "0x80070005") == ["win-0x80070005"]
    assert kw_ids(docs, "80070005") == ["win-0x80070005"]  # hex digits alone
    assert kw_ids(docs, "error 0x80070057")[0] == "win-0x80070057"
    # CLIP alone cannot tell them apart: all lookalikes score about the same.
    dense = docs.search(DOCS, vec(0, 0, 1), limit=len(WINDOWS_CODES))
    assert {p["id"] for p, _ in dense} == {f"win-{c}" for c in WINDOWS_CODES}


@pytest.mark.parametrize(
    "query, expected_first",
    [
        ("ERR_CONNECTION_RESET", "net"),
        ("connection reset", "net"),  # parts of a code find it
        ("v2.3.1", "cam"),
        ("Z6", "cam"),
        ("QX-7731 overheating", "both"),
        ("qx-7731 OVERHEATING", "both"),  # case-insensitive
        ("QX-7731", "kw-only"),  # shorter text, higher BM25
    ],
)
def test_keyword_search_codes_and_parts(docs: Index, query: str, expected_first: str):
    assert kw_ids(docs, query)[0] == expected_first


def test_keyword_search_scores_and_threshold(docs: Index):
    hits = kw(docs, "windows update error 0x80070006")
    assert hits[0][0] == "win-0x80070006"
    # Any shared word makes a hit: the English printer recording and segment say "error" and "update".
    assert {i for i, _ in hits} == {f"win-{c}" for c in WINDOWS_CODES} | {"rec-en", "rec-en/1"}
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    # The threshold is on the keyword (BM25) score.
    between = (scores[0] + scores[1]) / 2
    assert kw_ids(docs, "windows update error 0x80070006", score_threshold=between) == ["win-0x80070006"]


def test_keyword_search_offset_and_exclude_ids(docs: Index):
    everything = kw_ids(docs, "windows")
    assert len(everything) == len(WINDOWS_CODES)
    assert kw_ids(docs, "windows", limit=4) + kw_ids(docs, "windows", limit=4, offset=4) == everything[:8]
    assert kw_ids(docs, "0x80070005 0x80070006", exclude_ids=["win-0x80070005"]) == ["win-0x80070006"]


def test_items_without_text_are_not_keyword_hits(docs: Index):
    assert "img" not in kw_ids(docs, "img")
    assert kw_ids(docs, "zebra") == []


def test_hybrid_ranks_an_item_matching_both_first(docs: Index):
    hits = hybrid(docs, vec(1, 0), "QX-7731 overheating")
    top = [i for i, _ in hits[:3]]
    assert top[0] == "both"
    assert set(top[1:]) == {"dense-only", "kw-only"}
    # Scores are RRF scores: 1/(60 + rank) per ranking, summed.
    assert hits[0][1] == pytest.approx(1 / 60 + 1 / 61, rel=1e-4)  # 2nd by CLIP, 1st by keywords
    assert dict(hits)["dense-only"] == pytest.approx(1 / 60, rel=1e-4)  # 1st by CLIP, no keyword
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)
    assert len(hits) == len(docs_items())  # the dense ranking reaches every item


def test_hybrid_threshold_applies_to_the_dense_ranking(docs: Index):
    # cos(e0, (1, 0.3)) = 0.958; everything else but "dense-only" is below 0.9. Keyword
    # matches enter regardless of their cosine ("kw-only" is at 0.05).
    hits = hybrid(docs, vec(1, 0), "QX-7731", score_threshold=0.9)
    assert {i for i, _ in hits} == {"dense-only", "both", "kw-only"}
    assert hits[0][0] == "both"


def test_hybrid_offset_pages(docs: Index):
    full = [i for i, _ in hybrid(docs, vec(1, 0), "QX-7731 overheating", limit=6)]
    page1 = [i for i, _ in hybrid(docs, vec(1, 0), "QX-7731 overheating", limit=3)]
    page2 = [i for i, _ in hybrid(docs, vec(1, 0), "QX-7731 overheating", limit=3, offset=3)]
    assert page1 + page2 == full


GERMAN = [Condition(key="language", equals="de")]


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_every_mode_filters_and_restricts_modalities(docs: Index, mode: str):
    def run(conditions=(), **kwargs) -> list[str]:
        f = docs.resolve_filter(DOCS, list(conditions)) if conditions else None
        hits = docs.search(
            DOCS,
            vec(0, 0, 0, 0, 1),
            limit=50,
            filter=f,
            mode=mode,
            keyword_query=query_vector("printer Drucker E-42"),
            **kwargs,
        )
        return [p["id"] for p, _ in hits]

    assert set(run(GERMAN)) == {"rec-de", "rec-de/0", "rec-de/1"}
    assert set(run(GERMAN, modalities=(Modality.AUDIO_SEGMENT,))) == {"rec-de/0", "rec-de/1"}
    assert set(run(modalities=(Modality.AUDIO,))) == {"rec-en", "rec-de"}
    assert set(run([Condition(key="parent_id", equals="rec-en")])) == (
        {"rec-en/1", "rec-en/2"} if mode == "keyword" else {"rec-en/0", "rec-en/1", "rec-en/2"}
    )
    assert set(run([Condition(key="start_s", range=Range(gte=4))], exclude_ids=["rec-de/1"])) == (
        {"rec-en/1", "rec-en/2"}
    )
    assert run(modalities=(Modality.IMAGE,)) == ([] if mode == "keyword" else ["img"])


def test_audio_payloads(docs: Index):
    segment = docs.get(DOCS, "rec-en/1")
    assert segment["modality"] == "audio_segment"
    assert (segment["parent_id"], segment["start_s"], segment["end_s"], segment["language"]) == (
        "rec-en",
        4.0,
        10.5,
        "en",
    )
    assert "duration_s" not in segment
    recording = docs.get(DOCS, "rec-en")
    assert (recording["modality"], recording["duration_s"], recording["language"]) == ("audio", 13.0, "en")
    assert "parent_id" not in recording and "start_s" not in recording
    assert "E-42" in recording["text"]
    assert "parent_id" not in docs.get(DOCS, "net")
    conditions = [Condition(key="duration_s", range=Range(gt=10)), Condition(key="language", any_of=("en", "fr"))]
    assert docs.count(DOCS, docs.resolve_filter(DOCS, conditions)) == 1


def test_unknown_mode_and_missing_queries(docs: Index):
    with pytest.raises(InvalidInput) as e:
        docs.search(DOCS, vec(1), limit=1, mode="semantic")
    assert e.value.field == "mode"
    assert all(m in e.value.reason for m in ("dense", "keyword", "hybrid", "semantic"))
    with pytest.raises(InvalidInput) as e:
        docs.search(DOCS, None, limit=1, mode="keyword")
    assert e.value.field == "keyword_query"
    with pytest.raises(InvalidInput) as e:
        docs.search(DOCS, None, limit=1, mode="hybrid", keyword_query=query_vector("x"))
    assert e.value.field == "vector"
    with pytest.raises(InvalidInput) as e:
        docs.search(DOCS, None, limit=1)  # dense is the default
    assert e.value.field == "vector"
    with pytest.raises(InvalidInput) as e:
        docs.search(DOCS, None, limit=1, mode="keyword", keyword_query=query_vector("?!"))
    assert e.value.field == "keyword_query"
    # In hybrid mode a query without words leaves the dense ranking alone.
    assert hybrid(docs, vec(1, 0), "?!")[0][0] == "dense-only"


def test_keyword_search_on_a_collection_without_keyword_vector(docs: Index):
    assert docs.schema(LEGACY).keyword_vector is None
    assert docs.schema(DOCS).keyword_vector == "keywords"
    assert ids(docs.search(LEGACY, vec(1), limit=5)) == ["old"]  # dense still works
    for mode in ("keyword", "hybrid"):
        with pytest.raises(KeywordsUnavailable) as e:
            docs.search(LEGACY, vec(1), limit=5, mode=mode, keyword_query=query_vector("0x80070005"))
        assert isinstance(e.value, ModelMismatch)  # FAILED_PRECONDITION for clients
        assert LEGACY in e.value.reason and "dense" in e.value.reason
    # The model check ignores the keyword vector: the service's schema still fits.
    docs.require_collection(LEGACY, SCHEMA)
    docs.ensure_collection(LEGACY, SCHEMA)


def test_invalid_audio_and_keyword_fields_are_rejected(docs: Index):
    bad = [
        doc(1, "a", "x", vec(1), keywords=SparseVector([1, 1], [1.0, 1.0])),
        doc(2, "b", "x", vec(1), keywords=SparseVector([1, 2], [1.0])),
        doc(3, "c", "x", vec(1), keywords=SparseVector([2**32], [1.0])),
        doc(4, "d", "x", vec(1), start_s=5.0, end_s=2.0),
        doc(5, "e", "x", vec(1), duration_s=-1.0),
        doc(6, "f", "x", vec(1), language="english please"),
        doc(7, "g", "x", vec(1), parent_id=""),
        doc(8, "h", "x", vec(1), start_s=float("nan")),
    ]
    with pytest.raises(InvalidInput) as e:
        docs.upsert(DOCS, bad, SCHEMA)
    fields = [p.field for p in e.value.problems]
    assert fields == [
        "items[0].keywords",
        "items[1].keywords",
        "items[2].keywords",
        "items[3].end_s",
        "items[4].duration_s",
        "items[5].language",
        "items[6].parent_id",
        "items[7].start_s",
    ]
    for condition in (Condition(key="language", range=Range(gte=1)), Condition(key="start_s", equals="x")):
        with pytest.raises(InvalidInput):
            docs.resolve_filter(DOCS, [condition])


def test_delete_children_and_cascade(reopen):
    index = reopen()
    index.upsert(DOCS, docs_items(), SCHEMA)
    total = len(docs_items())
    # Re-indexing changed content: drop the old segments, keep the recording.
    assert index.delete_children(DOCS, "rec-en") == 3
    assert index.get(DOCS, "rec-en")["id"] == "rec-en"
    assert index.count(DOCS) == total - 3
    assert index.delete_children(DOCS, "rec-en") == 0
    assert index.delete_children(DOCS, "nobody") == 0
    with pytest.raises(InvalidInput):
        index.delete_children(DOCS, "")
    new_segment = doc(
        900,
        "rec-en/0",
        "Changed words: toner cartridge",
        vec(0, 0, 0, 0, 1),
        modality=Modality.AUDIO_SEGMENT,
        parent_id="rec-en",
        start_s=0.0,
        end_s=3.0,
        language="en",
    )
    index.upsert(DOCS, [new_segment], SCHEMA)
    assert kw_ids(index, "toner") == ["rec-en/0"]
    assert kw_ids(index, "printer", modalities=(Modality.AUDIO_SEGMENT,)) == []
    # Deleting a recording deletes its segments, and counts them.
    assert index.delete_ids(DOCS, ["rec-de"]) == 3
    for gone in ("rec-de", "rec-de/0", "rec-de/1"):
        with pytest.raises(NotFound):
            index.get(DOCS, gone)
    # A segment named alongside its recording counts once.
    assert index.delete_ids(DOCS, ["rec-en/0", "rec-en"]) == 2
    assert index.count(DOCS) == total - 7
    assert index.count(DOCS, modalities=(Modality.AUDIO, Modality.AUDIO_SEGMENT)) == 0
    assert index.delete_ids(DOCS, ["net"]) == 1  # no children, nothing extra


def test_keywords_reupsert_and_persist(reopen):
    index = reopen()
    items = docs_items()
    index.upsert(DOCS, items, SCHEMA)
    index.upsert(LEGACY, [doc(1, "old", "error 0x80070005", vec(1))], DENSE_ONLY)
    first = kw(index, "0x80070005 windows update")
    # Re-upserting the same items changes nothing that search sees.
    assert {created for _, created in index.upsert(DOCS, items, SCHEMA)} == {False}
    assert index.count(DOCS) == len(items)
    again = kw(index, "0x80070005 windows update")
    # Equal scores are ordered by id, so even ties come back in the same order.
    assert again[0][0] == first[0][0] == "win-0x80070005"
    assert [i for i, _ in again] == [i for i, _ in first]
    assert dict(again) == pytest.approx(dict(first), rel=1e-5)
    stored = index.store.retrieve(DOCS, [point_id(DOCS, "net")], with_vectors=True)[0].keywords

    index = reopen()
    assert index.schema(DOCS).keyword_vector == "keywords"
    assert index.schema(LEGACY).keyword_vector is None
    after = kw(index, "0x80070005 windows update")
    assert [i for i, _ in after] == [i for i, _ in first]
    assert dict(after) == pytest.approx(dict(first), rel=1e-5)
    assert hybrid(index, vec(1, 0), "QX-7731 overheating")[0][0] == "both"
    reread = index.store.retrieve(DOCS, [point_id(DOCS, "net")], with_vectors=True)[0].keywords
    expected = keyword_vector("Chrome shows ERR_CONNECTION_RESET on the login page")
    assert reread.indices == stored.indices == expected.indices
    assert reread.values == pytest.approx(expected.values, rel=1e-6)
    with pytest.raises(KeywordsUnavailable):
        kw(index, "0x80070005", coll=LEGACY)

    # New content replaces the keywords; an item given without keywords loses them.
    index.upsert(
        DOCS, [doc(200, "win-0x80070005", "Windows Update failed with error 0x800f081f", vec(0, 0, 1))], SCHEMA
    )
    assert kw_ids(index, "0x80070005") == []
    assert kw_ids(index, "0x800f081f") == ["win-0x80070005"]
    index.upsert(DOCS, [dataclasses.replace(items[3], keywords=None)], SCHEMA)
    assert kw_ids(index, "ERR_CONNECTION_RESET") == []
    assert index.get(DOCS, "net")["text"].startswith("Chrome")
