"""Request ids: one per call, made by the server, returned and carried everywhere.

The Ingress makes a new id for every call (32 hex digits). It is the key of everything the
call leaves behind (its feedback record and uploads, its log line, its spans), so it must be
unique: two tenants that happen to send the same `x-request-id` must never share a record.
A caller's own `x-request-id` (1-128 of letters, digits and `._:/+=-`; anything else is
dropped, never refused: a tracing header must not fail a call) is kept as a *label*: it is
written on the call's log line and span (`client_request_id`) and returned in the trailing
metadata `x-client-request-id`, so a caller can match its own traces to ours.

`carry()` puts the id in Serve's request context, so every deployment the call reaches
(Encoder, Transcriber, Answerer) sees the same id: Serve sends it along with each handle call
and writes it on its log records, and `current()` reads it there. The id goes back in the
trailing metadata (`x-request-id`) and in the responses a user acts on (`request_id` of
IndexResponse, IndexAudioResponse, SearchResponse, AskResponse); FeedbackService.Submit takes it.
"""

from __future__ import annotations

import dataclasses
import re
import uuid

HEADER = "x-request-id"
# The caller's own id, returned beside ours.
LABEL_HEADER = "x-client-request-id"
_SANE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id(metadata: dict[str, str]) -> tuple[str, str]:
    """(the server's id for this call, the caller's label or "")."""
    return uuid.uuid4().hex, label(metadata)


def label(metadata: dict[str, str]) -> str:
    """The caller's `x-request-id` when it is a sane token, else ""."""
    given = metadata.get(HEADER) or ""
    return given if _SANE.fullmatch(given) else ""


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
