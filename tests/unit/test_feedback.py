"""Feedback: shown records, ratings, the review queue and retention, in SQLite and a real
PostgreSQL; Submit's errors; the export to eval cases."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest

from encoders.common.errors import AlreadyExists, InvalidInput, NotFound
from lmm.evals import load_cases
from protos.loupe.v1 import common_pb2, feedback_pb2, qa_pb2, search_pb2
from services.cli.feedback import export_cases
from services.client.sdk import build_filter
from services.events.feedback import Feedback, FeedbackStore, Shown, ShownWriter
from services.events.store import EventStore
from services.gateway.clients import Client
from services.rpc import feedback as rpc
from tests.fixtures import postgres as pg

NOW = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.UTC)
PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 32
DESK = Client("desk", (), frozenset({"search", "ask"}), ("support",))
OTHER = Client("other", (), frozenset({"search"}), ("support",))
OPS = Client("ops", (), frozenset({"admin"}), ("*",))


@pytest.fixture(scope="module")
def pg_url():
    if not pg.available():
        pytest.skip(pg.NOT_INSTALLED)
    with pg.postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    url = request.getfixturevalue("pg_url")
    store = EventStore(url)
    store.execute("DROP TABLE IF EXISTS loupe_shown, loupe_uploads, loupe_feedback")  # a clean schema per test
    store.close()
    return url


def at(minutes: float = 0, days: float = 0) -> str:
    return (NOW + dt.timedelta(minutes=minutes, days=days)).isoformat(timespec="milliseconds")


def search_shown(rid: str, when: str, client: str = "desk", hits=("a", "b", "c")) -> Shown:
    shown = {
        "query": {"text": "red circle"},
        "options": {"limit": 3, "offset": 0, "mode": "dense", "modalities": [], "where": {"team": "it"}},
        "model_id": "bundled:tiny-clip",
        "hits": [{"id": h, "score": 0.5, "modality": "text", "source": "", "text": h} for h in hits],
    }
    return Shown(rid, when, client, "SearchText", "support", "", shown)


def ask_shown(rid: str, when: str, verdict: str = "answered", *, uploads=(PNG,), client: str = "desk") -> Shown:
    shown = {
        "question": "What error does the printer show?",
        "images": len(uploads),
        "retrieval": {"k": 0, "collection": "", "where": {}},
        "text": "E-42 [upload-1]" if verdict == "answered" else "",
        "verdict": verdict,
        "citations": ["upload-1"] if verdict == "answered" else [],
        "cited": [],
        "guards": [{"guard": "grounding", "passed": verdict == "answered", "reason": "no support", "action": ""}],
        "model_id": "bundled:tiny-vlm",
        "prompt_version": "ask/v1",
        "prompt_digest": "abc",
        "tokens_in": 10,
        "tokens_out": 3,
        "attempts": 1,
    }
    return Shown(rid, when, client, "Ask", "", verdict, shown, tuple(uploads))


def test_shown_and_feedback_survive_reopening(store_url) -> None:
    store = FeedbackStore(EventStore(store_url))
    store.add_shown([search_shown("s1", at()), ask_shown("a1", at(1))])
    store.add_shown([search_shown("s1", at(5), client="someone-else")])  # the same id again: the first stays
    assert store.add_feedback(Feedback("s1", "desk", at(2), vote="down", comment="wrong shape", used_ids=("b",)))
    assert not store.add_feedback(Feedback("s1", "desk", at(3), vote="up"))  # once per client
    assert store.add_feedback(Feedback("s1", "ops", at(4), stars=4))
    store.db.close()

    again = FeedbackStore(EventStore(store_url))  # a restart
    s1 = again.shown("s1")
    assert s1.client == "desk" and s1.shown["hits"][1]["id"] == "b" and s1.ids() == {"a", "b", "c"}
    a1 = again.shown("a1", with_uploads=True)
    assert a1.uploads == (PNG,) and a1.verdict == "answered" and a1.ids() == {"upload-1"}
    ratings = again.feedback("s1")
    assert [(f.client, f.rating, f.used_ids) for f in ratings] == [("desk", "down", ("b",)), ("ops", "4/5", ())]
    assert ratings[0].negative and ratings[1].positive
    assert again.shown("missing") is None


def test_review_queue_holds_abstentions_blocks_and_down_votes_until_reviewed(store_url) -> None:
    store = FeedbackStore(EventStore(store_url))
    store.add_shown(
        [
            ask_shown("ok", at(0)),
            ask_shown("abst", at(1), "abstained"),
            ask_shown("blk", at(2), "blocked"),
            search_shown("bad", at(3)),
            search_shown("fine", at(4)),
            search_shown("meh", at(5)),
        ]
    )
    store.add_feedback(Feedback("bad", "desk", at(6), stars=1, comment="nothing relevant"))
    store.add_feedback(Feedback("fine", "desk", at(6), vote="up", used_ids=("a",)))
    store.add_feedback(Feedback("meh", "desk", at(6), stars=3))
    queue = store.listing("review")
    assert [x.shown.request_id for x in queue] == ["bad", "blk", "abst"]  # newest first
    assert queue[0].reasons == ["rated 1/5 by desk: nothing relevant"]
    assert queue[2].reasons == ["abstained (grounding: no support)"]
    assert {x.shown.request_id for x in store.listing("rated")} == {"abst", "blk", "bad", "fine", "meh"}
    assert [x.shown.request_id for x in store.listing("review", since=at(2))] == ["bad", "blk"]
    assert store.mark_reviewed("blk", "ops", "guard was right", at(7))
    assert not store.mark_reviewed("nope", "ops", "", at(7))
    assert [x.shown.request_id for x in store.listing("review", limit=5)] == ["bad", "abst"]
    reviewed = store.shown("blk")
    assert (reviewed.reviewed_by, reviewed.review_note) == ("ops", "guard was right")


def test_retention_keeps_rated_and_queued_records(store_url) -> None:
    store = FeedbackStore(EventStore(store_url))
    old = at(days=-40)
    store.add_shown(
        [
            search_shown("old-unrated", old),
            search_shown("old-rated", old),
            ask_shown("old-abstained", old, "abstained"),
            ask_shown("recent-answered", at(-60 * 30)),  # 30 hours ago: record kept, upload dropped
            ask_shown("recent-rated", at(-60 * 30)),
            ask_shown("fresh", at(-5)),
        ]
    )
    store.add_feedback(Feedback("old-rated", "desk", at(), vote="down"))
    store.add_feedback(Feedback("recent-rated", "desk", at(), vote="up"))
    store.purge(NOW, keep_days=30, upload_keep_hours=24)
    assert store.shown("old-unrated") is None
    assert store.shown("old-rated") is not None and store.shown("old-abstained") is not None
    assert store.shown("recent-answered", with_uploads=True).uploads == ()
    assert store.shown("recent-rated", with_uploads=True).uploads == (PNG,)
    assert store.shown("fresh", with_uploads=True).uploads == (PNG,)
    store.mark_reviewed("old-abstained", "ops", "", at())
    store.purge(NOW, keep_days=30, upload_keep_hours=24)
    assert store.shown("old-abstained") is None


# -- Submit ----------------------------------------------------------------------------------
@pytest.fixture
def writer(tmp_path):
    w = ShownWriter(FeedbackStore(EventStore(f"sqlite:///{tmp_path}/events.db")), flush_s=60)
    yield w
    w.close()


def submit(writer, client, **fields):
    return asyncio.run(rpc.submit(writer, client, feedback_pb2.FeedbackRequest(**fields), wait_s=0))


def test_submit_finds_a_record_still_in_the_buffer_and_refuses_a_second_rating(writer) -> None:
    writer.add(search_shown("s1", at()))  # not flushed yet: Submit flushes first
    done = submit(writer, DESK, request_id="s1", vote=feedback_pb2.VOTE_DOWN, used_ids=["b"], comment="no")
    assert done.rated_request_id == "s1" and done.stored_at
    with pytest.raises(AlreadyExists, match="already rated request 's1' \\(down"):
        submit(writer, DESK, request_id="s1", vote=feedback_pb2.VOTE_UP)
    ok = submit(writer, OPS, request_id="s1", stars=2)  # a reviewer (every collection) may rate any call
    assert ok.rated_request_id == "s1"
    assert [f.client for f in writer.store.feedback("s1")] == ["desk", "ops"]


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"request_id": "", "vote": 1}, "request_id", "empty"),
        ({"request_id": "s1"}, "vote", "exactly one"),
        ({"request_id": "s1", "vote": 1, "stars": 4}, "vote", "exactly one"),
        ({"request_id": "s1", "stars": 6}, "stars", "out of range"),
        ({"request_id": "s1", "stars": -1}, "stars", "out of range"),
        ({"request_id": "s1", "vote": 7}, "vote", "VOTE_UP"),
        ({"request_id": "s1", "vote": 1, "comment": "x" * 4001}, "comment", "at most 4000"),
        ({"request_id": "s1", "vote": 1, "used_ids": ["zzz"]}, "used_ids", "not in that response"),
        ({"request_id": "s1", "vote": 2, "corrected_answer": "blue"}, "corrected_answer", "search"),
        ({"request_id": "x\n", "vote": 1}, "request_id", "printable"),
    ],
)
def test_bad_feedback_is_refused_with_the_field_named(writer, fields, field, words) -> None:
    writer.add(search_shown("s1", at()))
    with pytest.raises(InvalidInput) as err:
        submit(writer, DESK, **fields)
    assert err.value.field == field and words in err.value.reason
    assert writer.store.feedback("s1") == []


def test_unknown_ids_and_other_clients_calls_are_not_found(writer) -> None:
    writer.add(search_shown("s1", at()))
    with pytest.raises(NotFound, match="no rated call has request id 'nope'"):
        submit(writer, DESK, request_id="nope", vote=1)
    with pytest.raises(NotFound):  # another client's call: as if it did not exist
        submit(writer, OTHER, request_id="s1", vote=1)


def test_list_and_mark_reviewed(writer) -> None:
    writer.add(ask_shown("a1", at(), "abstained"))
    listed = asyncio.run(rpc.list_feedback(writer, OPS, feedback_pb2.ListFeedbackRequest(with_uploads=True)))
    (record,) = listed.records
    assert record.verdict == "abstained" and record.uploads == [PNG] and record.reasons[0].startswith("abstained")
    with pytest.raises(InvalidInput, match="limit"):
        asyncio.run(rpc.list_feedback(writer, OPS, feedback_pb2.ListFeedbackRequest(limit=5000)))
    asyncio.run(rpc.mark_reviewed(writer, OPS, feedback_pb2.MarkReviewedRequest(request_id="a1", note="ok")))
    assert not asyncio.run(rpc.list_feedback(writer, OPS, feedback_pb2.ListFeedbackRequest())).records
    with pytest.raises(NotFound):
        asyncio.run(rpc.mark_reviewed(writer, OPS, feedback_pb2.MarkReviewedRequest(request_id="nope")))


# -- what is recorded --------------------------------------------------------------------------
def test_a_search_is_recorded_as_shown_with_personal_data_masked() -> None:
    request = search_pb2.SearchTextRequest(
        query="receipt of ann@example.com",
        options=search_pb2.SearchOptions(collection="support", limit=2, mode=search_pb2.SEARCH_MODE_HYBRID),
    )
    where = {"team": "it", "year": {"gte": 2020}, "tag": ["a", "b"], "owner": ["cc@example.com"]}
    request.options.filter.CopyFrom(build_filter(where))
    response = search_pb2.SearchResponse(model_id="m")
    hit = response.hits.add(score=0.25)
    hit.item.CopyFrom(common_pb2.Item(id="r1", modality=common_pb2.MODALITY_TEXT, text="mail bob@example.org"))
    shown = rpc.shown_of("SearchText", "desk", "rid-1", request, response, at())
    assert shown.collection == "support" and shown.verdict == ""
    assert "ann@example.com" not in json.dumps(shown.shown) and "bob@example.org" not in json.dumps(shown.shown)
    assert shown.shown["options"]["mode"] == "hybrid" and shown.shown["options"]["limit"] == 2
    assert shown.shown["options"]["where"] == {
        "team": "it",
        "year": {"gte": 2020.0},
        "tag": ["a", "b"],
        "owner": ["[email hidden]"],  # filter values are kept masked too
    }
    assert shown.shown["hits"] == [
        {"id": "r1", "score": 0.25, "modality": "text", "source": "", "text": shown.shown["hits"][0]["text"]}
    ]
    assert rpc.shown_of("Count", "desk", "rid-2", request, response, at()) is None


def test_an_answer_is_recorded_with_its_uploads_verdict_and_guards() -> None:
    request = qa_pb2.AskRequest(question="What is shown?", images=[PNG])
    response = qa_pb2.AskResponse(
        text="A circle [upload-1]",
        citations=["upload-1"],
        verdict=qa_pb2.ANSWER_VERDICT_ANSWERED,
        model_id="bundled:tiny-vlm",
        prompt_version="ask/v1",
        tokens_in=12,
    )
    response.guards.add(guard="grounding", passed=True)
    shown = rpc.shown_of("Ask", "desk", "rid-3", request, response, at())
    assert shown.uploads == (PNG,) and shown.verdict == "answered" and shown.collection == ""
    assert shown.shown["citations"] == ["upload-1"] and shown.shown["prompt_digest"]  # ask/v1 is a shipped file
    assert shown.shown["guards"][0] == {"guard": "grounding", "passed": True, "reason": "", "action": ""}


# -- export ------------------------------------------------------------------------------------
def listed_record(store: FeedbackStore, rid: str) -> feedback_pb2.FeedbackRecord:
    (item,) = [x for x in store.listing("rated", with_uploads=True) if x.shown.request_id == rid]
    return rpc.record_of(item)


def test_export_makes_eval_cases_the_eval_command_loads(writer, tmp_path) -> None:
    store = writer.store
    store.add_shown(
        [
            ask_shown("up", at(0)),
            ask_shown("corrected", at(1)),
            ask_shown("down-abst", at(2), "abstained"),
            ask_shown("down-plain", at(3)),
            ask_shown("unrated-abst", at(4), "abstained"),
            search_shown("bad-search", at(5)),
            search_shown("good-search", at(6)),
        ]
    )
    store.add_feedback(Feedback("up", "desk", at(10), vote="up"))
    store.add_feedback(Feedback("corrected", "desk", at(10), vote="down"))
    store.add_feedback(Feedback("corrected", "ops", at(11), vote="down", corrected_answer="E-43"))
    store.add_feedback(Feedback("down-abst", "desk", at(10), stars=1))
    store.add_feedback(Feedback("down-plain", "desk", at(10), vote="down"))
    store.add_feedback(Feedback("bad-search", "desk", at(10), vote="down", used_ids=("c",), comment="c only"))
    store.add_feedback(Feedback("good-search", "desk", at(10), vote="up", used_ids=("a",)))
    records = [rpc.record_of(x) for x in store.listing("rated", with_uploads=True)]
    ask, retrieval, skipped = export_cases(records, tmp_path / "out")

    by_id = {c["id"]: c for c in ask}
    assert by_id["up"]["expected_verdict"] == "answered" and by_id["up"]["expected_answer"] == "E-42 [upload-1]"
    assert by_id["up"]["expected_citations"] == ["upload-1"]
    assert by_id["corrected"]["expected_answer"] == "E-43"
    assert by_id["down-abst"]["expected_verdict"] == "answered"
    assert dict(skipped).keys() == {"down-plain", "unrated-abst"}
    assert "corrected answer" in dict(skipped)["down-plain"]
    cases = load_cases(tmp_path / "out" / "ask_cases.jsonl")  # the format of `loupe eval ask`
    assert {c.id for c in cases} == {"up", "corrected", "down-abst"}
    assert all(c.images[0].read_bytes() == PNG and c.images[0].suffix == ".png" for c in cases)

    lines = (tmp_path / "out" / "retrieval_cases.jsonl").read_text().splitlines()
    got = {c["id"]: c for c in map(json.loads, lines)}
    assert got == {c["id"]: c for c in retrieval}
    bad = got["bad-search"]
    assert bad["text"] == "red circle" and bad["collection"] == "support" and bad["where"] == {"team": "it"}
    assert bad["relevant"] == {"ids": ["c"]} and bad["not_relevant"] == {"ids": ["a", "b"]}
    assert bad["needs_label"] is False and bad["note"] == "c only"
    assert got["good-search"]["relevant"] == {"ids": ["a"]} and "not_relevant" not in got["good-search"]


def test_export_leaves_out_a_case_whose_uploads_were_dropped(writer, tmp_path) -> None:
    store = writer.store
    store.add_shown([ask_shown("gone", at(days=-2))])
    store.add_feedback(Feedback("gone", "desk", at(), vote="up"))
    store.db.execute("DELETE FROM loupe_uploads")
    _, _, skipped = export_cases([listed_record(store, "gone")], tmp_path / "out")
    assert "no longer kept" in dict(skipped)["gone"]


def test_records_made_at_flush_and_one_that_fails_loses_only_itself(writer) -> None:
    def broken():
        raise ValueError("cannot describe")

    writer.add(lambda: search_shown("later", at()))
    writer.add(broken)
    writer.add(search_shown("plain", at()))
    writer.flush()
    assert writer.store.shown("later") is not None and writer.store.shown("plain") is not None


# -- scope: a scoped admin reads and marks only its tenant's records --------------------------
def tenant_shown(rid: str, client: str, collection: str, verdict: str = "abstained") -> Shown:
    record = ask_shown(rid, at(), verdict, client=client)
    return Shown(record.request_id, record.at, client, "Ask", collection, verdict, record.shown, record.uploads)


def test_a_scoped_admin_lists_marks_and_rates_only_its_tenants_records(store_url) -> None:
    store = FeedbackStore(EventStore(store_url))
    store.add_shown(
        [
            tenant_shown("a-1", "a-app", "a-docs"),
            tenant_shown("b-1", "b-app", "b-docs"),
            tenant_shown("b-2", "b-app", "b_docs"),  # '_' is a LIKE wildcard: must not match "b-*"
            tenant_shown("B-1", "B-app", "B-docs"),  # another tenant, its name in capitals
            tenant_shown("x-1", "a-app", ""),  # no collection (Ask without retrieval): its client's only
            tenant_shown("o-1", "b-admin", ""),  # the admin's own call
        ]
    )
    b_admin = Client("b-admin", (), frozenset({"admin"}), ("b-*",))
    scope = rpc.scope_of(b_admin)
    assert {x.shown.request_id for x in store.listing("rated", scope=scope, with_uploads=True)} == {"b-1", "o-1"}
    assert rpc.scope_of(OPS) is None and len(store.listing("rated")) == 6
    assert not store.mark_reviewed("a-1", "b-admin", "", at(1), scope=scope)  # another tenant's: untouched
    assert not store.mark_reviewed("B-1", "b-admin", "", at(1), scope=scope)
    assert store.shown("a-1").reviewed_at == ""
    assert store.mark_reviewed("b-1", "b-admin", "", at(1), scope=scope)
    exact = rpc.scope_of(Client("c-admin", (), frozenset({"admin"}), ("b-docs",)))
    assert {x.shown.request_id for x in store.listing("rated", scope=exact)} == {"b-1"}


def test_submit_rates_only_own_calls_or_as_an_admin_within_its_scope(writer) -> None:
    writer.add(tenant_shown("a-1", "a-app", "a-docs", "answered"))
    b_admin = Client("b-admin", (), frozenset({"admin"}), ("b-*",))
    b_app = Client("b-app", (), frozenset({"search", "admin"}), ("*",))
    with pytest.raises(NotFound):
        submit(writer, b_admin, request_id="a-1", vote=1)
    with pytest.raises(NotFound):  # every collection, but not an admin of them: not its call
        submit(writer, Client("b-app", (), frozenset({"search"}), ("*",)), request_id="a-1", vote=1)
    assert submit(writer, b_app, request_id="a-1", vote=1).rated_request_id == "a-1"
    assert submit(writer, Client("a-app", (), frozenset({"ask"}), ("a-*",)), request_id="a-1", vote=2)


def test_list_feedback_and_mark_reviewed_rpcs_apply_the_callers_scope(writer) -> None:
    writer.add(tenant_shown("a-1", "a-app", "a-docs"))
    writer.add(tenant_shown("b-1", "b-app", "b-docs"))
    b_admin = Client("b-admin", (), frozenset({"admin"}), ("b-*",))
    listed = asyncio.run(rpc.list_feedback(writer, b_admin, feedback_pb2.ListFeedbackRequest(with_uploads=True)))
    assert [r.request_id for r in listed.records] == ["b-1"]
    with pytest.raises(NotFound):
        asyncio.run(rpc.mark_reviewed(writer, b_admin, feedback_pb2.MarkReviewedRequest(request_id="a-1")))
    assert writer.store.shown("a-1").reviewed_at == ""


def test_another_clients_call_is_not_found_after_the_same_wait_as_an_unknown_id(writer) -> None:
    import time

    writer.add(search_shown("s1", at()))
    started = time.monotonic()
    with pytest.raises(NotFound):
        asyncio.run(rpc.submit(writer, OTHER, feedback_pb2.FeedbackRequest(request_id="s1", vote=1), wait_s=0.4))
    assert time.monotonic() - started >= 0.4  # it waited, as for an id nobody was given
