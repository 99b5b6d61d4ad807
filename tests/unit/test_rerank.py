"""The rerank stage: HTTP rerank servers (scripted, on 127.0.0.1), the in-process
cross-encoder (a tiny one trained by the fixture), MMR, and config errors."""

from __future__ import annotations

import math
from urllib.parse import urlsplit

import numpy as np
import pytest

from encoders.common.errors import InvalidInput
from indexing.diversity import mmr
from indexing.rerank import (
    CrossEncoderReranker,
    HttpReranker,
    RerankConfig,
    RerankConfigError,
    Reranked,
    RerankFailed,
    make_reranker,
    rerank,
)
from tests.fixtures.rerank_server import ScriptedRerankServer
from tests.fixtures.tiny_cross_encoder import build_tiny_cross_encoder, copy_without_onnx

QUERY = "red car"
# First-stage order: the best match for the query is third, and hit 1 is an uncaptioned image.
TEXTS = ["a blue boat on a lake", None, "a red car on the road", "", "a car", "a lion"]


@pytest.fixture(scope="module")
def server():
    with ScriptedRerankServer() as s:
        yield s


@pytest.fixture
def scripted(server):
    server.behaviour, server.shape, server.delay_s = "good", "cohere", 1.0
    server.requests.clear()
    return server


def http_config(server, **overrides) -> RerankConfig:
    return RerankConfig(**{"kind": "http", "url": server.url, "model": "tiny-rerank", "timeout_s": 1.0, **overrides})


def run(server, texts=TEXTS, query=QUERY, **overrides) -> Reranked:
    config = http_config(server, **overrides)
    return rerank(make_reranker(config), query, texts, config)


# -- HTTP ------------------------------------------------------------------------------------
@pytest.mark.parametrize("api", ["cohere", "tei"])
@pytest.mark.parametrize("shape", ["cohere", "tei"])
def test_http_reorders_hits_with_text_and_keeps_the_others_in_place(scripted, api, shape):
    scripted.shape = shape
    result = run(scripted, api=api)
    assert result.status == "reranked"
    # Hits 0, 2, 4, 5 had text; by shared words: 2 (red car) > 4 (car) > 5 (shorter) > 0.
    assert result.order == [2, 1, 4, 3, 5, 0]
    assert result.scores[1] is None and result.scores[3] is None
    assert result.scores[2] > result.scores[4] > result.scores[0]
    body = scripted.requests[-1]["body"]
    if api == "cohere":
        assert body == {
            "model": "tiny-rerank",
            "query": QUERY,
            "documents": [TEXTS[0], TEXTS[2], TEXTS[4], TEXTS[5]],
            "top_n": 4,
            "return_documents": False,
        }
    else:
        assert body["texts"] == [TEXTS[0], TEXTS[2], TEXTS[4], TEXTS[5]]
        assert body["query"] == QUERY and body["raw_scores"] is False and "documents" not in body


def test_api_key_is_sent_as_a_bearer_header_and_kept_out_of_identity(scripted):
    reranker = make_reranker(http_config(scripted, api_key="sk-secret-123"))
    reranker.score(QUERY, ["red car"], 1.0)
    assert scripted.requests[-1]["headers"]["authorization"] == "Bearer sk-secret-123"
    assert reranker.identity == f"http:cohere:127.0.0.1:{urlsplit(scripted.url).port}/tiny-rerank"
    assert "secret" not in reranker.identity


def test_no_authorization_header_without_a_key(scripted):
    run(scripted)
    assert "authorization" not in scripted.requests[-1]["headers"]


def test_a_key_echoed_by_the_server_is_masked_in_the_status(scripted):
    scripted.behaviour = "echo_key"
    result = run(scripted, api_key="sk-secret-123")
    assert result.status.startswith("failed: ") and "HTTP 500" in result.status
    assert "sk-secret-123" not in result.status and "***" in result.status


def test_timeout_fails_fast_and_keeps_the_first_stage_order(scripted):
    scripted.behaviour, scripted.delay_s = "slow", 1.5
    result = run(scripted, timeout_s=0.3)
    assert result.order == list(range(len(TEXTS)))
    assert result.scores == [None] * len(TEXTS)
    assert result.status.startswith("failed: timed out after 0.3 s")
    assert result.seconds < 1.2


@pytest.mark.parametrize(
    ("behaviour", "says"),
    [
        ("http_500", "HTTP 500"),
        ("redirect", "HTTP 307"),
        ("garbage", "not JSON"),
        ("wrong_count", "3 results for 4 documents"),
        ("nan", "not a finite number"),
        ("out_of_range", "outside 0..3"),
        ("duplicate", "twice"),
        ("huge", "byte limit"),
        ("huge_unsized", "byte limit"),
    ],
)
@pytest.mark.parametrize("shape", ["cohere", "tei"])
def test_bad_answers_fail_and_keep_the_first_stage_order(scripted, behaviour, says, shape):
    scripted.behaviour, scripted.shape = behaviour, shape
    result = run(scripted)
    assert result.status.startswith("failed: ") and says in result.status, result.status
    assert result.order == list(range(len(TEXTS)))
    assert result.scores == [None] * len(TEXTS)


def test_score_raises_rerank_failed_on_a_bad_answer(scripted):
    scripted.behaviour = "wrong_count"
    with pytest.raises(RerankFailed, match="results for 2 documents"):
        make_reranker(http_config(scripted)).score(QUERY, ["a", "b"], 1.0)


def test_unreachable_server_fails_without_raising():
    # Port 9 (discard) on the loopback: nothing listens, the connection is refused at once.
    config = RerankConfig(kind="http", url="http://user:hunter2@127.0.0.1:9/v1/rerank", timeout_s=0.5)
    result = rerank(make_reranker(config), QUERY, TEXTS, config)
    assert result.status.startswith("failed: ") and "unreachable" in result.status
    assert "hunter2" not in result.status and "user:***@127.0.0.1:9" in result.status


def test_only_the_first_candidates_with_text_are_sent(scripted):
    texts = [f"doc {i}" for i in range(10)]
    texts[1] = None
    texts[8] = "red car"  # the best match, beyond the bound: not moved
    result = run(scripted, texts=texts, candidates=3)
    assert scripted.requests[-1]["body"]["documents"] == ["doc 0", "doc 2", "doc 3"]
    assert result.order[3:] == list(range(3, 10))
    assert sorted(result.order[:3]) == [0, 1, 2] and result.order[1] == 1
    assert [s is not None for s in result.scores] == [True, False, True, True] + [False] * 6


def test_texts_are_cut_to_max_chars(scripted):
    run(scripted, texts=["x" * 50, "red car " * 10], max_chars=12)
    assert [len(d) for d in scripted.requests[-1]["body"]["documents"]] == [12, 12]


def test_empty_query_or_no_text_is_skipped_without_a_call(scripted):
    assert run(scripted, query="  ").status == "skipped: empty query"
    result = run(scripted, texts=[None, "", "   "])
    assert result.status == "skipped: no hit has text" and result.order == [0, 1, 2]
    assert run(scripted, texts=[]).order == []
    assert scripted.requests == []


def test_a_reranker_that_raises_unexpectedly_never_fails_the_search():
    class Broken:
        identity = "broken"

        def load(self):
            return self

        def score(self, query, documents, timeout_s):
            raise KeyError("bug")

    class Short(Broken):
        def score(self, query, documents, timeout_s):
            return [1.0]

    config = RerankConfig(kind="http")
    result = rerank(Broken(), QUERY, TEXTS, config)
    assert result.status == "failed: KeyError in broken" and result.order == list(range(len(TEXTS)))
    assert rerank(Short(), QUERY, TEXTS, config).status == "failed: got 1 scores for 4 documents"


def test_ties_keep_the_original_order():
    class Flat:
        identity = "flat"

        def load(self):
            return self

        def score(self, query, documents, timeout_s):
            return [0.5] * len(documents)

    result = rerank(Flat(), QUERY, ["a", "b", "c"], RerankConfig())
    assert result.order == [0, 1, 2] and result.status == "reranked"


# -- Cross-encoder ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """(ONNX folder, transformers folder) of one tiny trained model."""
    onnx = build_tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny-ce-onnx", onnx=True)
    return onnx, copy_without_onnx(onnx, onnx.with_name("tiny-ce"))


DOCS = ["red car", "blue boat", "car red tree", "lion bear", "dog fish"]


def test_cross_encoder_loads_and_ranks_matching_documents_first(tiny_cross_encoder):
    _, folder = tiny_cross_encoder
    reranker = make_reranker(RerankConfig(kind="cross-encoder", model=str(folder)))
    assert isinstance(reranker, CrossEncoderReranker) and reranker.runtime == "torch"
    assert reranker.identity == "cross-encoder:tiny-ce"
    scores = reranker.score("red car", DOCS, 5.0)
    assert len(scores) == len(DOCS) and all(math.isfinite(s) for s in scores)
    assert min(scores[0], scores[2]) > max(scores[1], scores[3], scores[4])
    assert reranker.score("red car", DOCS, 5.0) == scores  # deterministic
    result = rerank(reranker, "red car", ["lion bear", None, "car red tree", "red car"], RerankConfig())
    assert result.status == "reranked" and result.order[1] == 1 and set(result.order[2:]) == {0, 2}
    assert result.order[0] in (2, 3)


def test_cross_encoder_onnx_matches_torch(tiny_cross_encoder):
    onnx_folder, torch_folder = tiny_cross_encoder
    onnx = make_reranker(RerankConfig(kind="cross-encoder", model=str(onnx_folder)))
    assert onnx.runtime == "onnx"
    docs = DOCS * 4  # 20 pairs: two batches
    expected = make_reranker(RerankConfig(kind="cross-encoder", model=str(torch_folder))).score("red car", docs, 5.0)
    np.testing.assert_allclose(onnx.score("red car", docs, 5.0), expected, atol=1e-4)


def test_cross_encoder_truncates_long_pairs_to_the_model_length(tiny_cross_encoder):
    _, folder = tiny_cross_encoder
    reranker = make_reranker(RerankConfig(kind="cross-encoder", model=str(folder))).load()
    assert reranker.max_length == 32
    scores = reranker.score("red car " * 40, ["car red tree " * 40, "lion"], 5.0)
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)


def test_cross_encoder_deadline_is_checked_between_batches(tiny_cross_encoder):
    _, folder = tiny_cross_encoder
    reranker = make_reranker(RerankConfig(kind="cross-encoder", model=str(folder))).load()
    with pytest.raises(RerankFailed, match=r"timed out after 1e-06 s \(16 of 40 documents scored\)"):
        reranker.score("red car", ["red car"] * 40, 1e-6)


# -- Config errors ---------------------------------------------------------------------------
def test_kind_none_makes_no_reranker():
    assert make_reranker(RerankConfig()) is None


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        (RerankConfig(kind="colbert"), "kind", "valid kinds: none, http, cross-encoder"),
        (RerankConfig(kind="http"), "url", "must be an http(s) URL"),
        (RerankConfig(kind="http", url="ftp://host/rerank"), "url", "must be an http(s) URL"),
        (RerankConfig(kind="http", url="http://host:port/rerank"), "url", "must be an http(s) URL"),
        (RerankConfig(kind="http", url="http://h/rerank", api="openai"), "api", "valid apis: cohere, tei"),
        (RerankConfig(kind="cross-encoder", model="/nowhere/model"), "model", "does not exist"),
        (RerankConfig(kind="http", url="http://h/rerank", candidates=0), "candidates", ">= 1"),
        (RerankConfig(kind="http", url="http://h/rerank", timeout_s=0), "timeout_s", "> 0"),
        (RerankConfig(kind="http", url="http://h/rerank", max_chars=0), "max_chars", ">= 1"),
    ],
)
def test_bad_config_says_what_to_fix(config, field, says):
    with pytest.raises(RerankConfigError, match=r".") as caught:
        make_reranker(config)
    assert says in str(caught.value) and caught.value.field == field
    assert isinstance(caught.value, InvalidInput) and isinstance(caught.value, ValueError)


def test_bad_url_error_masks_credentials():
    with pytest.raises(RerankConfigError) as caught:
        make_reranker(RerankConfig(kind="http", url="ftp://me:hunter2@host/rerank"))
    assert "hunter2" not in str(caught.value)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(RerankConfigError, match="no config.json"):
        make_reranker(RerankConfig(kind="cross-encoder", model=str(tmp_path)))


def test_http_reranker_is_the_http_kind(scripted):
    assert isinstance(make_reranker(http_config(scripted, api="tei")), HttpReranker)


# -- MMR -------------------------------------------------------------------------------------
NEAR_DUPLICATES = np.array([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.0, 0.0, 2.0]])


def test_mmr_moves_a_distinct_hit_above_a_near_duplicate():
    relevance = np.array([0.9, 0.88, 0.7])
    assert mmr(None, NEAR_DUPLICATES, relevance, 0.5) == [0, 2, 1]


def test_mmr_lambda_one_is_relevance_order_with_ties_by_index():
    relevance = np.array([0.3, 0.9, 0.3, 0.5])
    vectors = np.eye(4)
    assert mmr(None, vectors, relevance, 1.0) == [1, 3, 0, 2]


def test_mmr_k_picks_first_then_the_rest_by_relevance():
    relevance = np.array([0.9, 0.88, 0.7, 0.1])
    vectors = np.vstack([NEAR_DUPLICATES, [[0.0, 0.0, 1.0]]])
    assert mmr(None, vectors, relevance, 0.5, k=1) == [0, 1, 2, 3]
    assert mmr(None, vectors, relevance, 0.5, k=2) == [0, 2, 1, 3]


def test_mmr_treats_zero_vectors_as_similar_to_nothing():
    vectors = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    relevance = np.array([1.0, 0.5, 0.9])
    assert mmr(None, vectors, relevance, 0.5) == [0, 1, 2]
    assert sorted(mmr(None, np.zeros((3, 2)), relevance, 0.3)) == [0, 1, 2]


def test_mmr_relevance_from_the_query_when_none_given():
    query = np.array([1.0, 0.0, 0.1])
    assert mmr(query, NEAR_DUPLICATES, None, 1.0) == [0, 1, 2]


def test_mmr_edges():
    assert mmr(None, np.zeros((0, 4)), np.zeros(0), 0.5) == []
    assert mmr(None, NEAR_DUPLICATES, np.ones(3), 1.0) == [0, 1, 2]  # equal relevance: index order
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="between 0 and 1"):
            mmr(None, NEAR_DUPLICATES, np.ones(3), bad)
    with pytest.raises(ValueError, match="2 relevance values for 3 vectors"):
        mmr(None, NEAR_DUPLICATES, np.ones(2), 0.5)
    with pytest.raises(ValueError, match="finite"):
        mmr(None, NEAR_DUPLICATES, np.array([1.0, math.inf, 0.0]), 0.5)
