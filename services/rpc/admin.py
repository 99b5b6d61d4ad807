"""The admin RPCs: usage and audit records, as the caller may see them."""

from __future__ import annotations

import asyncio
import json

from encoders.common.errors import Forbidden, InvalidInput
from protos.loupe.v1 import admin_pb2

MAX_AUDIT = 10_000


def _scope(client, asked: str) -> str | None:
    """The client whose records to return: a client limited to some collections sees only
    its own; one with every collection ("*") any client's, or all (None)."""
    if "*" in client.collections:
        return asked or None
    if asked and asked != client.id:
        raise Forbidden(f"client {client.id!r} may read only its own usage and audit records")
    return client.id


async def get_usage(meter, client, req: admin_pb2.UsageRequest) -> admin_pb2.UsageResponse:
    who = _scope(client, req.client)
    await asyncio.to_thread(meter.flush)  # this replica's last second too
    rows = await asyncio.to_thread(meter.store.usage, who, req.since or None)
    out = admin_pb2.UsageResponse()
    for r in rows:
        out.rows.add(
            day=r.day,
            client=r.client,
            rpc=r.rpc,
            code=r.code,
            calls=r.calls,
            items=r.items,
            audio_seconds=r.audio_s,
            tokens_in=r.tokens_in,
            tokens_out=r.tokens_out,
        )
    return out


async def get_audit(meter, client, req: admin_pb2.AuditRequest) -> admin_pb2.AuditResponse:
    if req.limit < 0 or req.limit > MAX_AUDIT:
        raise InvalidInput(f"limit {req.limit} must be between 0 (default 1000) and {MAX_AUDIT}", field="limit")
    who = _scope(client, req.client)
    records = await asyncio.to_thread(meter.store.audit, who, req.since or None, req.limit or 1000)
    out = admin_pb2.AuditResponse()
    for r in records:
        out.records.add(
            at=r.at,
            client=r.client,
            rpc=r.rpc,
            collection=r.collection,
            code=r.code,
            count=r.count,
            target_json=json.dumps(r.target, sort_keys=True),
        )
    return out
