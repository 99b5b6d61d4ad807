"""The relational store for usage and audit records: one schema, two real databases.

    EventStore("sqlite:///abs/path/loupe-events.db")        the embedded default (data folder)
    EventStore("postgresql://user:pass@host:5432/loupe")     a PostgreSQL server (psycopg 3)

Usage is one row per (UTC day, client, RPC, status code) whose counters grow; audit is one
row per write or delete. Both are append/increment only; nothing here deletes.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from encoders.common.errors import InvalidInput, StoreUnavailable

COUNTERS = ("calls", "items", "audio_s")
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS loupe_usage (
        day TEXT NOT NULL, client TEXT NOT NULL, rpc TEXT NOT NULL, code TEXT NOT NULL,
        calls BIGINT NOT NULL DEFAULT 0, items BIGINT NOT NULL DEFAULT 0, audio_s DOUBLE PRECISION NOT NULL DEFAULT 0,
        PRIMARY KEY (day, client, rpc, code))""",
    """CREATE TABLE IF NOT EXISTS loupe_audit (
        at TEXT NOT NULL, client TEXT NOT NULL, rpc TEXT NOT NULL, collection TEXT NOT NULL,
        code TEXT NOT NULL, count BIGINT NOT NULL, target TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS loupe_audit_client_at ON loupe_audit (client, at)",
)


@dataclass(frozen=True)
class UsageRow:
    day: str
    client: str
    rpc: str
    code: str
    calls: int = 0
    items: int = 0
    audio_s: float = 0.0


@dataclass(frozen=True)
class AuditRecord:
    at: str  # ISO 8601 UTC
    client: str
    rpc: str
    collection: str
    code: str
    count: int
    # What was written or deleted: {"ids": [...]} or {"filter": {...}}.
    target: dict[str, Any] = field(default_factory=dict)


def default_url(data_dir: str) -> str:
    return "sqlite:///" + str((Path(data_dir) / "loupe-events.db").resolve())


class EventStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        if url.startswith("sqlite:///"):
            import sqlite3

            path = Path(url.removeprefix("sqlite:///"))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")  # several Ingress replicas write one file
            except (OSError, sqlite3.Error) as exc:
                raise StoreUnavailable(f"cannot open the events database {path}: {exc}") from None
            self.kind, self._param = "sqlite", "?"
        elif url.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg

                self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
            except ImportError:
                raise StoreUnavailable(
                    "events_url is PostgreSQL but psycopg is not installed: pip install psycopg"
                ) from None
            except Exception as exc:  # psycopg.OperationalError and friends
                raise StoreUnavailable(f"cannot reach PostgreSQL for events ({_safe(url)}): {exc}") from None
            self.kind, self._param = "postgresql", "%s"
        else:
            raise InvalidInput(f"events_url {url!r} must start with sqlite:/// or postgresql://", field="events_url")
        for statement in SCHEMA:
            self._exec(statement)

    # -- usage -----------------------------------------------------------------------------
    def add_usage(self, rows: list[UsageRow]) -> None:
        """Add each row's counters to the stored ones (one transaction)."""
        if not rows:
            return
        sql = (
            "INSERT INTO loupe_usage (day, client, rpc, code, calls, items, audio_s) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (day, client, rpc, code) DO UPDATE SET calls = loupe_usage.calls + excluded.calls, "
            "items = loupe_usage.items + excluded.items, audio_s = loupe_usage.audio_s + excluded.audio_s"
        )
        self._exec_many(sql, [(r.day, r.client, r.rpc, r.code, r.calls, r.items, r.audio_s) for r in rows])

    def usage(self, client: str | None = None, since: str | None = None) -> list[UsageRow]:
        where, args = _where(client, since, "day")
        rows = self._query(
            f"SELECT day, client, rpc, code, calls, items, audio_s FROM loupe_usage{where} ORDER BY day, client, rpc, code",
            args,
        )
        return [UsageRow(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), float(r[6])) for r in rows]

    def totals(self, client: str, day: str) -> dict[str, float]:
        """The client's counters summed over RPCs and codes for one day (for quotas)."""
        rows = self._query(
            "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(items), 0), COALESCE(SUM(audio_s), 0) FROM loupe_usage "
            "WHERE client = ? AND day = ? AND code = 'OK'",
            (client, day),
        )
        ask = self._query(
            "SELECT COALESCE(SUM(calls), 0) FROM loupe_usage WHERE client = ? AND day = ? AND rpc = 'Ask' AND code = 'OK'",
            (client, day),
        )
        calls, items, audio = rows[0]
        return {"calls": float(calls), "items": float(items), "audio_s": float(audio), "ask_calls": float(ask[0][0])}

    # -- audit -----------------------------------------------------------------------------
    def add_audit(self, record: AuditRecord) -> None:
        self._exec_many(
            "INSERT INTO loupe_audit (at, client, rpc, collection, code, count, target) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    record.at,
                    record.client,
                    record.rpc,
                    record.collection,
                    record.code,
                    record.count,
                    json.dumps(record.target, sort_keys=True),
                )
            ],
        )

    def audit(self, client: str | None = None, since: str | None = None, limit: int = 1000) -> list[AuditRecord]:
        where, args = _where(client, since, "at")
        rows = self._query(
            f"SELECT at, client, rpc, collection, code, count, target FROM loupe_audit{where} ORDER BY at LIMIT ?",
            (*args, int(limit)),
        )
        return [AuditRecord(r[0], r[1], r[2], r[3], r[4], int(r[5]), json.loads(r[6])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- plumbing --------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self._param == "?" else sql.replace("?", "%s")

    def _exec(self, sql: str, args: tuple = ()) -> None:
        self._exec_many(sql, [args])

    def _exec_many(self, sql: str, rows: list[tuple]) -> None:
        with self._lock, self._errors():
            cur = self._conn.cursor()
            try:
                if len(rows) > 1:
                    cur.execute("BEGIN")
                for args in rows:
                    cur.execute(self._sql(sql), args)
                if len(rows) > 1:
                    cur.execute("COMMIT")
            except BaseException:
                if len(rows) > 1:
                    cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock, self._errors():
            cur = self._conn.cursor()
            try:
                cur.execute(self._sql(sql), args)
                return list(cur.fetchall())
            finally:
                cur.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (InvalidInput, StoreUnavailable):
            raise
        except Exception as exc:  # sqlite3.Error, psycopg.Error: a full disk, a dropped connection
            raise StoreUnavailable(f"the events database ({_safe(self.url)}) failed: {exc}") from None


def _where(client: str | None, since: str | None, column: str) -> tuple[str, tuple]:
    parts, args = [], []
    if client:
        parts.append("client = ?")
        args.append(client)
    if since:
        parts.append(f"{column} >= ?")
        args.append(since)
    return (" WHERE " + " AND ".join(parts) if parts else ""), tuple(args)


def _safe(url: str) -> str:
    """The URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def today(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")


def as_json(rows: list) -> list[dict]:
    return [asdict(r) for r in rows]
