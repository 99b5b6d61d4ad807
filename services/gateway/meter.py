"""Usage per client and day, and the audit trail of writes and deletes.

Usage counters are summed in memory and written to the events database every second (and
when the replica stops), so a call pays no database round trip; a crash loses at most the
last second. Audit records are written before the call's response goes out; when the
database is down, the record is kept and written with the next flush that succeeds (it is
lost only if the replica dies before the database is back), and the failure is logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from services.events.store import COUNTERS, AuditRecord, EventStore, UsageRow, counter_value, today

log = logging.getLogger("loupe")
FLUSH_S = 1.0


class Meter:
    def __init__(
        self,
        store: EventStore,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        flush_s: float = FLUSH_S,
    ) -> None:
        self.store, self._clock = store, clock
        # (day, client, rpc, code) -> counter -> amount, not yet written.
        self._pending: dict[tuple[str, str, str, str], dict[str, float]] = {}
        # Audit records the database refused, oldest first: written by the next flush.
        self._pending_audit: list[AuditRecord] = []
        self._lock = threading.Lock()
        # (client, day) -> (monotonic time its read began, stored totals): read at most once a second.
        self._totals: dict[tuple[str, str], tuple[float, dict[str, float]]] = {}
        # Usage taken from _pending by a flush: [rows, monotonic time written or None while the
        # write runs]. Counted by used_today until every cached total read after the write:
        # between taking the rows and the database committing them they are in neither place.
        self._writes: list[list] = []
        # What calls still running will add (checked against quotas, not yet counted):
        # claim number -> (client, counts). Two calls at once cannot both take the last items.
        self._claims: dict[int, tuple[str, dict[str, float]]] = {}
        self._claim_no = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(flush_s,), name="loupe-meter", daemon=True)
        self._thread.start()

    def record(self, client: str, rpc: str, code: str, **counts: float) -> None:
        """One call, and what it counts beyond itself (items, audio_s, tokens_in, tokens_out)."""
        unknown = set(counts) - set(COUNTERS)
        if unknown:
            raise ValueError(f"unknown usage counter(s) {sorted(unknown)}; known: {', '.join(COUNTERS)}")
        with self._lock:
            self._add((today(self._clock()), client, rpc, code), {"calls": 1, **counts})

    def _add(self, key: tuple[str, str, str, str], counts: dict[str, float]) -> None:
        row = self._pending.setdefault(key, dict.fromkeys(COUNTERS, 0))
        for name, amount in counts.items():
            row[name] += amount

    def audit(self, client: str, rpc: str, collection: str, code: str, count: int, target: dict) -> None:
        """Write the record now; if the database fails, keep it for the next flush and re-raise."""
        at = self._clock().isoformat(timespec="milliseconds")
        record = AuditRecord(at, client, rpc, collection, code, count, target)
        try:
            self._write_audit([record])
        except Exception:
            with self._lock:
                self._pending_audit.append(record)
            raise

    def _write_audit(self, records: list[AuditRecord]) -> None:
        """Write from the front, removing each record once written: what is left was not."""
        while records:
            self.store.add_audit(records[0])
            records.pop(0)

    def claim(self, client: str, counts: dict[str, float]) -> int | None:
        """Hold what a call about to run will add (see `used_today`) until `release`."""
        if not counts:
            return None
        with self._lock:
            self._claim_no += 1
            self._claims[self._claim_no] = (client, dict(counts))
            return self._claim_no

    def release(self, claim: int | None) -> None:
        if claim is not None:
            with self._lock:
                self._claims.pop(claim, None)

    def used_today(self, client: str) -> dict[str, float]:
        """The client's successful usage today: stored (read at most once a second) plus pending,
        plus what its calls now running claimed."""
        day = today(self._clock())
        cached = self._totals.get((client, day))
        if cached is None or time.monotonic() - cached[0] > FLUSH_S:
            began = time.monotonic()
            cached = self._totals[(client, day)] = (began, self.store.totals(client, day))
        totals = dict(cached[1])
        with self._lock:
            # Rows being written, or written since this total was read (perhaps counted twice:
            # a quota errs on the safe side), besides those not yet taken by a flush.
            unread = [rows for rows, written in self._writes if written is None or written >= cached[0]]
            for rows in (self._pending, *unread):
                _add_usage(totals, rows, day, client)
            for owner, counts in self._claims.values():
                if owner == client:
                    for name, amount in counts.items():
                        totals[name] = totals.get(name, 0) + amount
        return totals

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            audits, self._pending_audit = self._pending_audit, []
            write = [pending, None]
            self._writes.append(write)
        try:
            self._flush(pending, audits)
        except Exception:
            with self._lock:
                self._writes = [w for w in self._writes if w is not write]
            raise
        with self._lock:
            now = time.monotonic()
            write[1] = now
            # A cached total is at most FLUSH_S old: rows written well before that are in it.
            self._writes = [w for w in self._writes if w[1] is None or now - w[1] <= 3 * FLUSH_S]

    def _flush(self, pending: dict, audits: list[AuditRecord]) -> None:
        if audits:
            try:
                self._write_audit(audits)
            except Exception:
                with self._lock:
                    self._pending_audit[:0] = audits
                    for key, counts in pending.items():
                        self._add(key, counts)
                raise
        rows = [
            UsageRow(*key, **{n: counter_value(n, v) for n, v in counts.items()}) for key, counts in pending.items()
        ]
        try:
            self.store.add_usage(rows)
        except Exception:  # keep the counts for the next try
            with self._lock:
                for key, counts in pending.items():
                    self._add(key, counts)
            raise
        self._totals.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.flush()
            except Exception as exc:  # the database is down: counted again on the next flush
                log.warning("usage not written yet (%s); will retry", exc)


def _add_usage(totals: dict[str, float], rows: dict, day: str, client: str) -> None:
    """Add the client's successful usage of `day` in `rows` ((day, client, rpc, code) -> counts)."""
    for (d, c, rpc, code), counts in rows.items():
        if d == day and c == client and code == "OK":
            for name, amount in counts.items():
                totals[name] = totals.get(name, 0) + amount
            if rpc == "Ask":
                totals["ask_calls"] = totals.get("ask_calls", 0) + counts["calls"]


UNAUTHENTICATED = "(unauthenticated)"
# Calls that write or delete: each is an audit record.
AUDITED = frozenset({"IndexImages", "IndexTexts", "IndexAudio", "Delete", "Calibrate"})


def usage_of(rpc: str, result) -> dict:
    """What a successful call counts beyond itself: items indexed, audio seconds, VLM tokens."""
    if result is None:
        return {}
    if rpc in ("IndexImages", "IndexTexts"):
        return {"items": len(result.items)}
    if rpc == "IndexAudio":
        return {"items": 1, "audio_s": float(result.duration_s)}
    if rpc == "Transcribe":  # the stream's TranscriptInfo
        return {"audio_s": float(result.duration_s)}
    if rpc == "Ask":
        return {"tokens_in": int(result.tokens_in), "tokens_out": int(result.tokens_out)}
    return {}


def audit_of(rpc: str, request, result) -> tuple[str, int, dict]:
    """(collection, count, target) of a write or delete; the requested ids when it failed."""
    from google.protobuf.json_format import MessageToDict

    from services.gateway.gate import collection_of

    try:
        collection = collection_of(rpc, request) or ""
    except Exception:  # a malformed name: recorded as sent
        collection = getattr(request, "collection", "")
    if rpc in ("IndexImages", "IndexTexts"):
        ids = [it.id for it in result.items] if result is not None else [it.id for it in request.items if it.id]
        return collection, len(ids) if result is not None else 0, {"ids": ids}
    if rpc == "Calibrate":
        if result is None:
            return collection, 0, {}
        return collection, 1, {"model_id": result.model_id, "summary": result.summary}
    if rpc == "IndexAudio":
        return collection, 1 if result is not None else 0, {"ids": [result.id if result is not None else request.id]}
    count = int(result.deleted) if result is not None else 0
    if request.WhichOneof("selector") == "filter":
        return collection, count, {"filter": MessageToDict(request.filter)}
    return collection, count, {"ids": list(request.ids.ids)}
