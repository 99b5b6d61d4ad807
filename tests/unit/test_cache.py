"""Exact caches: the backends (in-process and a real Redis), and every key part and invalidation
of each cache through the RPC logic in-process. Nothing stale may come back."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import replace

import pytest

from encoders.clip.bundled.shapes import make_pairs
from encoders.common.errors import InvalidInput, ModelMismatch
from encoders.whisper.transcribe import Segment, TranscriptInfo
from lmm.types import Answer, Verdict
from protos.loupe.v1 import index_pb2, qa_pb2, search_pb2
from services import cache as cache_module
from services.cache import Cached, MemoryCache, RedisCache
from services.config import load_settings
from services.rpc.api import LoupeApi
from services.serve.workers import EncoderWorker, IndexWorker, ThreadCalls, Transcript
from tests.fixtures import redis_server


def run(coro):
    return asyncio.run(coro)


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def redis_url():
    if not redis_server.available():
        pytest.skip(redis_server.NOT_INSTALLED)
    with redis_server.redis_server() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def backend_settings(request, tmp_path):
    """Settings overrides for one backend, with nothing cached from an earlier test."""
    if request.param == "memory":
        cache_module._SHARED.pop("memory", None)
        return {}
    url = request.getfixturevalue("redis_url")
    return {"cache": {"redis_url": url, "redis_prefix": f"test:{tmp_path.name}:"}}


# -- backends -------------------------------------------------------------------------------
def test_memory_cache_bounds_each_cache_and_expires_entries():
    now = [0.0]
    mem = MemoryCache(clock=lambda: now[0])
    for i in range(5):
        mem.set(f"a:{i}", b"x", ttl_s=10, max_entries=3)
    mem.set("b:0", b"y", ttl_s=1, max_entries=3)
    assert [mem.get(f"a:{i}") for i in range(5)] == [None, None, b"x", b"x", b"x"]
    assert mem.get("b:0") == b"y"  # another cache's bound is its own
    now[0] = 1.0
    assert mem.get("b:0") is None and mem.get("a:4") == b"x"
    mem.get("a:2")  # used: now the newest
    mem.set("a:5", b"z", ttl_s=10, max_entries=3)
    assert mem.get("a:3") is None and mem.get("a:2") == b"x"


def test_redis_cache_expires_and_survives_a_server_that_is_down(redis_url):
    r = RedisCache(redis_url, prefix="t1:")
    r.set("k", b"v", ttl_s=0.3, max_entries=1)
    assert r.get("k") == b"v" and RedisCache(redis_url, prefix="t2:").get("k") is None
    time.sleep(0.5)
    assert r.get("k") is None
    down = RedisCache("redis://127.0.0.1:1/0", timeout_s=0.2)
    down.set("k", b"v", ttl_s=10, max_entries=1)
    assert down.get("k") is None  # a miss, not an error


def test_cached_counts_hits_and_misses():
    from services.serve import metrics

    c = Cached("embeddings", MemoryCache(), ttl_s=60, max_entries=10)

    def count(result: str) -> float:
        return metrics.CACHE_REQUESTS.labels("embeddings", result)._value.get()

    hits, misses = count("hit"), count("miss")
    assert c.get("x") is None
    c.put([1, 2], "x")
    assert c.get("x") == [1, 2] and c.get("y") is None
    assert count("hit") - hits == 1 and count("miss") - misses == 2
    off = Cached("embeddings", None, ttl_s=60, max_entries=10)
    off.put(1, "x")
    assert off.get("x") is None and not off.enabled


# -- through the RPC logic ------------------------------------------------------------------
class Counting:
    """An async face that counts calls per method."""

    def __init__(self, face):
        self.face, self.calls = face, {}

    def __getattr__(self, name):
        method = getattr(self.face, name)

        async def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return await method(*args, **kwargs)

        return call


class FakeAnswerer:
    def __init__(self) -> None:
        self.identity_value = {"vlm": "vlm-a", "prompt": "ask/v1", "prompt_digest": "sha256:1", "ask": {"x": 1}}
        self.asked = 0
        self.verdict = Verdict.ANSWERED

    async def model_id(self) -> str:
        return self.identity_value["vlm"]

    async def identity(self) -> dict:
        self.identity_calls = getattr(self, "identity_calls", 0) + 1
        return dict(self.identity_value)

    async def ask(self, question, images, k, retrieval, reveal_retrieved=False):
        self.asked += 1
        return Answer(f"answer {self.asked}", (), self.verdict, (), self.identity_value["vlm"], "ask/v1", tokens_in=7)


class FakeTranscriber:
    def __init__(self) -> None:
        self.transcribed = 0

    async def model_id(self) -> str:
        return "whisper:fake"

    async def transcribe(self, data, language):
        import hashlib

        self.transcribed += 1
        info = TranscriptInfo(language or "en", 1.0, 2.0, "whisper:fake")
        return Transcript(
            info, [Segment(0.0, 2.0, "the printer shows error forty two")], hashlib.sha256(data).hexdigest()
        )


@pytest.fixture(scope="module")
def encoder_worker():
    return EncoderWorker(load_settings({"profile": "bundled", "encoder": {"threads": 1}, "ocr": {"mode": "always"}}))


@pytest.fixture
def world(encoder_worker, backend_settings, tmp_path):
    settings = load_settings(
        {"profile": "bundled", "data_dir": str(tmp_path), "optimize_after_points": 0, **backend_settings}
    )
    index = IndexWorker(settings)
    encoder = Counting(ThreadCalls(encoder_worker))
    answerer, transcriber = FakeAnswerer(), FakeTranscriber()
    api = LoupeApi(settings, encoder, ThreadCalls(index), transcriber, answerer)
    yield {"api": api, "encoder": encoder, "answerer": answerer, "transcriber": transcriber, "settings": settings}
    index.close()


def test_query_embeddings_are_cached_per_text_and_model(world):
    api, encoder = world["api"], world["encoder"]
    run(api.index_texts(index_pb2.IndexTextsRequest(items=[index_pb2.TextItem(text="a red circle")])))
    encoder.calls.clear()

    def search(q):
        return run(api.search_text(search_pb2.SearchTextRequest(query=q)))

    first = search("a red  circle")
    assert search(" a red circle ").hits[0].score == first.hits[0].score
    assert encoder.calls == {"encode_texts": 1}
    search("a blue circle")
    assert encoder.calls == {"encode_texts": 2}
    # Another model version (a re-embedding rolled out): never the old vector.
    api._info = replace(run(api.info()), model_version="v2")
    with pytest.raises(ModelMismatch):  # the collection has no "v2" vector; what matters is that the encoder ran
        search("a red circle")
    assert encoder.calls == {"encode_texts": 3}


def test_query_images_are_cached_and_bad_ones_refused_each_time(world):
    api, encoder = world["api"], world["encoder"]
    (img, _), (other, _) = make_pairs(2, seed=5, distinct=True)
    run(api.index_images(index_pb2.IndexImagesRequest(items=[index_pb2.ImageItem(data=png(img))])))
    encoder.calls.clear()
    for _ in range(3):
        run(api.search_image(search_pb2.SearchImageRequest(image=png(img))))
    run(api.search_image(search_pb2.SearchImageRequest(image=png(other))))
    assert encoder.calls == {"encode_images": 2}
    for _ in range(2):
        with pytest.raises(InvalidInput):
            run(api.search_image(search_pb2.SearchImageRequest(image=b"not an image")))
    assert encoder.calls == {"encode_images": 4}


def test_tightened_image_limits_refuse_an_image_cached_before(world, backend_settings, tmp_path):
    img = png(make_pairs(1, seed=21, size=96)[0][0])
    run(
        world["api"].index_images(
            index_pb2.IndexImagesRequest(items=[index_pb2.ImageItem(data=png(make_pairs(1, seed=2)[0][0]))])
        )
    )
    run(world["api"].search_image(search_pb2.SearchImageRequest(image=img)))  # its vector is cached now
    tight = load_settings(
        {
            "profile": "bundled",
            "data_dir": str(tmp_path / "tight"),
            "limits": {"image_max_pixels": 64 * 64},
            **backend_settings,
        }
    )
    index = IndexWorker(tight)
    api = LoupeApi(tight, ThreadCalls(EncoderWorker(tight)), ThreadCalls(index))
    try:
        with pytest.raises(InvalidInput):
            run(api.search_image(search_pb2.SearchImageRequest(image=img)))
    finally:
        index.close()


def test_stored_content_is_not_processed_again_and_its_sources_merge(world):
    api, encoder = world["api"], world["encoder"]
    (img, _), (other, _) = make_pairs(2, seed=9, distinct=True)
    first = run(
        api.index_images(index_pb2.IndexImagesRequest(items=[index_pb2.ImageItem(data=png(img), source="a.png")]))
    )
    encoder.calls.clear()
    again = index_pb2.IndexImagesRequest(
        items=[
            index_pb2.ImageItem(data=png(img), source="b.png"),
            index_pb2.ImageItem(data=png(other), source="c.png"),
        ]
    )
    again.items[0].metadata.update({"team": "catalog"})
    second = run(api.index_images(again))
    assert [(i.created, i.reused) for i in second.items] == [(False, True), (True, False)]
    assert encoder.calls == {"encode_images": 1}  # only the new image was decoded and encoded
    item = run(api.get_item(index_pb2.GetItemRequest(id=first.items[0].id)))
    assert list(item.sources) == ["a.png", "b.png"] and item.metadata["team"] == "catalog"
    # The same caller id with other content is encoded again, never taken for the stored one.
    replaced = index_pb2.IndexImagesRequest(items=[index_pb2.ImageItem(data=png(other), id="shelf-1")])
    run(api.index_images(index_pb2.IndexImagesRequest(items=[index_pb2.ImageItem(data=png(img), id="shelf-1")])))
    encoder.calls.clear()
    out = run(api.index_images(replaced))
    assert not out.items[0].reused and encoder.calls == {"encode_images": 1}
    # Texts too.
    texts = index_pb2.IndexTextsRequest(items=[index_pb2.TextItem(text="a yellow star", source="s1")])
    run(api.index_texts(texts))
    encoder.calls.clear()
    texts.items[0].source = "s2"
    assert run(api.index_texts(texts)).items[0].reused and encoder.calls == {}


class CountingReader:
    """A TextReader that counts its reads; `identity` can be changed (another engine)."""

    def __init__(self, reader) -> None:
        self.reader, self.identity, self.reads = reader, reader.identity, 0

    def read(self, image):
        self.reads += 1
        return self.reader.read(image)


def test_ocr_is_cached_by_image_bytes(encoder_worker, backend_settings):
    worker = EncoderWorker.__new__(EncoderWorker)
    worker.__dict__.update(encoder_worker.__dict__)
    settings = load_settings({"profile": "bundled", **backend_settings})
    worker.ocr_cache = cache_module.open_cache(settings, "ocr")
    worker.text_reader = reader = CountingReader(encoder_worker.text_reader)
    (img, _), (other, _) = make_pairs(2, seed=11, distinct=True)
    texts = [r.text for r in worker.encode_images([png(img), png(img), png(other)])]
    assert reader.reads == 2 and texts[0] == texts[1]
    reader.identity += ":another-engine"  # another engine or version
    worker.encode_images([png(img)])
    assert reader.reads == 3


def test_ask_uploads_are_read_once_per_pixels(encoder_worker, backend_settings):
    from services.serve.ask import AnswerWorker

    worker = AnswerWorker.__new__(AnswerWorker)  # the OCR step alone, without a VLM
    worker.ocr = reader = CountingReader(encoder_worker.text_reader)
    worker.ocr_cache = cache_module.open_cache(load_settings({"profile": "bundled", **backend_settings}), "ocr")
    (img, _), (other, _) = make_pairs(2, seed=13, distinct=True)
    texts = [worker._read(img), worker._read(img.copy()), worker._read(other)]
    assert reader.reads == 2 and texts[0] == texts[1]
    reader.identity += ":another-engine"
    worker._read(img)
    assert reader.reads == 3


def test_transcripts_are_cached_per_bytes_model_and_language(world):
    api, transcriber = world["api"], world["transcriber"]
    wav = b"RIFF" + b"\0" * 64

    def index(data, language=""):
        return run(api.index_audio(index_pb2.IndexAudioRequest(data=data, language=language)))

    first = index(wav)
    second = index(wav)
    assert transcriber.transcribed == 1 and first.id == second.id and not second.created
    index(wav, "de")
    index(wav + b"\0")
    assert transcriber.transcribed == 3


def _ask(api, question="what is shown?", k=0, images=(), reveal=False, client="c1") -> qa_pb2.AskResponse:
    request = qa_pb2.AskRequest(question=question, images=list(images), retrieval=qa_pb2.Retrieval(k=k))
    return run(api.ask(request, reveal_retrieved=reveal, client_id=client))


def test_answers_are_cached_by_everything_they_depend_on(world):
    api, answerer = world["api"], world["answerer"]
    shot = png(make_pairs(1, seed=3)[0][0])
    first = _ask(api, images=[shot])
    again = _ask(api, question=" what is  shown? ", images=[shot])
    assert answerer.asked == 1 and again.cached and again.text == first.text and not first.cached
    assert again.tokens_in == 0 and first.tokens_in == 7
    assert answerer.identity_calls == 1  # a constant: asked of the Answerer once, not per call
    misses = [
        lambda: _ask(api, images=[shot, shot]),  # other uploads
        lambda: _ask(api, question="what colour is it?", images=[shot]),  # another question
        lambda: _ask(api, images=[shot], reveal=True),  # a caller who may see personal data
        lambda: _ask(api, images=[shot], client="other-tenant"),  # another client: never its repeat
    ]
    for n, miss in enumerate(misses, start=2):
        assert not miss().cached and answerer.asked == n
    for key, value in (("prompt_digest", "sha256:2"), ("vlm", "vlm-b"), ("ask", {"x": 2})):
        answerer.identity_value[key] = value  # a changed prompt file, another VLM, other guards
        api._identity = None  # ... take effect with a new deployment (the Ingress asks again)
        assert not _ask(api, images=[shot]).cached
        assert _ask(api, images=[shot]).cached  # and then that answer is cached in turn
    api._info = replace(run(api.info()), model_version="v2")  # another CLIP model
    assert not _ask(api, images=[shot]).cached


def test_a_write_to_the_collection_invalidates_answers_that_read_it(world):
    api, answerer = world["api"], world["answerer"]
    add = index_pb2.IndexTextsRequest(items=[index_pb2.TextItem(text="printer error E-42: tray empty")])
    run(api.index_texts(add))
    assert not _ask(api, k=3).cached and _ask(api, k=3).cached
    assert not _ask(api, k=0).cached and _ask(api, k=0).cached
    run(api.index_texts(index_pb2.IndexTextsRequest(items=[index_pb2.TextItem(text="a new note")])))
    assert not _ask(api, k=3).cached  # the collection changed: asked again
    assert _ask(api, k=0).cached  # no retrieval: the collection does not matter
    ids = [h.item.id for h in run(api.search_text(search_pb2.SearchTextRequest(query="note"))).hits]
    run(api.delete(index_pb2.DeleteRequest(ids=index_pb2.IdList(ids=ids[:1]))))
    assert not _ask(api, k=3).cached
    assert answerer.asked == 4


def test_abstentions_are_not_cached_and_entries_expire(world, backend_settings, tmp_path):
    api, answerer = world["api"], world["answerer"]
    answerer.verdict = Verdict.ABSTAINED
    _ask(api)
    assert not _ask(api).cached and answerer.asked == 2
    answerer.verdict = Verdict.ANSWERED
    short = load_settings(
        {
            "profile": "bundled",
            "data_dir": str(tmp_path / "short"),
            "cache": {**backend_settings.get("cache", {}), "answers": {"ttl_s": 0.3}},
        }
    )
    index = IndexWorker(short)
    quick = LoupeApi(short, world["encoder"], ThreadCalls(index), None, answerer)
    try:
        _ask(quick, question="expiring?")
        assert _ask(quick, question="expiring?").cached
        time.sleep(0.5)
        assert not _ask(quick, question="expiring?").cached
    finally:
        index.close()


def test_switched_off_caches_do_nothing(encoder_worker, tmp_path):
    settings = load_settings({"profile": "bundled", "data_dir": str(tmp_path), "cache": {"enabled": False}})
    index = IndexWorker(settings)
    answerer = FakeAnswerer()
    api = LoupeApi(settings, ThreadCalls(encoder_worker), ThreadCalls(index), None, answerer)
    try:
        assert not _ask(api).cached and not _ask(api).cached and answerer.asked == 2
        text = index_pb2.IndexTextsRequest(items=[index_pb2.TextItem(text="once more")])
        run(api.index_texts(text))
        assert not run(api.index_texts(text)).items[0].reused
    finally:
        index.close()
