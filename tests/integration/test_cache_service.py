"""Caches through the real service, shared in a real Redis: re-indexing stored images does no
work, a repeated Ask on a screenshot is answered from the cache (also by a restarted service),
and a write to the collection an answer read makes it stale."""

from __future__ import annotations

import io
import re
import urllib.request
from pathlib import Path

import pytest

from encoders.clip.bundled.shapes import make_pairs
from services.cli.launch import ServiceProcess
from services.client import ImageInput, LoupeClient, TextInput
from tests.fixtures import redis_server
from tests.fixtures.scripted_vlm import ScriptedVlmServer

pytestmark = pytest.mark.slow
SHOT = Path(__file__).resolve().parents[1] / "fixtures" / "screenshots" / "printer_e42_tray_empty.png"
QUESTION = "What error does the printer show?"


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _hits(metrics_url: str, cache: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    found = re.search(rf'^loupe_cache_requests_total\{{cache="{cache}",result="hit"\}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not redis_server.available():
        pytest.skip(redis_server.NOT_INSTALLED)
    root = tmp_path_factory.mktemp("cache")
    with redis_server.redis_server() as url, ScriptedVlmServer() as vlm:
        env = {
            "LOUPE_AUDIO": "false",
            "LOUPE_ASK__BACKEND": "openai",
            "LOUPE_ASK__BASE_URL": vlm.url,
            "LOUPE_ASK__MODEL": "scripted-vlm",
            "LOUPE_CACHE__REDIS_URL": url,
            "LOUPE_CACHE__REDIS_PREFIX": f"{root.name}:",
        }
        yield {"root": root, "env": env, "vlm": vlm}


def _service(setup, name: str) -> ServiceProcess:
    args = ["--bundled-models", "--data-dir", str(setup["root"] / "data")]
    return ServiceProcess(args, log_path=setup["root"] / f"{name}.log", env=setup["env"])


def test_stored_images_answers_and_a_restart(setup):
    images = [ImageInput(_png(img), source=f"shape-{i}.png") for i, (img, _) in enumerate(make_pairs(20, seed=77))]
    shot = SHOT.read_bytes()
    with _service(setup, "first") as svc, LoupeClient(svc.target, timeout_s=300) as client:
        first = client.index_images(images, collection="shelf")
        again = client.index_images(
            [ImageInput(i.data, source=f"again/{i.source}") for i in images], collection="shelf"
        )
        assert [pid for pid, _ in again] == [pid for pid, _ in first] and not any(created for _, created in again)
        item = client.get(first[3][0], collection="shelf")
        assert item.sources == ["shape-3.png", "again/shape-3.png"]

        answer = client.ask(QUESTION, [shot])
        repeat = client.ask(QUESTION, [shot])
        assert answer.verdict == repeat.verdict and answer.text == repeat.text and "E-42" in answer.text
        assert not answer.cached and repeat.cached and repeat.cached_request_id == answer.request_id
        assert repeat.request_id != answer.request_id and repeat.tokens_in == 0
        drafts = len(setup["vlm"].requests)

        # Retrieval from a collection: cached until that collection changes.
        client.index_texts([TextInput("printer E-42 means the paper tray is empty")], collection="desk")
        asked = client.ask(QUESTION, [shot], k=2, collection="desk")
        assert client.ask(QUESTION, [shot], k=2, collection="desk").cached
        client.index_texts([TextInput("printer E-43 means a paper jam")], collection="desk")
        assert not client.ask(QUESTION, [shot], k=2, collection="desk").cached
        assert not asked.cached
        assert _hits(svc.metrics_url, "answers") >= 2

    with _service(setup, "second") as svc, LoupeClient(svc.target, timeout_s=300) as client:
        before = len(setup["vlm"].requests)
        after_restart = client.ask(QUESTION, [shot])
        assert after_restart.cached and after_restart.cached_request_id == answer.request_id
        assert len(setup["vlm"].requests) == before  # the VLM was not asked
        assert drafts >= 1
        # The query embedding of a search made before the restart is in Redis too.
        client.search_text("a red circle", collection="shelf")
        assert _hits(svc.metrics_url, "embeddings") == 0
        client.search_text("a red circle", collection="shelf")
        assert _hits(svc.metrics_url, "embeddings") == 1
