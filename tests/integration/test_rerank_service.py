"""The second stage through the real service: the scripted rerank endpoint configured as the
"scripted" reranker reorders hits over gRPC, HTTP and the CLI; when it fails the search still
answers in first-stage order and says why; MMR works over the wire."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.client.sdk import TextInput
from tests.security.wire import post

pytestmark = pytest.mark.slow
COLLECTION = "rerank-wire"
TEXTS = [
    ("w-car", "a red car parked by the river"),
    ("w-boat", "a blue boat on the lake"),
    ("w-bus", "a red bus on the road"),
    ("w-tree", "a green tree by the road"),
    ("w-cat", "a black cat and a white dog"),
]


@pytest.fixture(scope="module")
def indexed(service):
    with service.client(timeout_s=120) as client:
        client.index_texts([TextInput(t, id=i) for i, t in TEXTS], collection=COLLECTION)
    yield service
    service.rerank_server.behaviour = "good"


def test_grpc_rerank_and_its_fallback(indexed):
    server = indexed.rerank_server
    server.behaviour = "good"
    with indexed.client(timeout_s=120) as client:
        first = client.search_text("red car river", collection=COLLECTION, limit=5)
        assert first.rerank == ""  # no collection default configured: off
        reranked = client.search_text("red car river", collection=COLLECTION, limit=5, rerank="scripted")
        assert reranked.rerank == "reranked by scripted"
        assert reranked.hits[0].id == "w-car" and reranked.hits[0].rerank_score is not None
        assert {"candidates", "rerank"} <= set(reranked.stage_ms)
        server.behaviour = "slow"  # past the reranker's 1 s deadline
        slow = client.search_text("red car river", collection=COLLECTION, limit=5, rerank="scripted")
        assert slow.rerank == "failed: scripted timed out after 1 s"
        assert [h.id for h in slow.hits] == [h.id for h in first.hits]
        server.behaviour = "garbage"
        bad = client.search_text("red car river", collection=COLLECTION, limit=5, rerank="scripted")
        assert bad.rerank == "failed: scripted gave an unusable answer"  # no host, port or body shown
        assert [h.id for h in bad.hits] == [h.id for h in first.hits]
        server.behaviour = "good"
        diverse = client.search_text("red car river", collection=COLLECTION, limit=5, mmr_lambda=0.5)
        assert diverse.diversity.startswith("mmr lambda 0.5") and len(diverse.hits) == 5


def test_http_rerank_and_a_bad_name(indexed):
    indexed.rerank_server.behaviour = "good"
    base = indexed.process.web_url
    body = {"query": "blue boat lake", "options": {"collection": COLLECTION, "limit": 5, "rerank": "scripted"}}
    status, found = post(base, "SearchText", body, None)
    assert status == 200, found
    assert found["rerank"].startswith("reranked by") and found["hits"][0]["item"]["id"] == "w-boat"
    assert "rerank_score" in found["hits"][0] and "rerank" in found["stage_ms"]
    body["options"]["rerank"] = "nope"
    status, refused = post(base, "SearchText", body, None)
    assert status == 400 and "unknown reranker 'nope'" in json.dumps(refused)


def test_cli_rerank_flags(indexed):
    indexed.rerank_server.behaviour = "good"
    run = subprocess.run(
        [
            sys.executable, "-m", "services.cli.main", "--target", indexed.target,
            "search", "red bus road", "--collection", COLLECTION, "--rerank", "scripted", "--mmr", "0.9",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "rerank: reranked by scripted" in run.stdout and "diversity: mmr lambda 0.9" in run.stdout
    assert run.stdout.splitlines()[1].split()[4] == "w-bus"
