"""Usage and audit records, in SQLite and in a real PostgreSQL server; meter, limits, quotas."""

from __future__ import annotations

import datetime as dt

import pytest

from encoders.common.errors import InvalidInput, Overloaded, StoreUnavailable
from services.events.store import AuditRecord, EventStore, UsageRow
from services.gateway.clients import Client, Limits
from services.gateway.limits import RateLimiter, call_adds, check_quota
from services.gateway.meter import Meter
from tests.fixtures import postgres as pg

NOW = dt.datetime(2026, 12, 2, 23, 59, 0, tzinfo=dt.UTC)


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
    store._exec("DROP TABLE IF EXISTS loupe_usage, loupe_audit")  # a clean schema per test
    store.close()
    return url


def test_usage_adds_up_and_survives_reopening(store_url) -> None:
    store = EventStore(store_url)
    store.add_usage([UsageRow("2026-12-01", "a", "IndexTexts", "OK", 2, 10, 0.0)])
    store.add_usage(
        [
            UsageRow("2026-12-01", "a", "IndexTexts", "OK", 1, 5, 0.0),
            UsageRow("2026-12-02", "a", "IndexAudio", "OK", 1, 1, 42.5),
            UsageRow("2026-12-02", "a", "Ask", "OK", 3, 0, 0.0),
            UsageRow("2026-12-02", "b", "SearchText", "PERMISSION_DENIED", 4, 0, 0.0),
        ]
    )
    store.close()
    again = EventStore(store_url)  # a restart: what was written is there
    assert again.usage("a", "2026-12-01")[0] == UsageRow("2026-12-01", "a", "IndexTexts", "OK", 3, 15, 0.0)
    assert [r.client for r in again.usage(since="2026-12-02")] == ["a", "a", "b"]
    assert again.totals("a", "2026-12-02") == {
        "calls": 4.0,
        "items": 1.0,
        "audio_s": 42.5,
        "tokens_in": 0.0,
        "tokens_out": 0.0,
        "ask_calls": 3.0,
    }
    assert again.totals("b", "2026-12-02")["calls"] == 0  # refused calls do not count against quotas
    again.close()


def test_vlm_tokens_add_up_per_row(store_url) -> None:
    store = EventStore(store_url)
    store.add_usage([UsageRow("2026-12-02", "a", "Ask", "OK", 1, tokens_in=900, tokens_out=40)])
    store.add_usage([UsageRow("2026-12-02", "a", "Ask", "OK", 1, tokens_in=850, tokens_out=35)])
    [row] = store.usage("a")
    assert (row.calls, row.tokens_in, row.tokens_out) == (2, 1750, 75)
    assert store.totals("a", "2026-12-02")["tokens_out"] == 75
    store.close()


def test_a_database_from_before_the_token_counters_gets_them_and_keeps_its_rows(store_url) -> None:
    store = EventStore(store_url)
    store._exec("DROP TABLE IF EXISTS loupe_usage")
    store._exec(
        "CREATE TABLE loupe_usage (day TEXT NOT NULL, client TEXT NOT NULL, rpc TEXT NOT NULL, code TEXT NOT NULL, "
        "calls BIGINT NOT NULL DEFAULT 0, items BIGINT NOT NULL DEFAULT 0, audio_s DOUBLE PRECISION NOT NULL DEFAULT 0, "
        "PRIMARY KEY (day, client, rpc, code))"
    )
    store._exec(
        "INSERT INTO loupe_usage (day, client, rpc, code, calls, items, audio_s) VALUES ('2026-12-01', 'a', 'Ask', 'OK', 5, 0, 0)"
    )
    store.close()
    again = EventStore(store_url)
    again.add_usage([UsageRow("2026-12-01", "a", "Ask", "OK", 1, tokens_in=10, tokens_out=2)])
    assert again.usage() == [UsageRow("2026-12-01", "a", "Ask", "OK", 6, 0, 0.0, 10, 2)]
    again.close()


def test_audit_records_in_order(store_url) -> None:
    store = EventStore(store_url)
    store.add_audit(
        AuditRecord("2026-12-02T10:00:00.000+00:00", "a", "IndexTexts", "docs", "OK", 2, {"ids": ["x", "y"]})
    )
    store.add_audit(AuditRecord("2026-12-02T11:00:00.000+00:00", "b", "Delete", "b", "OK", 7, {"filter": {"must": []}}))
    assert [r.count for r in store.audit()] == [2, 7]
    assert store.audit("a")[0].target == {"ids": ["x", "y"]}
    assert [r.client for r in store.audit(since="2026-12-02T10:30")] == ["b"]
    assert len(store.audit(limit=1)) == 1
    store.close()


def test_bad_events_url_and_unreachable_server() -> None:
    with pytest.raises(InvalidInput, match="sqlite:/// or postgresql://"):
        EventStore("mysql://x")
    with pytest.raises(StoreUnavailable, match=r"cannot reach PostgreSQL .*:\*\*\*@"):
        EventStore("postgresql://loupe:secret@127.0.0.1:1/db")


def test_meter_aggregates_flushes_and_counts_pending_for_quotas(tmp_path) -> None:
    store = EventStore(f"sqlite:///{tmp_path}/e.db")
    meter = Meter(store, clock=lambda: NOW, flush_s=3600)
    meter.record("a", "IndexTexts", "OK", items=3)
    meter.record("a", "IndexTexts", "OK", items=2)
    meter.record("a", "IndexTexts", "INVALID_ARGUMENT")
    assert meter.used_today("a")["items"] == 5 and store.usage() == []  # pending, not written yet
    meter.flush()
    assert [(r.code, r.calls, r.items) for r in store.usage()] == [("INVALID_ARGUMENT", 1, 0), ("OK", 2, 5)]
    meter.record("a", "Ask", "OK", tokens_in=700, tokens_out=30)
    used = meter.used_today("a")
    assert used["ask_calls"] == 1 and used["tokens_in"] == 700 and used["tokens_out"] == 30
    with pytest.raises(ValueError, match="unknown usage counter"):
        meter.record("a", "Ask", "OK", tokens=1)
    meter.close()
    totals = store.totals("a", "2026-12-02")  # close flushed it
    assert totals["ask_calls"] == 1 and totals["tokens_in"] == 700


def client(**limits) -> Client:
    return Client("c", (), frozenset({"search"}), ("*",), Limits(**limits))


def test_rate_limit_with_burst_and_a_lower_one_for_expensive_calls() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    c = client(rate=2, burst=2, expensive_rate=0.5, expensive_burst=1)
    limiter.check(c, "SearchText")
    limiter.check(c, "SearchText")
    with pytest.raises(Overloaded, match="over its rate limit") as err:
        limiter.check(c, "SearchText")
    assert 0.4 < err.value.retry_after_s <= 0.5
    now[0] += 0.5
    limiter.check(c, "Ask")  # one token back for the rate, the expensive bucket is full
    now[0] += 0.5
    with pytest.raises(Overloaded, match="expensive_rate"):
        limiter.check(c, "Ask")
    limiter.check(client(), "SearchText")  # no limits configured: never refused


def test_each_replica_enforces_its_share() -> None:
    limiter = RateLimiter(replicas=4, clock=lambda: 0.0)
    c = client(rate=8, burst=8)
    limiter.check(c, "Count")
    limiter.check(c, "Count")
    with pytest.raises(Overloaded):
        limiter.check(c, "Count")  # 8 / 4 replicas = a burst of 2 here


def test_quotas_say_which_and_when_they_renew() -> None:
    c = client(items_per_day=10, audio_seconds_per_day=60, ask_calls_per_day=2)
    check_quota(c, "IndexTexts", lambda: {"items": 9}, NOW)
    with pytest.raises(Overloaded, match="items_per_day quota") as err:
        check_quota(c, "IndexImages", lambda: {"items": 10}, NOW)
    assert err.value.retry_after_s == 60  # 23:59 UTC: renews in a minute
    with pytest.raises(Overloaded, match="audio_seconds_per_day"):
        check_quota(c, "Transcribe", lambda: {"audio_s": 61.0}, NOW)
    with pytest.raises(Overloaded, match="ask_calls_per_day"):
        check_quota(c, "Ask", lambda: {"ask_calls": 2}, NOW)
    tokens = client(vlm_tokens_per_day=1000)
    check_quota(tokens, "Ask", lambda: {"tokens_in": 800, "tokens_out": 199}, NOW)
    with pytest.raises(Overloaded, match="vlm_tokens_per_day quota"):
        check_quota(tokens, "Ask", lambda: {"tokens_in": 800, "tokens_out": 200}, NOW)
    check_quota(c, "SearchText", lambda: {"items": 99}, NOW)  # searching draws on no quota


def test_a_quota_counts_what_the_call_itself_adds() -> None:
    from protos.loupe.v1 import index_pb2

    c = client(items_per_day=5, ask_calls_per_day=1)
    twenty = index_pb2.IndexTextsRequest(items=[index_pb2.TextItem(text=f"t{i}") for i in range(20)])
    with pytest.raises(Overloaded, match="this call adds 20 and 5 are left"):
        check_quota(c, "IndexTexts", lambda: {}, NOW, call_adds("IndexTexts", twenty))
    five = index_pb2.IndexTextsRequest(items=twenty.items[:5])
    check_quota(c, "IndexTexts", lambda: {}, NOW, call_adds("IndexTexts", five))  # exactly the quota
    with pytest.raises(Overloaded, match="this call adds 2 and 1 are left"):
        check_quota(c, "IndexTexts", lambda: {"items": 4}, NOW, {"items": 2})
    check_quota(c, "Ask", lambda: {}, NOW, call_adds("Ask", None))
    with pytest.raises(Overloaded, match="ask_calls_per_day"):
        check_quota(c, "Ask", lambda: {"ask_calls": 1}, NOW, call_adds("Ask", None))


def test_calls_running_at_once_cannot_both_take_the_last_items(tmp_path) -> None:
    meter = Meter(EventStore(f"sqlite:///{tmp_path}/e.db"), clock=lambda: NOW, flush_s=3600)
    c = client(items_per_day=10)
    used = lambda: meter.used_today(c.id)  # noqa: E731
    check_quota(c, "IndexTexts", used, NOW, {"items": 6})
    first = meter.claim(c.id, {"items": 6})  # the first call runs
    with pytest.raises(Overloaded, match="adds 6 and 4 are left"):
        check_quota(c, "IndexTexts", used, NOW, {"items": 6})  # a second one at the same time
    meter.release(first)
    meter.record(c.id, "IndexTexts", "OK", items=6)  # the first one ended and is counted
    assert meter.used_today(c.id)["items"] == 6
    meter.release(meter.claim(c.id, {"items": 4}))  # a failed call: its claim goes, nothing counted
    assert meter.used_today(c.id)["items"] == 6
    meter.close()


def test_usage_is_kept_for_the_next_flush_when_the_database_fails(tmp_path) -> None:
    store = EventStore(f"sqlite:///{tmp_path}/e.db")
    meter = Meter(store, clock=lambda: NOW, flush_s=3600)
    meter.record("a", "Count", "OK")
    store._conn.close()  # the database goes away (a full disk, a dropped connection)
    with pytest.raises(StoreUnavailable, match="events database"):
        meter.flush()
    meter.store = EventStore(f"sqlite:///{tmp_path}/e.db")
    meter.flush()
    assert [(r.rpc, r.calls) for r in meter.store.usage()] == [("Count", 1)]
    meter.close()


def test_an_audit_record_the_database_refused_is_written_by_the_next_flush(tmp_path) -> None:
    store = EventStore(f"sqlite:///{tmp_path}/e.db")
    meter = Meter(store, clock=lambda: NOW, flush_s=3600)
    meter.audit("a", "IndexTexts", "docs", "OK", 1, {"ids": ["x"]})
    store._conn.close()  # the database goes away
    with pytest.raises(StoreUnavailable):
        meter.audit("a", "Delete", "docs", "OK", 2, {"ids": ["y", "z"]})
    with pytest.raises(StoreUnavailable):
        meter.flush()  # still down: kept
    meter.store = EventStore(f"sqlite:///{tmp_path}/e.db")
    meter.flush()
    meter.flush()  # written once, not again
    assert [(r.rpc, r.count) for r in meter.store.audit()] == [("IndexTexts", 1), ("Delete", 2)]
    meter.close()


def test_audio_seconds_a_call_adds_are_read_from_its_headers_before_it_runs() -> None:
    from pathlib import Path

    from encoders.audio.decode import AudioLimits
    from services.gateway.limits import declared_audio_s

    silence = (Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "silence_60s.flac").read_bytes()
    seconds = declared_audio_s(silence, AudioLimits())
    assert 59 <= seconds <= 61
    assert declared_audio_s(b"not audio at all", AudioLimits()) == 0.0  # the call itself says why
    c = client(audio_seconds_per_day=100)
    check_quota(c, "Transcribe", lambda: {"audio_s": 30.0}, NOW, {"audio_s": seconds})
    with pytest.raises(Overloaded, match="audio_seconds_per_day quota \\(100\\).*this call adds 60"):
        check_quota(c, "IndexAudio", lambda: {"audio_s": 50.0}, NOW, {"audio_s": seconds})


def test_usage_being_written_still_counts_against_a_quota(tmp_path) -> None:
    """Between a flush taking the pending rows and the database committing them, they are in
    neither place; a quota check in that window must still see them."""
    import threading

    store = EventStore(f"sqlite:///{tmp_path}/e.db")
    meter = Meter(store, clock=lambda: NOW, flush_s=3600)
    meter.record("a", "IndexTexts", "OK", items=10)
    assert meter.used_today("a")["items"] == 10  # caches the stored totals (none yet)
    writing, release = threading.Event(), threading.Event()
    add_usage = store.add_usage

    def slow_add_usage(rows):
        writing.set()
        release.wait(5)
        add_usage(rows)

    store.add_usage = slow_add_usage
    flush = threading.Thread(target=meter.flush)
    flush.start()
    assert writing.wait(5)
    seen_during = meter.used_today("a")["items"]
    release.set()
    flush.join(5)
    assert seen_during >= 10 and meter.used_today("a")["items"] == 10
    meter.close()
