"""The retriever's second stage through LoupeApi (in-process, bundled model, embedded store):
a rerank endpoint (scripted server) and a local cross-encoder (a tiny one the tests train)
reorder the first stage; a reranker that is down, slow or answers garbage leaves the first
stage's order and the response says so; MMR spreads near-duplicates; bad options are refused."""

from __future__ import annotations

import io
import random

import pytest

from encoders.clip.bundled.shapes import render, sample_scenes
from encoders.common.errors import InvalidInput
from services.client.sdk import ImageInput, TextInput
from services.config import load_settings
from services.serve.workers import EncoderWorker
from tests.fixtures.inprocess import ApiClient
from tests.fixtures.rerank_server import ScriptedRerankServer
from tests.fixtures.tiny_cross_encoder import build_tiny_cross_encoder

pytestmark = pytest.mark.slow  # trains or loads models: ~30 s

DOCS = "docs"
PICS = "pics"
TEXTS = [
    ("t-red-car", "a red car parked by the river"),
    ("t-blue-boat", "a blue boat on the lake"),
    ("t-red-bus", "a red bus on the road"),
    ("t-green-tree", "a green tree by the road"),
    ("t-black-cat", "a black cat and a white dog"),
    ("t-mail", "call alice at alice.smith@example.com about the red car"),
]


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = build_tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny-ce")
    with ScriptedRerankServer() as server:
        rerank = {
            "rerankers": {
                "words": {
                    "kind": "http",
                    "url": server.url,
                    "api_key": "sk-test-123",
                    "candidates": 4,
                    "timeout_s": 0.5,
                },
                "tei": {"kind": "http", "url": server.url.replace("/v1/rerank", "/rerank"), "api": "tei"},
                "tiny": {"kind": "cross-encoder", "model": str(folder)},
            },
            "collections": {DOCS: "words"},
        }
        encoder = EncoderWorker(load_settings({"profile": "bundled", "encoder": {"threads": 2}}))
        client = ApiClient.open(str(tmp_path_factory.mktemp("second")), encoder, rerank=rerank)
        client.index_texts([TextInput(t, id=i) for i, t in TEXTS], collection=DOCS)
        scenes = sample_scenes(6, 77, distinct=True)
        rng = random.Random(1)
        pictures = [ImageInput(png(render(s, rng, 64)), id=f"p{n}") for n, s in enumerate(scenes)]
        # p0's scene twice more, in other layouts: near-duplicates of p0
        pictures += [ImageInput(png(render(scenes[0], rng, 64)), id=f"p0-again-{n}") for n in range(2)]
        client.index_images(pictures, collection=PICS)
        yield {"client": client, "server": server, "scenes": scenes}
        client.close()


def ids(result) -> list[str]:
    return [h.id for h in result.hits]


def test_the_collection_default_reranker_reorders_and_says_so(stack):
    client, server = stack["client"], stack["server"]
    server.behaviour, server.shape = "good", "cohere"
    first = client.search_text("red car river", collection=DOCS, rerank="none", limit=6)
    assert first.rerank == "" and all(h.rerank_score is None for h in first.hits)
    result = client.search_text("red car river", collection=DOCS, limit=6)
    assert result.rerank == "reranked by words"  # the operator's name, not the endpoint's address
    request = server.requests[-1]
    assert request["headers"]["authorization"] == "Bearer sk-test-123"
    assert len(request["body"]["documents"]) == 4  # the configured bound
    assert "sk-test-123" not in result.rerank
    top4 = result.hits[:4]
    assert set(ids(result)[:4]) == set(ids(first)[:4])  # reordered among the candidates only
    scores = [h.rerank_score for h in top4]
    assert all(s is not None for s in scores) and scores == sorted(scores, reverse=True)
    assert ids(result)[4:] == ids(first)[4:] and result.hits[4].rerank_score is None
    assert result.hits[0].id == "t-red-car"
    assert {"candidates", "rerank"} <= set(result.stage_ms)
    fewer = client.search_text("red car river", collection=DOCS, limit=6, rerank_candidates=2)
    assert len(server.requests[-1]["body"]["documents"]) == 2 and fewer.rerank.startswith("reranked")


def test_the_reranker_reads_masked_text(stack):
    client, server = stack["client"], stack["server"]
    server.behaviour = "good"
    client.search_text("alice red car", collection=DOCS, limit=6, rerank_candidates=4)
    sent = " ".join(server.requests[-1]["body"]["documents"])
    assert "alice.smith@example.com" not in sent


@pytest.mark.parametrize("behaviour", ["slow", "http_500", "garbage", "wrong_count", "nan", "out_of_range", "redirect"])
def test_a_failing_reranker_keeps_the_first_stage_order(stack, behaviour):
    client, server = stack["client"], stack["server"]
    server.behaviour, server.delay_s = behaviour, 1.5
    first = client.search_text("red car river", collection=DOCS, rerank="none", limit=6)
    result = client.search_text("red car river", collection=DOCS, limit=6)
    server.behaviour = "good"
    assert result.rerank.startswith("failed: words "), result.rerank
    assert "127.0.0.1" not in result.rerank and "/v1/rerank" not in result.rerank
    assert ids(result) == ids(first) and all(h.rerank_score is None for h in result.hits)
    assert [h.score for h in result.hits] == [h.score for h in first.hits]


def test_tei_shape_and_the_cross_encoder(stack):
    client, server = stack["client"], stack["server"]
    server.behaviour, server.shape = "good", "tei"
    tei = client.search_text("red car river", collection=DOCS, rerank="tei", limit=6)
    assert tei.rerank == "reranked by tei" and "texts" in server.requests[-1]["body"]
    server.shape = "cohere"
    local = client.search_text("red car", collection=DOCS, rerank="tiny", limit=6)
    assert local.rerank == "reranked by tiny"
    assert all(h.rerank_score is not None for h in local.hits)
    # Rerank scores are the model's logits, not probabilities; confidence stays the calibration's.
    assert all(h.confidence is None for h in local.hits)


def test_pictures_without_text_keep_their_places(stack):
    client, scenes = stack["client"], stack["scenes"]
    result = client.search_text(scenes[1].caption, collection=PICS, rerank="words", limit=5)
    first = client.search_text(scenes[1].caption, collection=PICS, rerank="none", limit=5)
    assert ids(result) == ids(first) and result.rerank == "skipped: no hit has text"


def test_mmr_pushes_near_duplicates_down(stack):
    client, scenes = stack["client"], stack["scenes"]
    plain = client.search_text(scenes[0].caption, collection=PICS, limit=5)
    assert set(ids(plain)[:3]) == {"p0", "p0-again-0", "p0-again-1"}
    diverse = client.search_text(scenes[0].caption, collection=PICS, limit=5, mmr_lambda=0.3)
    assert ids(diverse)[0] == ids(plain)[0]
    assert len({"p0", "p0-again-0", "p0-again-1"} & set(ids(diverse)[:3])) == 1
    assert diverse.diversity.startswith("mmr lambda 0.3") and "diversity" in diverse.stage_ms
    same = client.search_text(scenes[0].caption, collection=PICS, limit=5, mmr_lambda=1.0)
    assert ids(same) == ids(plain)
    page2 = client.search_text(scenes[0].caption, collection=PICS, limit=2, offset=2, mmr_lambda=0.3)
    assert ids(page2) == ids(client.search_text(scenes[0].caption, collection=PICS, limit=4, mmr_lambda=0.3))[2:]


@pytest.mark.parametrize(
    "options, field",
    [
        ({"rerank": "nope"}, "options.rerank"),
        ({"mmr_lambda": 1.5}, "options.mmr_lambda"),
        ({"rerank_candidates": 0}, "options.rerank_candidates"),
        ({"rerank": "x" * 65}, "options.rerank"),
    ],
)
def test_bad_second_stage_options_are_refused(stack, options, field):
    with pytest.raises(InvalidInput) as caught:
        stack["client"].search_text("red car", collection=DOCS, **options)
    assert caught.value.field == field


def test_a_collection_default_naming_an_unknown_reranker_is_a_settings_error(tmp_path):
    with pytest.raises(ValueError, match="rerank.collections"):
        load_settings({"profile": "bundled", "data_dir": str(tmp_path), "rerank": {"collections": {"a": "missing"}}})


def test_the_eval_reports_the_reranked_stage_beside_the_first(stack, tmp_path):
    from indexing.evals import RERANKED, load_cases, run_retrieval_eval
    from services.cli.evals import retrieval_outcome

    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        '{"id": "car", "text": "red car river", "modes": ["dense", "keyword", "hybrid"], '
        '"relevant": {"ids": ["t-red-car"]}}\n'
        '{"id": "boat", "text": "blue boat lake", "relevant": {"ids": ["t-blue-boat"]}}\n'
    )
    loaded, _ = load_cases(cases)
    client = stack["client"]
    report = run_retrieval_eval(
        loaded,
        lambda case, mode, exact: retrieval_outcome(client, case, mode, exact, DOCS, {"rerank": "words"}),
        lambda collection, where: client.count(where=where, collection=DOCS),
        modes=["dense", "hybrid", RERANKED],
    )
    groups = report.groups()
    assert {"dense", "hybrid", RERANKED} <= set(groups) and not report.errors()
    assert groups[RERANKED]["recall@1"] == 1.0  # the scripted reranker puts the word match first


def test_hybrid_with_no_words_to_match_is_the_dense_ranking(stack):
    client = stack["client"]
    hybrid = client.search_text("???", collection=DOCS, mode="hybrid", rerank="none", limit=6)
    dense = client.search_text("???", collection=DOCS, mode="dense", rerank="none", limit=6)
    assert [h.id for h in hybrid.hits] == [h.id for h in dense.hits]
    with pytest.raises(InvalidInput):
        client.search_text("???", collection=DOCS, mode="keyword")
