"""Request ids: one per call, taken from the caller or made, returned and carried everywhere.

The Ingress takes `x-request-id` from the call's metadata when it is a sane token (1-128 of
letters, digits and `._:/+=-`; anything else is replaced, never refused: a tracing header
must not fail a call), else Ray Serve's own id for the call (its proxy reads metadata
`request_id` or makes one), else a new one. `carry()` puts it in Serve's request context, so
every deployment the call reaches (Encoder, Transcriber, Answerer) sees the same id:
Serve sends it along with each handle call and writes it on its log records, and
`current()` reads it there. The id goes back in the trailing metadata (`x-request-id`) and in
the responses a user acts on (`request_id` of IndexResponse, IndexAudioResponse,
SearchResponse, AskResponse).
"""

from __future__ import annotations

import dataclasses
import re
import uuid

HEADER = "x-request-id"
_SANE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id(metadata: dict[str, str]) -> str:
    given = metadata.get(HEADER) or metadata.get("request_id") or ""
    if _SANE.match(given):
        return given
    serve_id = current()
    return serve_id if _SANE.match(serve_id) else uuid.uuid4().hex


def current() -> str:
    """The request id of the call this code runs for ('' outside a Serve request)."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or ""
    except Exception:  # not under Serve
        return ""


def carry(rid: str) -> None:
    """Make `rid` the id of the current Serve request (and of the handle calls it makes)."""
    from ray.serve import context

    ctx = context._get_serve_request_context()
    if ctx.request_id != rid:
        context._serve_request_context.set(dataclasses.replace(ctx, request_id=rid))


def stamp(response, rid: str):
    """Set `request_id` on a response message that has the field; return it."""
    if response is not None and "request_id" in response.DESCRIPTOR.fields_by_name:
        response.request_id = rid
    return response
