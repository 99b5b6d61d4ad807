"""`loupe feedback`, `loupe review` and `loupe feedback export`.

    loupe feedback REQUEST_ID --up | --down | --stars N [--comment T] [--used ID ...] [--correct T]
    loupe review [--all] [--since DAY] [--limit N] [--json]      what needs a human
    loupe review --done REQUEST_ID [--note T]                    take one off the queue
    loupe feedback export DIR [--since DAY]                      eval cases from real use

Export writes `DIR/ask_cases.jsonl` (the format of `loupe eval ask`, uploaded images under
`DIR/images/`) and `DIR/retrieval_cases.jsonl`, and says what it left out and why:

- an Ask answer rated with a corrected answer -> expected_verdict "answered" and the correction
  as expected_answer (the latest correction wins);
- an up-voted (or 4-5 star) answer -> the verdict it got, and for an answer its text and
  citations as expected_answer / expected_citations;
- a down-voted abstention or block -> expected_verdict "answered" (the user wanted an answer);
- a down-voted answer without a correction is left out: the case would not know what is right
  (a reviewer adds one with `loupe feedback ID --down --correct "..."`, admin may rate any call);
- a rated search -> a retrieval case: its query, collection, mode and filter, the ids the user
  used as relevant, the hits shown and not used as not relevant (down-voted only), and
  `needs_label: true` when nothing is known to be relevant yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from protos.loupe.v1 import feedback_pb2

_VOTE = {feedback_pb2.VOTE_UP: "up", feedback_pb2.VOTE_DOWN: "down"}


def add_arguments(feedback: argparse.ArgumentParser, review: argparse.ArgumentParser) -> None:
    feedback.add_argument("request_id", help="the request id of a search or answer, or 'export'")
    feedback.add_argument("out", nargs="?", type=Path, help="with 'export': the folder to write cases into")
    vote = feedback.add_mutually_exclusive_group()
    vote.add_argument("--up", action="store_true", help="it was good")
    vote.add_argument("--down", action="store_true", help="it was bad")
    vote.add_argument("--stars", type=int, default=0, help="1 (bad) .. 5 (good)")
    feedback.add_argument("--comment", default="")
    feedback.add_argument("--used", action="append", default=[], metavar="ID", help="a hit or cited id you used")
    feedback.add_argument("--correct", default="", metavar="TEXT", help="Ask: what the answer should have been")
    feedback.add_argument("--since", default="", help="export: from this UTC day (YYYY-MM-DD)")

    review.add_argument("--all", action="store_true", help="every rated call and abstention, reviewed or not")
    review.add_argument("--since", default="", help="from this UTC day (YYYY-MM-DD)")
    review.add_argument("--limit", type=int, default=50)
    review.add_argument("--json", action="store_true")
    review.add_argument("--done", metavar="REQUEST_ID", help="mark this call reviewed (off the queue)")
    review.add_argument("--note", default="", help="with --done: what was done about it")


def cmd_feedback(client, args) -> int:
    if args.request_id == "export":
        if args.out is None:
            print("give the folder to write to: loupe feedback export DIR", file=sys.stderr)
            return 2
        return export(client, args.out, since=args.since)
    if not (args.up or args.down or args.stars):
        print("give --up, --down or --stars N", file=sys.stderr)
        return 2
    done = client.feedback(
        args.request_id,
        vote="up" if args.up else "down" if args.down else None,
        stars=args.stars,
        comment=args.comment,
        used_ids=args.used,
        corrected_answer=args.correct,
    )
    print(f"feedback on {done.rated_request_id} stored at {done.stored_at}")
    return 0


def cmd_review(client, args) -> int:
    if args.done:
        at = client.mark_reviewed(args.done, args.note)
        print(f"{args.done} reviewed at {at}")
        return 0
    records = client.list_feedback("rated" if args.all else "review", since=args.since, limit=args.limit)
    if args.json:
        print(json.dumps([record_json(r) for r in records], indent=2))
        return 0
    if not records:
        print("nothing to review" if not args.all else "no rated calls")
        return 0
    for r in records:
        print(format_record(r))
    if not args.all:
        print(f"{len(records)} to review; when handled: loupe review --done REQUEST_ID [--note ...]")
    return 0


def record_json(r: feedback_pb2.FeedbackRecord) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "at": r.at,
        "client": r.client,
        "rpc": r.rpc,
        "collection": r.collection,
        "verdict": r.verdict,
        "reasons": list(r.reasons),
        "shown": json.loads(r.shown_json),
        "ratings": [_rating(x) for x in r.ratings],
        "reviewed_at": r.reviewed_at,
        "reviewed_by": r.reviewed_by,
        "review_note": r.review_note,
    }


def _rating(x: feedback_pb2.Rating) -> dict[str, Any]:
    return {
        "client": x.client,
        "at": x.at,
        "rating": _VOTE.get(x.vote) or f"{x.stars}/5",
        "comment": x.comment,
        "used_ids": list(x.used_ids),
        "corrected_answer": x.corrected_answer,
    }


def format_record(r: feedback_pb2.FeedbackRecord) -> str:
    shown = json.loads(r.shown_json)
    if r.rpc == "Ask":
        what = f"Q: {shown['question']}\n    A ({r.verdict}): {shown['text'] or '-'}"
    else:
        query = shown["query"].get("text") or shown["query"].get("image_id") or "(uploaded image)"
        hits = ", ".join(h["id"] for h in shown["hits"][:5]) or "no hits"
        what = f"search {shown['options']['mode']}: {query}\n    hits: {hits}"
    lines = [f"{r.at}  {r.request_id}  {r.client}  {r.rpc}  {r.collection or '-'}", f"    {what}"]
    lines += [f"    why: {reason}" for reason in r.reasons]
    for x in r.ratings:
        rating = _rating(x)
        extra = f", corrected: {x.corrected_answer!r}" if x.corrected_answer else ""
        lines.append(f"    rated {rating['rating']} by {x.client}{': ' + x.comment if x.comment else ''}{extra}")
    if r.reviewed_at:
        lines.append(f"    reviewed {r.reviewed_at} by {r.reviewed_by}: {r.review_note or '-'}")
    return "\n".join(lines)


# -- export --------------------------------------------------------------------------------
def export(client, out: Path, *, since: str = "") -> int:
    records = client.list_feedback("rated", since=since, limit=1000, with_uploads=True)
    ask, retrieval, skipped = export_cases(records, out)
    print(
        f"{len(ask)} Ask case(s) -> {out / 'ask_cases.jsonl'}; "
        f"{len(retrieval)} retrieval case(s) -> {out / 'retrieval_cases.jsonl'}"
    )
    for rid, why in skipped:
        print(f"  left out {rid}: {why}")
    if ask:
        print(f"run them: loupe eval ask {out / 'ask_cases.jsonl'}")
    return 0


def export_cases(
    records: list[feedback_pb2.FeedbackRecord], out: Path
) -> tuple[list[dict], list[dict], list[tuple[str, str]]]:
    """Write the cases files (and images); (ask cases, retrieval cases, (request id, why left out))."""
    out.mkdir(parents=True, exist_ok=True)
    ask, retrieval, skipped = [], [], []
    for r in records:
        shown = json.loads(r.shown_json)
        made = ask_case(r, shown, out) if r.rpc == "Ask" else retrieval_case(r, shown, out)
        if isinstance(made, str):
            skipped.append((r.request_id, made))
        else:
            (ask if r.rpc == "Ask" else retrieval).append(made)
    for name, cases in (("ask_cases.jsonl", ask), ("retrieval_cases.jsonl", retrieval)):
        (out / name).write_text("".join(json.dumps(c, sort_keys=True) + "\n" for c in cases), encoding="utf-8")
    return ask, retrieval, skipped


def ask_case(r: feedback_pb2.FeedbackRecord, shown: dict, out: Path) -> dict | str:
    """An `loupe eval ask` case, or why there is none."""
    if not r.ratings:
        return f"{r.verdict}, not rated yet: rate it (loupe feedback {r.request_id} --up | --down --correct ...)"
    if shown["images"] and len(r.uploads) < shown["images"]:
        return "its uploaded images are no longer kept (feedback.upload_keep_hours)"
    case: dict[str, Any] = {
        "id": r.request_id,
        "question": shown["question"],
        "images": _write_images(r, out),
        "source": "feedback",
    }
    retrieval = {k: v for k, v in shown["retrieval"].items() if v}
    if retrieval.get("k"):
        case["retrieval"] = retrieval
    corrected = [x for x in r.ratings if x.corrected_answer]
    latest = r.ratings[-1]
    if corrected:
        case.update(expected_verdict="answered", expected_answer=corrected[-1].corrected_answer)
    elif _positive(latest):
        case["expected_verdict"] = r.verdict
        if r.verdict == "answered":
            case["expected_answer"] = shown["text"]
            if shown["citations"]:
                case["expected_citations"] = shown["citations"]
    elif _negative(latest) and r.verdict in ("abstained", "blocked"):
        case["expected_verdict"] = "answered"
    elif _negative(latest):
        return "down-voted without a corrected answer: add one (loupe feedback ID --down --correct TEXT)"
    else:
        return "rated 3/5: neither good nor bad"
    if latest.comment:
        case["note"] = latest.comment
    return case


def retrieval_case(r: feedback_pb2.FeedbackRecord, shown: dict, out: Path) -> dict | str:
    """A retrieval case (query, what is relevant, what is not), or why there is none."""
    latest = r.ratings[-1] if r.ratings else None
    if latest is None:
        return "not rated"
    used = list(dict.fromkeys(i for x in r.ratings for i in x.used_ids))
    negative = any(_negative(x) for x in r.ratings)
    if not negative and not used:
        return "up-voted without used ids: nothing says which hits were relevant"
    case: dict[str, Any] = {"id": r.request_id, "source": "feedback", "collection": r.collection}
    query = shown["query"]
    if "text" in query:
        case["text"] = query["text"]
    elif "image_id" in query:
        case["image_id"] = query["image_id"]
    else:
        if not r.uploads:
            return "its query image is no longer kept (feedback.upload_keep_hours)"
        case["image"] = _write_images(r, out)[0]
    options = shown["options"]
    case.update(mode=options["mode"], where=options["where"], modalities=options["modalities"])
    case["relevant"] = {"ids": used}
    if negative:
        case["not_relevant"] = {"ids": [h["id"] for h in shown["hits"] if h["id"] not in used]}
    case["needs_label"] = not used
    if latest.comment:
        case["note"] = latest.comment
    return case


def _write_images(r: feedback_pb2.FeedbackRecord, out: Path) -> list[str]:
    folder = out / "images"
    folder.mkdir(exist_ok=True)
    names = []
    for n, data in enumerate(r.uploads, start=1):
        name = f"images/{_safe(r.request_id)}-{n}{_suffix(data)}"
        (out / name).write_bytes(data)
        names.append(name)
    return names


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:100]


def _suffix(data: bytes) -> str:
    for magic, suffix in ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp")):
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def _positive(x: feedback_pb2.Rating) -> bool:
    return x.vote == feedback_pb2.VOTE_UP or x.stars >= 4


def _negative(x: feedback_pb2.Rating) -> bool:
    return x.vote == feedback_pb2.VOTE_DOWN or 1 <= x.stars <= 2
