"""The backends agree: the same generated items and queries give the same ids and scores.

The contract suite checks each backend against hand-made expectations; this one compares
them with each other on data no one hand-made (seeded random vectors, metadata and texts),
so a difference in ranking, filtering, paging or scoring between them shows up here.
"""

from __future__ import annotations

import numpy as np
import pytest

from encoders.text.keywords import keyword_vector, query_vector
from indexing.index import Index, NewItem
from indexing.query import SearchQuery
from indexing.types import CollectionSchema, Condition, Modality, Range
from tests.unit.conftest import BACKENDS, NO_SERVER, QDRANT_URL, Clock

DIM = 16
N = 120
SCHEMA = CollectionSchema(vector_name="clip", dim=DIM, model_id="test", model_version="v1")
COLL = "gen"
WORDS = (
    "printer tray error paper jam toner router wifi password invoice refund delivery late blue red cable "
    "screen battery charger laptop phone tablet account login reset update firmware driver scanner copier "
    "order parcel courier address billing payment card receipt warranty repair"
).split()
COLOURS = ("red", "green", "blue")


def generated() -> list[NewItem]:
    rng = np.random.default_rng(20261202)
    out = []
    for i in range(N):
        v = rng.normal(size=DIM).astype(np.float32)
        # A length of its own per text: BM25 scores then rarely tie (tied hits are ordered
        # by each backend its own way, which changes their ranks in a hybrid fusion).
        text = " ".join(rng.choice(WORDS, size=3 + i)) if i % 3 else None
        modality = Modality.TEXT if text and i % 2 else Modality.IMAGE
        out.append(
            NewItem(
                public_id=f"item-{i}",
                sha256=f"{i:064x}",
                modality=modality,
                vector=v / np.linalg.norm(v),
                source=f"s{i % 7}",
                text=text,
                keywords=keyword_vector(text) if text else None,
                metadata={"colour": COLOURS[i % 3], "n": int(i), "price": float(rng.uniform(0, 100))},
                width=64 if modality is Modality.IMAGE else None,
                height=64 if modality is Modality.IMAGE else None,
            )
        )
    return out


def queries() -> list[SearchQuery]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(12):
        v = rng.normal(size=DIM).astype(np.float32)
        words = " ".join(rng.choice(WORDS, size=2))
        base = SearchQuery(collection=COLL, vector=v / np.linalg.norm(v), keywords=query_vector(words), limit=10)
        out += [
            base,
            SearchQuery(**{**base.__dict__, "mode": "keyword"}),
            SearchQuery(**{**base.__dict__, "mode": "hybrid"}),
            SearchQuery(**{**base.__dict__, "offset": 5, "limit": 7}),
            SearchQuery(**{**base.__dict__, "modalities": (Modality.TEXT,)}),
            SearchQuery(**{**base.__dict__, "conditions": (Condition(key="colour", equals=COLOURS[i % 3]),)}),
            SearchQuery(
                **{
                    **base.__dict__,
                    "conditions": (Condition(key="price", range=Range(gte=20.0, lt=60.0)),),
                    "mode": "hybrid",
                }
            ),
            SearchQuery(**{**base.__dict__, "score_threshold": 0.2}),
            SearchQuery(**{**base.__dict__, "like_id": f"item-{i * 7}"}),
        ]
    return out


def same_ranking(got: list[tuple[dict, float]], expected: list[tuple[dict, float]]) -> bool:
    """The same ids in the same order, except that hits with equal scores may come in any
    order (and a tie cut by the limit may hold other ids)."""
    if len(got) != len(expected):
        return False

    def groups(hits):
        out: list[tuple[float, set]] = []
        for payload, score in hits:
            if out and abs(out[-1][0] - score) <= 1e-6:
                out[-1][1].add(payload["id"])
            else:
                out.append((score, {payload["id"]}))
        return out

    a, b = groups(got), groups(expected)
    return len(a) == len(b) and all(x[1] == y[1] for x, y in zip(a[:-1], b[:-1]))


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict[str, Index]:
    out = {}
    for name, make in sorted(BACKENDS.items()):
        index = Index(make(tmp_path_factory.mktemp("cong-" + name)), clock=Clock())
        index.ensure_collection(COLL, SCHEMA)
        index.upsert(COLL, generated(), SCHEMA)
        out[name] = index
    yield out
    for index in out.values():
        index.close()


def test_every_backend_agrees_with_the_embedded_one(indexes) -> None:
    assert len(indexes) >= 2
    reference = indexes["edge"]
    compared = 0
    for query in queries():
        expected = reference.run_query(query, vector_name="clip")
        for name, index in indexes.items():
            got = index.run_query(query, vector_name="clip")
            where = f"{name} vs edge on {query!r}"
            np.testing.assert_allclose(
                [s for _, s in got], [s for _, s in expected], rtol=1e-4, atol=1e-5, err_msg=where
            )
            assert same_ranking(got, expected), where
            compared += 1
    assert compared >= 100


def test_counts_and_items_agree(indexes) -> None:
    reference = indexes["edge"]
    red = reference.resolve_filter(COLL, (Condition(key="colour", equals="red"),))
    for index in indexes.values():
        assert index.count(COLL) == reference.count(COLL) == N
        assert index.count(
            COLL, index.resolve_filter(COLL, (Condition(key="colour", equals="red"),))
        ) == reference.count(COLL, red)
        assert index.count(COLL, None, (Modality.TEXT,)) == reference.count(COLL, None, (Modality.TEXT,))
        for i in (0, 1, 59, 119):
            got, want = index.get(COLL, f"item-{i}"), reference.get(COLL, f"item-{i}")
            assert got == want, f"item-{i}"


@pytest.mark.skipif(not QDRANT_URL, reason=NO_SERVER)
def test_a_real_server_is_among_the_backends() -> None:
    assert "qdrant-server" in BACKENDS
