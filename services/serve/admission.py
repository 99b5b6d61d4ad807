"""Bounded waits: every call starts within a bound or is refused at once, never left to time out.

Calls are sorted into lanes by what they cost (reads of the store, searches, index writes,
audio, Ask). A lane runs at most `limit` calls at once; a call that finds it full waits at
most `max_wait_s` for a slot, and is refused with `Overloaded` (RESOURCE_EXHAUSTED with
RetryInfo) when the wait would be longer or more than `max_waiting` calls already wait. The
retry delay is an estimate of when a slot frees up: the lane's recent call time times the
waiting calls per slot. Lanes keep the downstream deployments' queues short, so the wait that
counts happens here, where it is bounded.

One `Admission` per Ingress replica: with N replicas a lane admits N x limit calls at once.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from encoders.common.errors import Overloaded
from services.serve.metrics import QUEUE_SECONDS

# Which lane each RPC waits in. Health checks and Transcribe's stream pass through their own paths.
LANES = {
    "Count": "read",
    "GetItem": "read",
    "GetStatus": "read",
    "GetUsage": "read",
    "GetAudit": "read",
    "Submit": "read",
    "ListFeedback": "read",
    "MarkReviewed": "read",
    "Delete": "index",
    "SearchText": "search",
    "SearchImage": "search",
    "IndexImages": "index",
    "IndexTexts": "index",
    "IndexAudio": "audio",
    "Calibrate": "index",
    "Transcribe": "audio",
    "Ask": "ask",
}


@dataclass
class _Lane:
    name: str
    limit: int
    max_waiting: int
    running: int = 0
    waiting: int = 0
    # Exponentially weighted call time (seconds), for the retry estimate.
    call_s: float = 0.05

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.limit)


class Admission:
    def __init__(self, limits: dict[str, int], max_wait_s: float, queue_factor: int = 4) -> None:
        if max_wait_s <= 0:
            raise ValueError("admission.max_wait_s must be > 0")
        self.max_wait_s = max_wait_s
        self._limits = dict(limits)
        self._factor = queue_factor
        self._lanes: dict[str, _Lane] = {}

    def lane(self, name: str) -> _Lane:
        # Created on first use, inside the event loop that will wait on it.
        lane = self._lanes.get(name)
        if lane is None:
            limit = max(1, int(self._limits[name]))
            lane = self._lanes[name] = _Lane(name, limit, max_waiting=self._factor * limit)
        return lane

    def retry_after_s(self, lane: _Lane) -> float:
        per_slot = (lane.waiting + 1) / lane.limit
        return round(min(30.0, max(0.1, lane.call_s * per_slot)), 2)

    @asynccontextmanager
    async def enter(self, rpc: str):
        lane = self.lane(LANES[rpc])
        if lane.waiting >= lane.max_waiting:
            raise self._refusal(lane, f"{lane.waiting} calls already wait")
        lane.waiting += 1
        asked = time.monotonic()
        try:
            await asyncio.wait_for(lane.slots.acquire(), timeout=self.max_wait_s)
        except TimeoutError:
            raise self._refusal(lane, f"no slot freed within {self.max_wait_s:g} s") from None
        finally:
            lane.waiting -= 1
            QUEUE_SECONDS.labels(LANES[rpc]).observe(time.monotonic() - asked)
        lane.running += 1
        start = time.monotonic()
        try:
            yield
        finally:
            lane.running -= 1
            lane.slots.release()
            lane.call_s = 0.8 * lane.call_s + 0.2 * (time.monotonic() - start)

    def _refusal(self, lane: _Lane, why: str) -> Overloaded:
        retry = self.retry_after_s(lane)
        return Overloaded(
            f"the service is busy: {lane.limit} {lane.name} calls are running and {why}; "
            f"retry after {retry:g} s (admission.{lane.name} and admission.max_wait_s set the bounds)",
            retry_after_s=retry,
        )

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            name: {"limit": lane.limit, "running": lane.running, "waiting": lane.waiting}
            for name, lane in self._lanes.items()
        }
