"""The relational store for usage and audit records: one schema, two real databases.

    EventStore("sqlite:///abs/path/loupe-events.db")        the embedded default (data folder)
    EventStore("postgresql://user:pass@host:5432/loupe")     a PostgreSQL server (psycopg 3)

Usage is one row per (UTC day, client, RPC, status code) whose counters grow; audit is one
row per write or delete. Both are append/increment only; nothing here deletes. The same
database holds what users saw and said about it (`services.events.feedback`), through
`execute` and `query`.
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

# Usage counters and their column types; a database made before a counter existed gets its
# column added when it is opened.
COUNTERS = {
    "calls": "BIGINT",
    "items": "BIGINT",
    "audio_s": "DOUBLE PRECISION",
    "tokens_in": "BIGINT",  # VLM prompt tokens (Ask, all drafts)
    "tokens_out": "BIGINT",  # VLM generated tokens
}
_COLUMNS = ", ".join(COUNTERS)
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS loupe_usage (
        day TEXT NOT NULL, client TEXT NOT NULL, rpc TEXT NOT NULL, code TEXT NOT NULL,
        """
    + "".join(f"{c} {kind} NOT NULL DEFAULT 0, " for c, kind in COUNTERS.items())
    + "PRIMARY KEY (day, client, rpc, code))",
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
    tokens_in: int = 0
    tokens_out: int = 0

    def counters(self) -> tuple:
        return tuple(getattr(self, name) for name in COUNTERS)


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
            raise InvalidInput(
                f"events_url {_safe(url)!r} must start with sqlite:/// or postgresql://", field="events_url"
            )
        for statement in SCHEMA:
            self._exec(statement)
        self._add_missing_counters()

    def _add_missing_counters(self) -> None:
        with self._lock, self._errors():
            cur = self._conn.cursor()
            try:
                cur.execute("SELECT * FROM loupe_usage LIMIT 0")
                have = {d[0] for d in cur.description}
            finally:
                cur.close()
        for name, kind in COUNTERS.items():
            if name not in have:
                self._exec(f"ALTER TABLE loupe_usage ADD COLUMN {name} {kind} NOT NULL DEFAULT 0")

    # -- usage -----------------------------------------------------------------------------
    def add_usage(self, rows: list[UsageRow]) -> None:
        """Add each row's counters to the stored ones (one transaction)."""
        if not rows:
            return
        sql = (
            f"INSERT INTO loupe_usage (day, client, rpc, code, {_COLUMNS}) VALUES (?, ?, ?, ?{', ?' * len(COUNTERS)}) "
            "ON CONFLICT (day, client, rpc, code) DO UPDATE SET "
            + ", ".join(f"{c} = loupe_usage.{c} + excluded.{c}" for c in COUNTERS)
        )
        self._exec_many(sql, [(r.day, r.client, r.rpc, r.code, *r.counters()) for r in rows])

    def usage(self, client: str | None = None, since: str | None = None) -> list[UsageRow]:
        where, args = _where(client, since, "day")
        rows = self._query(
            f"SELECT day, client, rpc, code, {_COLUMNS} FROM loupe_usage{where} ORDER BY day, client, rpc, code",
            args,
        )
        return [UsageRow(*r[:4], *(counter_value(c, v) for c, v in zip(COUNTERS, r[4:], strict=True))) for r in rows]

    def totals(self, client: str, day: str) -> dict[str, float]:
        """The client's counters summed over RPCs and codes for one day (for quotas)."""
        sums = ", ".join(f"COALESCE(SUM({c}), 0)" for c in COUNTERS)
        rows = self._query(
            f"SELECT {sums} FROM loupe_usage WHERE client = ? AND day = ? AND code = 'OK'",
            (client, day),
        )
        ask = self._query(
            "SELECT COALESCE(SUM(calls), 0) FROM loupe_usage WHERE client = ? AND day = ? AND rpc = 'Ask' AND code = 'OK'",
            (client, day),
        )
        totals = {c: float(v) for c, v in zip(COUNTERS, rows[0], strict=True)}
        return {**totals, "ask_calls": float(ask[0][0])}

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

    def execute(self, sql: str, args: tuple = ()) -> int:
        """One statement ("?" placeholders on either database); the rows it changed."""
        return self._exec_many(sql, [args])

    def execute_many(self, statements: list[tuple[str, tuple]]) -> None:
        """Several statements in one transaction."""
        self._exec_many(None, statements)

    def _exec_many(self, sql: str | None, rows: list[tuple]) -> int:
        """`sql` once per args tuple of `rows` (sql None: rows are (sql, args) pairs), in one
        transaction when there are several; the rows changed, summed."""
        changed = 0
        with self._lock, self._errors():
            cur = self._conn.cursor()
            try:
                if len(rows) > 1:
                    cur.execute("BEGIN")
                for row in rows:
                    statement, args = (sql, row) if sql is not None else row
                    cur.execute(self._sql(statement), args)
                    changed += max(cur.rowcount, 0)
                if len(rows) > 1:
                    cur.execute("COMMIT")
            except BaseException:
                if len(rows) > 1:
                    cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()
        return changed

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._query(sql, args)

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


def counter_value(counter: str, value) -> int | float:
    """A counter's amount as its column stores it (int, or float for seconds)."""
    return float(value) if COUNTERS[counter].startswith("DOUBLE") else int(value)


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
    """The URL without its credentials (password, token userinfo, ?password=)."""
    from encoders.common.urls import redact_url

    return redact_url(url)


def today(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")


def as_json(rows: list) -> list[dict]:
    return [asdict(r) for r in rows]
