"""Rate limits (token buckets per client) and daily quotas, checked before a call runs.

Several Ingress replicas: each holds its own buckets with a share of the client's rate
(rate / replicas, burst / replicas, at least one call), so the sum over replicas is the
configured limit when Serve spreads calls evenly. Quotas are counted in the events
database, which all replicas share, plus each replica's not yet flushed calls: a replica can
overshoot a quota by what other replicas counted in the last flush interval (one second).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

from encoders.common.errors import Overloaded
from services.gateway.clients import Client

EXPENSIVE = frozenset({"Ask", "IndexAudio", "Transcribe"})
AUDIO_RPCS = frozenset({"IndexAudio", "Transcribe"})
INDEX_RPCS = frozenset({"IndexImages", "IndexTexts", "IndexAudio"})


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self.tokens, self.stamp = self.burst, now

    def take(self, now: float) -> float:
        """0 when a call may go now (and takes its token), else seconds until one may."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, replicas: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = 1.0 / max(1, replicas)
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, client: Client, rpc: str) -> None:
        """Overloaded (RESOURCE_EXHAUSTED with RetryInfo) when the client is over a limit."""
        limits = client.limits
        checks = [("rate", limits.rate, limits.burst)]
        if rpc in EXPENSIVE:
            checks.append(("expensive_rate", limits.expensive_rate, limits.expensive_burst))
        now = self._clock()
        with self._lock:
            for name, rate, burst in checks:
                if rate <= 0:
                    continue
                key = (client.id, name)
                bucket = self._buckets.get(key)
                if bucket is None:
                    bucket = self._buckets[key] = TokenBucket(rate * self.share, (burst or 2 * rate) * self.share, now)
                wait = bucket.take(now)
                if wait > 0:
                    label = "calls/s" if name == "rate" else "calls/s for Ask, IndexAudio and Transcribe"
                    raise Overloaded(
                        f"client {client.id!r} is over its {name} limit ({rate:g} {label}); retry in {wait:.2f} s",
                        retry_after_s=max(wait, 0.05),
                    )


def declared_audio_s(data: bytes, limits) -> float:
    """A recording's length as its headers state it, read without decoding (audio seconds a
    call will add); 0 when they do not say, or the bytes are no audio (the call says why)."""
    from encoders.audio.decode import probe_audio

    try:
        return float(probe_audio(data, limits).declared_duration_s or 0.0)
    except Exception:
        return 0.0


def call_adds(rpc: str, request) -> dict[str, float]:
    """What a call will add to the daily counters, known before it runs: items to index and
    Ask calls (audio seconds: `declared_audio_s`; VLM tokens are known only once it ran)."""
    if rpc in ("IndexImages", "IndexTexts"):
        return {"items": float(len(request.items))}
    if rpc == "IndexAudio":
        return {"items": 1.0}
    if rpc == "Ask":
        return {"ask_calls": 1.0}
    return {}


def check_quota(
    client: Client,
    rpc: str,
    used: Callable[[], dict[str, float]],
    now: dt.datetime,
    adds: dict[str, float] | None = None,
) -> None:
    """Overloaded, retry at the next UTC midnight, when a daily quota this RPC draws on is used
    up, or would be overrun by what the call itself adds (`adds`, from `call_adds`)."""
    limits = client.limits
    wanted = []
    if rpc in INDEX_RPCS and limits.items_per_day:
        wanted.append(("items_per_day", "items", limits.items_per_day))
    if rpc in ("IndexAudio", "Transcribe") and limits.audio_seconds_per_day:
        wanted.append(("audio_seconds_per_day", "audio_s", limits.audio_seconds_per_day))
    if rpc == "Ask" and limits.ask_calls_per_day:
        wanted.append(("ask_calls_per_day", "ask_calls", limits.ask_calls_per_day))
    if rpc == "Ask" and limits.vlm_tokens_per_day:
        wanted.append(("vlm_tokens_per_day", "vlm_tokens", limits.vlm_tokens_per_day))
    if not wanted:
        return
    adds = adds or {}
    totals = used()
    totals["vlm_tokens"] = totals.get("tokens_in", 0.0) + totals.get("tokens_out", 0.0)
    for name, counter, quota in wanted:
        have, need = totals.get(counter, 0.0), adds.get(counter, 0.0)
        if have >= quota or have + need > quota:
            midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            left = max(0.0, quota - have)
            what = f"this call adds {need:g} and {left:g} are left" if need and have < quota else "it is used up"
            raise Overloaded(
                f"client {client.id!r} is over its {name} quota ({quota:g}) for {now:%Y-%m-%d} (UTC): {what}; "
                f"it renews at 00:00 UTC",
                retry_after_s=(midnight - now).total_seconds(),
            )
