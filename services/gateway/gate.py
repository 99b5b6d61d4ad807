"""Deciding each call: which client sends it (UNAUTHENTICATED if none), and whether that
client may make it (PERMISSION_DENIED outside its rights or collections).

Three modes, chosen at start-up and said in `loupe serve`'s start-up line:
- clients: a clients file (`clients_file`), keys hashed, rights and collections per client;
- shared key: `LOUPE_API_KEY`, the one-client case (all rights, every collection);
- open: neither set; every caller may do everything.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Callable
from typing import Any

from encoders.common.errors import Forbidden, NotFound, Unauthenticated
from services.gateway.clients import Client, hash_key, load_clients

# The right each RPC needs; None: any known client (GetStatus shows it only its collections).
RPC_RIGHTS: dict[str, str | None] = {
    "IndexImages": "index",
    "IndexTexts": "index",
    "IndexAudio": "index",
    "Delete": "delete",
    "SearchText": "search",
    "SearchImage": "search",
    "GetItem": "search",
    "Count": "search",
    "Ask": "ask",
    "Transcribe": "transcribe",
    "GetStatus": None,
    "Calibrate": "index",
    "GetUsage": "admin",
    "GetAudit": "admin",
    "Submit": None,  # a client rates its own calls (services.rpc.feedback)
    "ListFeedback": "admin",
    "MarkReviewed": "admin",
}
EVERYONE = Client("anonymous", (), frozenset({"admin"}), ("*",))
SHARED = Client("shared-key", (), frozenset({"admin"}), ("*",))
HOW_TO_SEND = "send metadata 'authorization: Bearer <key>' (or 'x-api-key: <key>')"


class Gateway:
    def __init__(
        self,
        clients: list[Client] | None = None,
        *,
        shared_key: str | None = None,
        source: str = "",
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.clients = clients or []
        self.shared_key = None if clients else shared_key
        self.source, self._clock = source, clock

    @classmethod
    def from_settings(cls, settings: Any) -> Gateway:
        if settings.clients_file:
            return cls(load_clients(settings.clients_file), source=settings.clients_file)
        return cls(shared_key=settings.api_key)

    @property
    def mode(self) -> str:
        return "clients" if self.clients else "shared-key" if self.shared_key else "open"

    def describe(self) -> str:
        if self.clients:
            return f"access: {len(self.clients)} clients from {self.source}"
        if self.shared_key:
            return "access: one shared key (LOUPE_API_KEY)"
        return "access: OPEN (no clients file, no LOUPE_API_KEY): anyone who reaches the port may do anything"

    # -- who -------------------------------------------------------------------------------
    def authenticate(self, metadata: dict[str, str]) -> Client:
        if self.mode == "open":
            return EVERYONE
        given = metadata.get("x-api-key") or metadata.get("authorization", "").removeprefix("Bearer ").strip()
        if not given:
            raise Unauthenticated(f"no API key: {HOW_TO_SEND}")
        if self.shared_key:
            if hmac.compare_digest(given.encode(), self.shared_key.encode()):
                return SHARED
            raise Unauthenticated(f"wrong API key: {HOW_TO_SEND}")
        digest = hash_key(given)
        found = None
        for client in self.clients:  # every hash is compared: the time says nothing about which matched
            for key in client.keys:
                if hmac.compare_digest(digest, key.sha256):
                    found = (client, key)
        if found is None:
            raise Unauthenticated(f"unknown API key: {HOW_TO_SEND}")
        client, key = found
        if not key.valid_at(self._clock()):
            raise Unauthenticated(
                f"this API key expired at {key.expires:%Y-%m-%d %H:%M} UTC; use the new key you were given"
            )
        return client

    # -- what ------------------------------------------------------------------------------
    def authorize(self, client: Client, rpc: str, request: Any) -> None:
        right = RPC_RIGHTS.get(rpc, "admin")
        if right is not None and not client.may(right):
            raise Forbidden(
                f"client {client.id!r} may not {right} ({rpc}); its rights: {', '.join(sorted(client.rights))}"
            )
        name = collection_of(rpc, request)
        if name is not None and not client.sees(name):
            raise Forbidden(f"client {client.id!r} may not use collection {name!r}")

    def shown(self, client: Client, exc: BaseException) -> BaseException:
        """`exc` as this client may see it: a missing collection names only its own."""
        if isinstance(exc, NotFound):
            return exc.shown_to(client.sees)
        return exc


def collection_of(rpc: str, request: Any) -> str | None:
    """The collection a request touches (the default one when it names none); None if none."""
    from services.rpc.convert import collection_name

    if rpc in ("SearchText", "SearchImage"):
        return collection_name(request.options.collection, "options.collection")
    if rpc == "Ask":  # without retrieval (k 0) it reads no collection
        if request.retrieval.k == 0:
            return None
        return collection_name(request.retrieval.collection, "retrieval.collection")
    if rpc in ("IndexImages", "IndexTexts", "IndexAudio", "GetItem", "Delete", "Count", "Calibrate"):
        return collection_name(request.collection)
    return None
