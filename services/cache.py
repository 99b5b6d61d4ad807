"""Exact caches: work already done, found again by what it was done on.

Each cache (`Cached`) has a name, a switch, a TTL and a size bound, and counts hits and misses
(`loupe_cache_requests_total{cache, result}`). A key is every input that can change the
result, hashed: e.g. the query embedding of "a red mug" is keyed by the model id, the model
version and the text, so another model or version can never get it. Values are pickled
Python objects the service itself made (never anything a caller sent).

Backends: `MemoryCache` (the default: per process, LRU-bounded, TTL per entry) and
`RedisCache` (`cache.redis_url`: shared by every replica and kept across restarts; bound it
with the server's `maxmemory` and an LRU eviction policy, entries expire by TTL).

The caches and where they sit:
- `embeddings` (Ingress): query text or query image bytes -> CLIP vector;
- `ocr` (Encoder): image bytes + OCR engine and mode -> the text read;
- `transcripts` (Ingress): audio bytes + transcriber model, language and settings -> transcript;
- `answers` (Ingress): an Ask keyed by everything its answer depends on (services.rpc.api).
There is no semantic cache: a cached answer is only returned for exactly the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from encoders.common.urls import redact_url

log = logging.getLogger("loupe.cache")


class Backend(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl_s: float, max_entries: int) -> None: ...


class MemoryCache:
    """LRU per key prefix (one bound per cache), entries dropped after their TTL."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._parts: dict[str, OrderedDict[str, tuple[float, bytes]]] = {}

    def get(self, key: str) -> bytes | None:
        part = self._parts.get(key.split(":", 1)[0])
        with self._lock:
            found = part.get(key) if part is not None else None
            if found is None:
                return None
            if found[0] <= self._clock():
                del part[key]
                return None
            part.move_to_end(key)
            return found[1]

    def set(self, key: str, value: bytes, ttl_s: float, max_entries: int) -> None:
        with self._lock:
            part = self._parts.setdefault(key.split(":", 1)[0], OrderedDict())
            part[key] = (self._clock() + ttl_s, value)
            part.move_to_end(key)
            while len(part) > max_entries:
                part.popitem(last=False)


class RedisCache:
    """A Redis server (`redis://host:port/db`); keys under `prefix`. A server that is down makes
    every lookup a miss and every store a no-op (logged): a cache must never fail a call."""

    def __init__(self, url: str, prefix: str = "loupe:", timeout_s: float = 0.5) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.prefix, self.url = prefix, url
        self._warned = 0.0

    def get(self, key: str) -> bytes | None:
        try:
            return self._redis.get(self.prefix + key)
        except Exception as exc:  # the server is down or slow: a miss
            self._warn(exc)
            return None

    def set(self, key: str, value: bytes, ttl_s: float, max_entries: int) -> None:
        try:
            self._redis.set(self.prefix + key, value, px=max(1, int(ttl_s * 1000)))
        except Exception as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        if time.monotonic() - self._warned > 30:  # once per 30 s, not per call
            self._warned = time.monotonic()
            log.warning("cache at %s not reachable (%s); working without it", redact_url(self.url), exc)


def cache_key(*parts: Any) -> str:
    """A stable digest of JSON-able parts (bytes are hashed first)."""
    normal = [hashlib.sha256(p).hexdigest() if isinstance(p, bytes) else p for p in parts]
    return hashlib.sha256(json.dumps(normal, sort_keys=True, default=str).encode()).hexdigest()


class Cached:
    """One named cache over a backend: get / put Python objects by key parts."""

    def __init__(self, name: str, backend: Backend | None, ttl_s: float, max_entries: int) -> None:
        self.name, self.backend, self.ttl_s, self.max_entries = name, backend, ttl_s, max_entries

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    def get(self, *parts: Any) -> Any | None:
        if self.backend is None:
            return None
        raw = self.backend.get(f"{self.name}:{cache_key(*parts)}")
        _count(self.name, "hit" if raw is not None else "miss")
        return pickle.loads(raw) if raw is not None else None

    def put(self, value: Any, *parts: Any) -> None:
        if self.backend is not None:
            self.backend.set(f"{self.name}:{cache_key(*parts)}", pickle.dumps(value), self.ttl_s, self.max_entries)


def _count(name: str, result: str) -> None:
    from services.serve import metrics

    metrics.CACHE_REQUESTS.labels(name, result).inc()


_SHARED: dict[str, Backend] = {}
_SHARED_LOCK = threading.Lock()


def open_cache(settings: Any, name: str) -> Cached:
    """The cache `name` as `settings.cache` configures it (off: a cache that never hits).
    One backend per process, URL and prefix, shared by the caches that live there."""
    c = settings.cache
    entry = getattr(c, name)
    if not (c.enabled and entry.enabled):
        return Cached(name, None, entry.ttl_s, entry.max_entries)
    where = f"{c.redis_url}#{c.redis_prefix}" if c.redis_url else "memory"
    with _SHARED_LOCK:
        if where not in _SHARED:
            _SHARED[where] = RedisCache(c.redis_url, prefix=c.redis_prefix) if c.redis_url else MemoryCache()
        backend = _SHARED[where]
    return Cached(name, backend, entry.ttl_s, entry.max_entries)
