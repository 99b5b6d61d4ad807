"""What users saw, and what they said about it: the tables behind FeedbackService.

    loupe_shown     one row per SearchText, SearchImage and Ask response sent (its request id,
                    client, collection, verdict, and the response as the user got it, JSON)
    loupe_uploads   the images uploaded with those calls (Ask screenshots, search-by-image)
    loupe_feedback  one rating per (request id, client): up/down or 1..5 stars, comment, the
                    ids the user used, a corrected answer

They live in the events database (`services.events.store.EventStore`: SQLite by default,
PostgreSQL when `events_url` says so). Shown records are written in batches once a second
(`ShownWriter`), so a search pays no database round trip. `purge` keeps storage bounded:
unrated records go after `keep_days` (abstained and blocked answers stay until reviewed),
uploads of unrated answered calls after `upload_keep_hours`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.events.store import EventStore

log = logging.getLogger("loupe")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS loupe_shown (
        request_id TEXT PRIMARY KEY, at TEXT NOT NULL, client TEXT NOT NULL, rpc TEXT NOT NULL,
        collection TEXT NOT NULL, verdict TEXT NOT NULL, shown TEXT NOT NULL,
        reviewed_at TEXT, reviewed_by TEXT, review_note TEXT)""",
    "CREATE INDEX IF NOT EXISTS loupe_shown_at ON loupe_shown (at)",
    """CREATE TABLE IF NOT EXISTS loupe_uploads (
        request_id TEXT NOT NULL, n INTEGER NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (request_id, n))""",
    """CREATE TABLE IF NOT EXISTS loupe_feedback (
        request_id TEXT NOT NULL, client TEXT NOT NULL, at TEXT NOT NULL, vote TEXT NOT NULL,
        stars INTEGER NOT NULL, comment TEXT NOT NULL, used_ids TEXT NOT NULL,
        corrected_answer TEXT NOT NULL, PRIMARY KEY (request_id, client))""",
)
NEEDS_REVIEW = ("abstained", "blocked")
_QUEUED = "s.verdict IN ('abstained', 'blocked')"
_NEGATIVE = "(f.vote = 'down' OR (f.stars BETWEEN 1 AND 2))"
# Shown records kept in memory while the database is down; older ones are dropped beyond it.
MAX_PENDING = 10_000
_COLUMNS = "request_id, at, client, rpc, collection, verdict, shown, reviewed_at, reviewed_by, review_note"


@dataclass(frozen=True)
class Shown:
    """One response as its user got it."""

    request_id: str
    at: str  # ISO 8601 UTC
    client: str
    rpc: str
    collection: str
    verdict: str  # Ask: answered | abstained | blocked; searches: ""
    shown: dict[str, Any]
    uploads: tuple[bytes, ...] = ()
    reviewed_at: str = ""
    reviewed_by: str = ""
    review_note: str = ""

    def ids(self) -> set[str]:
        """The item ids the user was shown: hits, or the answer's citations."""
        return {h["id"] for h in self.shown.get("hits", ())} | set(self.shown.get("citations", ()))


@dataclass(frozen=True)
class Feedback:
    request_id: str
    client: str
    at: str
    vote: str = ""  # "up" | "down" | "" (stars given instead)
    stars: int = 0  # 1..5, 0: vote given instead
    comment: str = ""
    used_ids: tuple[str, ...] = ()
    corrected_answer: str = ""

    @property
    def negative(self) -> bool:
        return self.vote == "down" or 1 <= self.stars <= 2

    @property
    def positive(self) -> bool:
        return self.vote == "up" or self.stars >= 4

    @property
    def rating(self) -> str:
        return self.vote or f"{self.stars}/5"


@dataclass(frozen=True)
class Scope:
    """The records a scoped admin may see: its own calls, and calls on collections it may use
    (names, or "prefix*" patterns as in the clients file)."""

    client: str
    collections: tuple[str, ...]

    def covers(self, record: Shown) -> bool:
        """The same rule as `sql`, for one record."""
        return record.client == self.client or any(
            record.collection == p or (p.endswith("*") and record.collection and record.collection.startswith(p[:-1]))
            for p in self.collections
        )

    def sql(self, alias: str = "") -> tuple[str, tuple]:
        """A WHERE condition (and its arguments) that keeps only records in this scope. A prefix
        is compared exactly (`substr`), not with LIKE: SQLite's LIKE ignores case, and "B-docs"
        is not in "b-*"."""
        col = f"{alias}collection"
        parts, args = [f"{alias}client = ?"], [self.client]
        for pattern in self.collections:
            if pattern.endswith("*"):
                prefix = pattern[:-1]
                parts.append(f"({col} <> '' AND substr({col}, 1, {len(prefix)}) = ?)")
                args.append(prefix)
            else:
                parts.append(f"{col} = ?")
                args.append(pattern)
        return "(" + " OR ".join(parts) + ")", tuple(args)


@dataclass
class Listed:
    """A shown record with its feedback and, for the review queue, why it is there."""

    shown: Shown
    feedback: list[Feedback] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        out = []
        s = self.shown
        if s.verdict in NEEDS_REVIEW:
            failed = [f"{g['guard']}: {g['reason']}" for g in s.shown.get("guards", ()) if not g.get("passed")]
            out.append(f"{s.verdict}" + (f" ({'; '.join(failed)})" if failed else ""))
        for f in self.feedback:
            if f.negative:
                out.append(f"rated {f.rating} by {f.client}" + (f": {f.comment}" if f.comment else ""))
        return out


class FeedbackStore:
    def __init__(self, db: EventStore) -> None:
        self.db = db
        for statement in SCHEMA:
            db.execute(statement)

    # -- shown -----------------------------------------------------------------------------
    def add_shown(self, records: list[Shown]) -> None:
        """Store the records (one transaction); a request id stored before keeps its first record."""
        statements = []
        for r in records:
            statements.append(
                (
                    f"INSERT INTO loupe_shown ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL) "
                    "ON CONFLICT (request_id) DO NOTHING",
                    (r.request_id, r.at, r.client, r.rpc, r.collection, r.verdict, json.dumps(r.shown)),
                )
            )
            statements += [
                (
                    "INSERT INTO loupe_uploads (request_id, n, data) VALUES (?, ?, ?) "
                    "ON CONFLICT (request_id, n) DO NOTHING",
                    (r.request_id, n, data),
                )
                for n, data in enumerate(r.uploads, start=1)
            ]
        if statements:
            self.db.execute_many(statements)

    def shown(self, request_id: str, *, with_uploads: bool = False) -> Shown | None:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM loupe_shown WHERE request_id = ?", (request_id,))
        if not rows:
            return None
        return self._shown(rows[0], with_uploads)

    def _shown(self, row: tuple, with_uploads: bool) -> Shown:
        uploads: tuple[bytes, ...] = ()
        if with_uploads:
            found = self.db.query("SELECT data FROM loupe_uploads WHERE request_id = ? ORDER BY n", (row[0],))
            uploads = tuple(bytes(r[0]) for r in found)
        return Shown(*row[:6], json.loads(row[6]), uploads, *(v or "" for v in row[7:]))

    # -- feedback --------------------------------------------------------------------------
    def add_feedback(self, fb: Feedback) -> bool:
        """Store it; False when this client already rated this request (nothing changes)."""
        changed = self.db.execute(
            "INSERT INTO loupe_feedback (request_id, client, at, vote, stars, comment, used_ids, corrected_answer) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, client) DO NOTHING",
            (
                fb.request_id,
                fb.client,
                fb.at,
                fb.vote,
                fb.stars,
                fb.comment,
                json.dumps(list(fb.used_ids)),
                fb.corrected_answer,
            ),
        )
        return changed > 0

    def feedback(self, request_id: str, client: str | None = None) -> list[Feedback]:
        """The ratings of one call, oldest first (only `client`'s when given)."""
        sql = "SELECT request_id, client, at, vote, stars, comment, used_ids, corrected_answer FROM loupe_feedback"
        sql += " WHERE request_id = ?" + (" AND client = ?" if client is not None else "") + " ORDER BY at"
        rows = self.db.query(sql, (request_id,) if client is None else (request_id, client))
        return [Feedback(*r[:4], int(r[4]), r[5], tuple(json.loads(r[6])), r[7]) for r in rows]

    # -- review ----------------------------------------------------------------------------
    def listing(
        self,
        view: str,
        since: str = "",
        limit: int = 100,
        *,
        with_uploads: bool = False,
        scope: Scope | None = None,
    ) -> list[Listed]:
        """view "review": abstained/blocked answers and down-voted calls not yet reviewed;
        "rated": every call with feedback and every abstained/blocked answer. Newest first.
        Only the records in `scope` when given (a scoped admin)."""
        rated = "EXISTS (SELECT 1 FROM loupe_feedback f WHERE f.request_id = s.request_id{})"
        if view == "review":
            where = f"s.reviewed_at IS NULL AND ({_QUEUED} OR {rated.format(' AND ' + _NEGATIVE)})"
        elif view == "rated":
            where = f"({_QUEUED} OR {rated.format('')})"
        else:
            raise ValueError(f"unknown view {view!r}")
        args: tuple = ()
        if since:
            where += " AND s.at >= ?"
            args = (since,)
        if scope is not None:
            condition, scoped = scope.sql("s.")
            where += f" AND {condition}"
            args += scoped
        columns = ", ".join(f"s.{c.strip()}" for c in _COLUMNS.split(","))
        rows = self.db.query(
            f"SELECT {columns} FROM loupe_shown s WHERE {where} ORDER BY s.at DESC LIMIT ?", (*args, int(limit))
        )
        return [Listed(self._shown(r, with_uploads), self.feedback(r[0])) for r in rows]

    def mark_reviewed(self, request_id: str, by: str, note: str, at: str, *, scope: Scope | None = None) -> bool:
        """False when there is no such record (in `scope`, when given)."""
        condition, args = scope.sql() if scope is not None else ("1 = 1", ())
        return (
            self.db.execute(
                "UPDATE loupe_shown SET reviewed_at = ?, reviewed_by = ?, review_note = ? "
                f"WHERE request_id = ? AND {condition}",
                (at, by, note, request_id, *args),
            )
            > 0
        )

    # -- retention -------------------------------------------------------------------------
    def purge(self, now: dt.datetime, keep_days: float, upload_keep_hours: float) -> None:
        """Drop unrated records older than keep_days (abstained/blocked ones once reviewed) and
        the uploads of unrated, unqueued calls older than upload_keep_hours."""
        unrated = "NOT EXISTS (SELECT 1 FROM loupe_feedback f WHERE f.request_id = s.request_id)"
        unqueued = f"(NOT {_QUEUED} OR s.reviewed_at IS NOT NULL)"
        old = (now - dt.timedelta(days=keep_days)).isoformat(timespec="milliseconds")
        old_upload = (now - dt.timedelta(hours=upload_keep_hours)).isoformat(timespec="milliseconds")
        self.db.execute_many(
            [
                (
                    f"DELETE FROM loupe_shown WHERE request_id IN (SELECT s.request_id FROM loupe_shown s WHERE s.at < ? AND {unrated} AND {unqueued})",
                    (old,),
                ),
                (
                    "DELETE FROM loupe_uploads WHERE request_id NOT IN (SELECT request_id FROM loupe_shown) OR request_id IN "
                    f"(SELECT s.request_id FROM loupe_shown s WHERE s.at < ? AND {unrated} AND {unqueued})",
                    (old_upload,),
                ),
            ]
        )


def _made(record: Shown | Callable[[], Shown | None]) -> Shown | None:
    if isinstance(record, Shown):
        return record
    try:
        return record()
    except Exception:  # a response it cannot describe: that copy is lost, the others are kept
        log.exception("a shown record could not be made")
        return None


class ShownWriter:
    """Shown records buffered in memory and written once a second (and on close); retention
    runs once an hour. `flush()` writes now (FeedbackService.Submit calls it first). Records
    may be given as functions that make them, so the masking and copying happen here, not
    on the call's path."""

    def __init__(
        self,
        store: FeedbackStore,
        *,
        keep_days: float = 30,
        upload_keep_hours: float = 24,
        flush_s: float = 1.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.store, self._clock = store, clock
        self.keep_days, self.upload_keep_hours = keep_days, upload_keep_hours
        self.flush_s = flush_s
        self._pending: list[Shown | Callable[[], Shown | None]] = []
        self._dropped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._purged_at: dt.datetime | None = None
        self._thread = threading.Thread(target=self._loop, name="loupe-shown", daemon=True)
        self._thread.start()

    def add(self, record: Shown | Callable[[], Shown | None]) -> None:
        """A record, or a function that makes it: called by the flush, off the call's path."""
        with self._lock:
            self._pending.append(record)
            if len(self._pending) > MAX_PENDING:  # the database has been down for a while
                del self._pending[: len(self._pending) - MAX_PENDING]
                self._dropped += 1
                if self._dropped in (1, 1000) or self._dropped % 100_000 == 0:
                    log.warning("events database unreachable: %d shown record(s) dropped so far", self._dropped)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        pending = [r for r in map(_made, pending) if r is not None]
        try:
            self.store.add_shown(pending)
        except Exception:
            with self._lock:
                self._pending[:0] = pending
            raise

    def purge_if_due(self) -> None:
        now = self._clock()
        if self._purged_at is None or now - self._purged_at >= dt.timedelta(hours=1):
            self._purged_at = now
            self.store.purge(now, self.keep_days, self.upload_keep_hours)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
                self.purge_if_due()
            except Exception as exc:  # the database is down: written on the next flush
                log.warning("shown records not written yet (%s); will retry", exc)
