"""FeedbackService: what a user saw (recorded per response), their rating of it, the review queue.

`shown_of` turns a SearchText / SearchImage / Ask response, as its client got it, into the
record that Submit later ties a rating to. Queries, questions, answers and hit texts are
stored with every kind of personal data masked (the events database is read by operators).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable

from google.protobuf.json_format import MessageToDict

from encoders.common.errors import AlreadyExists, InvalidInput, NotFound
from encoders.text.pii import KINDS, redact
from lmm.prompts import prompt_digest
from protos.loupe.v1 import feedback_pb2, qa_pb2, search_pb2
from services.events.feedback import Feedback, Listed, Scope, Shown, ShownWriter
from services.gateway.gate import collection_of

RECORDED = frozenset({"SearchText", "SearchImage", "Ask"})
MAX_COMMENT = 4000
MAX_CORRECTION = 8000
MAX_USED = 100
MAX_LIST = 1000
HIT_TEXT_CHARS = 300
_ALL = frozenset(KINDS)
_VOTES = {feedback_pb2.VOTE_UP: "up", feedback_pb2.VOTE_DOWN: "down"}
_VOTE_PROTO = {v: k for k, v in _VOTES.items()}


def _mask(text: str) -> str:
    return redact(text, _ALL) if text else text


def _now(clock: Callable[[], dt.datetime]) -> str:
    return clock().isoformat(timespec="milliseconds")


def shown_of(rpc: str, client_id: str, request_id: str, request, response, at: str, label: str = "") -> Shown | None:
    """The record of a successful response (None for calls that are not rated). `label` is the
    caller's own x-request-id, kept with the record; the key is always the server's id."""
    if rpc not in RECORDED or response is None:
        return None
    collection = collection_of(rpc, request) or ""
    if rpc == "Ask":
        shown, verdict, uploads = _ask(request, response), _verdict(response.verdict), tuple(request.images)
    else:
        shown, verdict = _search(rpc, request, response), ""
        uploads = (request.image,) if rpc == "SearchImage" and request.WhichOneof("query") == "image" else ()
    if label:
        shown["client_request_id"] = label
    return Shown(request_id, at, client_id, rpc, collection, verdict, shown, uploads)


def where_of(flt) -> dict:
    """A Filter as the SDK's `where` dict ({"team": "it", "year": {"gte": 2020}, "tag": [a, b]})."""
    out: dict = {}
    for cond in flt.must:
        kind = cond.WhichOneof("match")
        if kind == "equals":
            out[cond.field] = MessageToDict(cond.equals)
        elif kind == "any_of":
            out[cond.field] = [MessageToDict(v) for v in cond.any_of.values]
        elif kind == "range":
            bounds = out.setdefault(cond.field, {})
            if isinstance(bounds, dict):
                bounds.update(MessageToDict(cond.range))
    return out


def _masked(value):
    """Filter values as the record keeps them: strings with every kind of personal data masked."""
    if isinstance(value, str):
        return _mask(value)
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    return value


def _verdict(value: int) -> str:
    return qa_pb2.AnswerVerdict.Name(value).removeprefix("ANSWER_VERDICT_").lower()


def _search(rpc: str, request, response: search_pb2.SearchResponse) -> dict:
    o = request.options
    if rpc == "SearchText":
        query = {"text": _mask(request.query)}
    elif request.WhichOneof("query") == "id":
        query = {"image_id": request.id}
    else:
        query = {"image": "upload-1"}
    options = {
        "limit": o.limit if o.HasField("limit") else 10,
        "offset": o.offset,
        "mode": search_pb2.SearchMode.Name(o.mode).removeprefix("SEARCH_MODE_").lower(),
        "modalities": [m.lower() for m in MessageToDict(o).get("modalities", [])],
        "where": _masked(where_of(o.filter)),
    }
    if o.HasField("score_threshold"):
        options["score_threshold"] = o.score_threshold
    hits = [
        {
            "id": h.item.id,
            "score": round(h.score, 6),
            "modality": MessageToDict(h.item).get("modality", "").removeprefix("MODALITY_").lower(),
            "source": h.item.sources[0] if h.item.sources else "",
            "text": _mask(h.item.text[:HIT_TEXT_CHARS]),
        }
        for h in response.hits
    ]
    return {"query": query, "options": options, "model_id": response.model_id, "hits": hits}


def _ask(request: qa_pb2.AskRequest, response: qa_pb2.AskResponse) -> dict:
    r = request.retrieval
    retrieval = {"k": r.k, "collection": r.collection, "where": _masked(where_of(r.filter))}
    if r.HasField("mode"):
        retrieval["mode"] = search_pb2.SearchMode.Name(r.mode).removeprefix("SEARCH_MODE_").lower()
    return {
        "question": _mask(request.question),
        "images": len(request.images),
        "retrieval": retrieval,
        "text": _mask(response.text),
        "verdict": _verdict(response.verdict),
        "citations": list(response.citations),
        "cited": [{"id": c.id, "source": c.source, "snippet": _mask(c.snippet)} for c in response.cited],
        "guards": [
            {"guard": g.guard, "passed": g.passed, "reason": g.reason, "action": g.action} for g in response.guards
        ],
        "model_id": response.model_id,
        "prompt_version": response.prompt_version,
        "prompt_digest": prompt_digest(response.prompt_version),
        "tokens_in": response.tokens_in,
        "tokens_out": response.tokens_out,
        "attempts": response.attempts,
    }


# -- Submit --------------------------------------------------------------------------------
def parse_feedback(req: feedback_pb2.FeedbackRequest, client_id: str, at: str) -> Feedback:
    """The request as a Feedback, or an InvalidInput naming the field at fault."""
    rid = req.request_id.strip()
    if not rid:
        raise InvalidInput("request_id is empty: send the request_id of the response you rate", field="request_id")
    if len(rid) > 128 or any(ord(c) < 32 for c in req.request_id):
        raise InvalidInput("request_id must be at most 128 printable characters", field="request_id")
    if req.vote not in (feedback_pb2.VOTE_UNSPECIFIED, *_VOTES):
        raise InvalidInput(f"vote {req.vote} is not VOTE_UP (1) or VOTE_DOWN (2)", field="vote")
    if (req.vote != feedback_pb2.VOTE_UNSPECIFIED) == (req.stars != 0):
        raise InvalidInput("give exactly one of vote (up or down) and stars (1..5)", field="vote")
    if req.stars and not 1 <= req.stars <= 5:
        raise InvalidInput(f"stars {req.stars} is out of range: 1 (bad) to 5 (good)", field="stars")
    if len(req.comment) > MAX_COMMENT:
        raise InvalidInput(f"comment is {len(req.comment)} characters; at most {MAX_COMMENT}", field="comment")
    if len(req.corrected_answer) > MAX_CORRECTION:
        raise InvalidInput(
            f"corrected_answer is {len(req.corrected_answer)} characters; at most {MAX_CORRECTION}",
            field="corrected_answer",
        )
    if len(req.used_ids) > MAX_USED:
        raise InvalidInput(f"{len(req.used_ids)} used_ids; at most {MAX_USED}", field="used_ids")
    return Feedback(
        rid,
        client_id,
        at,
        vote=_VOTES.get(req.vote, ""),
        stars=req.stars,
        comment=_mask(req.comment.strip()),
        used_ids=tuple(dict.fromkeys(req.used_ids)),
        corrected_answer=_mask(req.corrected_answer.strip()),
    )


async def submit(
    writer: ShownWriter,
    client,
    req: feedback_pb2.FeedbackRequest,
    *,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    wait_s: float | None = None,
) -> feedback_pb2.FeedbackResponse:
    fb = parse_feedback(req, client.id, _now(clock))
    # A client rates its own calls, an admin (a reviewer) also the calls in its scope; any
    # other call is "not found", after the same wait as an unknown id: neither the answer nor
    # its timing tells that another client's call has this id.
    shown = await _find(writer, fb.request_id, wait_s, lambda record: _may_rate(client, record))
    if shown is None:
        raise NotFound(
            f"no rated call has request id {fb.request_id!r}: give the request_id of a SearchText, "
            f"SearchImage or Ask response you received (kept {writer.keep_days:g} days)",
            field="request_id",
        )
    unknown = [i for i in fb.used_ids if i not in shown.ids()]
    if unknown:
        raise InvalidInput(
            f"used_ids {unknown[:5]} were not in that response; it showed: {sorted(shown.ids())[:20] or 'nothing'}",
            field="used_ids",
        )
    if fb.corrected_answer and shown.rpc != "Ask":
        raise InvalidInput("corrected_answer is for Ask responses; this request was a search", field="corrected_answer")
    store = writer.store
    if not await asyncio.to_thread(store.add_feedback, fb):
        (before,) = await asyncio.to_thread(store.feedback, fb.request_id, client.id)
        raise AlreadyExists(
            f"client {client.id!r} already rated request {fb.request_id!r} ({before.rating}, at {before.at}); "
            "feedback is given once per call"
        )
    return feedback_pb2.FeedbackResponse(rated_request_id=fb.request_id, stored_at=fb.at)


def _may_rate(client, shown: Shown) -> bool:
    if shown.client == client.id:
        return True
    scope = scope_of(client)
    return client.may("admin") and (scope is None or scope.covers(shown))


async def _find(
    writer: ShownWriter, request_id: str, wait_s: float | None, visible: Callable[[Shown], bool]
) -> Shown | None:
    """The shown record, if `visible` to the caller; a call answered by another Ingress replica
    may still be in its buffer for up to one flush interval, so a miss is asked again until then."""
    await asyncio.to_thread(writer.flush)
    deadline = time.monotonic() + (2 * writer.flush_s if wait_s is None else wait_s)
    while True:
        shown = await asyncio.to_thread(writer.store.shown, request_id)
        if shown is not None and visible(shown):
            return shown
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.2)


# -- review --------------------------------------------------------------------------------
def scope_of(client) -> Scope | None:
    """The records an admin may read and mark: those of its own calls and of the collections
    it may use; None (every record) for an admin of every collection ("*")."""
    if "*" in client.collections:
        return None
    return Scope(client.id, tuple(client.collections))


async def list_feedback(
    writer: ShownWriter, client, req: feedback_pb2.ListFeedbackRequest
) -> feedback_pb2.ListFeedbackResponse:
    if req.limit < 0 or req.limit > MAX_LIST:
        raise InvalidInput(f"limit {req.limit} must be between 0 (default 100) and {MAX_LIST}", field="limit")
    if req.view not in (feedback_pb2.FEEDBACK_VIEW_REVIEW, feedback_pb2.FEEDBACK_VIEW_RATED):
        raise InvalidInput(f"view {req.view} is not FEEDBACK_VIEW_REVIEW (0) or FEEDBACK_VIEW_RATED (1)", field="view")
    await asyncio.to_thread(writer.flush)
    view = "review" if req.view == feedback_pb2.FEEDBACK_VIEW_REVIEW else "rated"
    listed = await asyncio.to_thread(
        writer.store.listing, view, req.since, req.limit or 100, with_uploads=req.with_uploads, scope=scope_of(client)
    )
    return feedback_pb2.ListFeedbackResponse(records=[record_of(item) for item in listed])


def record_of(item: Listed) -> feedback_pb2.FeedbackRecord:
    s = item.shown
    return feedback_pb2.FeedbackRecord(
        request_id=s.request_id,
        at=s.at,
        client=s.client,
        rpc=s.rpc,
        collection=s.collection,
        verdict=s.verdict,
        shown_json=json.dumps(s.shown, sort_keys=True),
        ratings=[
            feedback_pb2.Rating(
                client=f.client,
                at=f.at,
                vote=_VOTE_PROTO.get(f.vote, feedback_pb2.VOTE_UNSPECIFIED),
                stars=f.stars,
                comment=f.comment,
                used_ids=list(f.used_ids),
                corrected_answer=f.corrected_answer,
            )
            for f in item.feedback
        ],
        reasons=item.reasons,
        reviewed_at=s.reviewed_at,
        reviewed_by=s.reviewed_by,
        review_note=s.review_note,
        uploads=list(s.uploads),
    )


async def mark_reviewed(
    writer: ShownWriter,
    client,
    req: feedback_pb2.MarkReviewedRequest,
    *,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> feedback_pb2.MarkReviewedResponse:
    if len(req.note) > MAX_COMMENT:
        raise InvalidInput(f"note is {len(req.note)} characters; at most {MAX_COMMENT}", field="note")
    await asyncio.to_thread(writer.flush)
    at = _now(clock)
    marked = await asyncio.to_thread(
        writer.store.mark_reviewed, req.request_id.strip(), client.id, _mask(req.note), at, scope=scope_of(client)
    )
    if not marked:
        raise NotFound(f"no recorded call has request id {req.request_id!r}", field="request_id")
    return feedback_pb2.MarkReviewedResponse(reviewed_at=at)
