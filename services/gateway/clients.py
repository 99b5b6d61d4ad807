"""The clients file: who may call, with which key, doing what, in which collections.

    clients:
      - id: shop-search
        keys:                                  # sha256 of each key; never the key itself
          - sha256: <64 hex digits: the sha256 `loupe keys create` prints>
          - sha256: <the sha256 of the key it replaces>
            expires: 2027-01-31T00:00:00Z      # a rotated-out key, accepted until then
        rights: [search, index]                # search index delete ask transcribe personal_data admin
        collections: ["shop-*", "shared"]      # names, "prefix*" (a tenant), or "*"
        limits: {rate: 20, burst: 40, expensive_rate: 0.5, expensive_burst: 2}   # calls/s; 0: none
        quotas: {items_per_day: 100000, audio_seconds_per_day: 7200, ask_calls_per_day: 500,
                 vlm_tokens_per_day: 2000000}  # VLM tokens in + out

`loupe keys create CLIENT` prints a new key once and the entry to paste; `loupe keys list`
shows the clients of a file. A key is 32 random bytes (urlsafe base64 behind "lp_"), so one
sha256 is enough to store it safely.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoders.common.errors import InvalidInput

RIGHTS = ("search", "index", "delete", "ask", "transcribe", "personal_data", "admin")
KEY_PREFIX = "lp_"
_HASH = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class KeyHash:
    sha256: str
    # UTC; None: no end. Past it the key is refused.
    expires: dt.datetime | None = None

    def valid_at(self, now: dt.datetime) -> bool:
        return self.expires is None or now < self.expires


@dataclass(frozen=True)
class Limits:
    """Per client; 0 means no limit. Rates are calls per second over all Ingress replicas."""

    rate: float = 0.0
    burst: float = 0.0  # default: twice the rate (at least 1)
    # Ask, IndexAudio and Transcribe: their own, lower limit (they also count against `rate`).
    expensive_rate: float = 0.0
    expensive_burst: float = 0.0
    # Per UTC day, counted from successful calls.
    items_per_day: int = 0
    audio_seconds_per_day: float = 0.0
    ask_calls_per_day: int = 0
    # VLM tokens, prompt and generated together, of the client's Ask calls.
    vlm_tokens_per_day: int = 0


RATE_KEYS = ("rate", "burst", "expensive_rate", "expensive_burst")
QUOTA_KEYS = ("items_per_day", "audio_seconds_per_day", "ask_calls_per_day", "vlm_tokens_per_day")


@dataclass(frozen=True)
class Client:
    id: str
    keys: tuple[KeyHash, ...]
    rights: frozenset[str]
    # Collection names, "prefix*" patterns, or "*" for all.
    collections: tuple[str, ...]
    limits: Limits = Limits()

    def may(self, right: str) -> bool:
        return "admin" in self.rights or right in self.rights

    def sees(self, collection: str) -> bool:
        return any(
            pattern == "*" or collection == pattern or (pattern.endswith("*") and collection.startswith(pattern[:-1]))
            for pattern in self.collections
        )


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_clients(path: str | Path) -> list[Client]:
    """The clients of a file; InvalidInput naming the file and the entry at fault."""
    import yaml

    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read the clients file {where}: {exc}", field="clients_file") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"the clients file {where} is not valid YAML: {exc}", field="clients_file") from None
    entries = (raw or {}).get("clients") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InvalidInput(f"the clients file {where} needs a non-empty list under 'clients:'", field="clients_file")
    clients = [_client(entry, f"{where}: clients[{i}]") for i, entry in enumerate(entries)]
    seen: dict[str, str] = {}
    for c in clients:
        if c.id in seen:
            raise InvalidInput(f"{where}: client id {c.id!r} appears twice", field="clients_file")
        seen[c.id] = c.id
    hashes = [k.sha256 for c in clients for k in c.keys]
    if len(hashes) != len(set(hashes)):
        raise InvalidInput(f"{where}: one key hash is listed for two clients or twice", field="clients_file")
    return clients


def _client(entry: Any, where: str) -> Client:
    if not isinstance(entry, dict):
        raise InvalidInput(f"{where} must be a mapping with id, keys, rights, collections", field="clients_file")
    cid = str(entry.get("id") or "")
    if not _ID.fullmatch(cid):
        raise InvalidInput(f"{where}: id {cid!r} must be 1-64 letters, digits, '.', '_' or '-'", field="clients_file")
    keys = tuple(_key(k, f"{where} ({cid}) keys[{j}]") for j, k in enumerate(entry.get("keys") or []))
    if not keys:
        raise InvalidInput(f"{where} ({cid}): at least one key hash is needed under 'keys:'", field="clients_file")
    rights = entry.get("rights") or []
    unknown = [r for r in rights if r not in RIGHTS]
    if not isinstance(rights, list) or not rights or unknown:
        raise InvalidInput(
            f"{where} ({cid}): rights must be a non-empty list of {', '.join(RIGHTS)}"
            + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else ""),
            field="clients_file",
        )
    collections = entry.get("collections") or []
    if not isinstance(collections, list) or not collections or not all(isinstance(c, str) and c for c in collections):
        raise InvalidInput(
            f"{where} ({cid}): collections must be a non-empty list of names, 'prefix*' or '*'", field="clients_file"
        )
    return Client(cid, keys, frozenset(rights), tuple(collections), _limits(entry, f"{where} ({cid})"))


def _limits(entry: dict, where: str) -> Limits:
    values: dict[str, float] = {}
    for section, keys in (("limits", RATE_KEYS), ("quotas", QUOTA_KEYS)):
        raw = entry.get(section) or {}
        if not isinstance(raw, dict) or set(raw) - set(keys):
            raise InvalidInput(f"{where}: {section} takes {', '.join(keys)}", field="clients_file")
        for key, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidInput(
                    f"{where}: {section}.{key} must be a number >= 0, not {value!r}", field="clients_file"
                )
            values[key] = value
    return Limits(**values)


def _key(raw: Any, where: str) -> KeyHash:
    digest = str((raw or {}).get("sha256", "") if isinstance(raw, dict) else "").lower()
    if not _HASH.fullmatch(digest):
        raise InvalidInput(
            f"{where}: sha256 must be 64 hex digits (`loupe keys create` prints it)", field="clients_file"
        )
    expires = raw.get("expires")
    if expires is not None:
        if isinstance(expires, str):
            try:
                expires = dt.datetime.fromisoformat(expires.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidInput(
                    f"{where}: expires {expires!r} is not an ISO date-time", field="clients_file"
                ) from None
        if isinstance(expires, dt.date) and not isinstance(expires, dt.datetime):
            expires = dt.datetime(expires.year, expires.month, expires.day)
        if not isinstance(expires, dt.datetime):
            raise InvalidInput(f"{where}: expires must be an ISO date-time", field="clients_file")
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
    return KeyHash(digest, expires)
