"""Proto <-> domain conversion, with validation of everything a client can get wrong."""

from __future__ import annotations

import base64
import math
import re
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from encoders.common.errors import InvalidInput
from indexing.types import Condition, Modality, Range
from protos.loupe.v1 import audio_pb2, common_pb2, qa_pb2
from services.config import DEFAULT_COLLECTION, RequestLimits

_MODALITY_TO_PROTO = {
    Modality.IMAGE: common_pb2.MODALITY_IMAGE,
    Modality.TEXT: common_pb2.MODALITY_TEXT,
    Modality.AUDIO_SEGMENT: common_pb2.MODALITY_AUDIO_SEGMENT,
    Modality.AUDIO: common_pb2.MODALITY_AUDIO,
}
_MODALITY_FROM_PROTO = {v: k for k, v in _MODALITY_TO_PROTO.items()}
# Names and keys are checked with `fullmatch`: `match` with "$" lets a trailing "\n" through.
_COLLECTION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ID_MAX = 256


def collection_name(name: str, field: str = "collection") -> str:
    name = name or DEFAULT_COLLECTION
    if not _COLLECTION_RE.fullmatch(name):
        raise InvalidInput(
            f"collection name {name[:80]!r} is invalid: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            field=field,
        )
    return name


def modalities(values, field: str) -> tuple[Modality, ...]:
    out = []
    for i, value in enumerate(values):
        if value not in _MODALITY_FROM_PROTO:
            raise InvalidInput(
                f"modality {value} is not one of IMAGE, TEXT, AUDIO_SEGMENT, AUDIO", field=f"{field}[{i}]"
            )
        out.append(_MODALITY_FROM_PROTO[value])
    return tuple(dict.fromkeys(out))


def caller_id(value: str, field: str) -> str | None:
    if not value:
        return None
    if len(value) > _ID_MAX or any(ord(c) < 32 for c in value):
        raise InvalidInput(f"id must be at most {_ID_MAX} printable characters", field=field)
    if value.startswith("sha256:"):
        raise InvalidInput(
            "ids starting with 'sha256:' are reserved for content-addressed items; leave id empty to get one",
            field=field,
        )
    return value


def metadata(struct: struct_pb2.Struct, limits: RequestLimits, field: str) -> dict[str, Any]:
    """User metadata: flat keys; values are strings, numbers, booleans or lists of those."""
    data = MessageToDict(struct) if struct.fields else {}
    if len(data) > limits.max_metadata_keys:
        raise InvalidInput(f"metadata has {len(data)} keys; the limit is {limits.max_metadata_keys}", field=field)
    for key, value in data.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
            raise InvalidInput(
                f"metadata key {key[:80]!r} must be 1-64 letters, digits or '_', not starting with a digit",
                field=f"{field}.{key[:80]}",
            )
        values = value if isinstance(value, list) else [value]
        for v in values:
            _check_scalar(v, limits, f"{field}.{key}")
        data[key] = [_integral(v) for v in value] if isinstance(value, list) else _integral(value)
    return data


def _check_scalar(value: Any, limits: RequestLimits, field: str) -> None:
    if value is None or isinstance(value, (dict, list)):
        raise InvalidInput("metadata values must be strings, numbers, booleans or flat lists of those", field=field)
    if isinstance(value, str) and len(value) > limits.max_metadata_value_chars:
        raise InvalidInput(
            f"metadata string is {len(value)} characters; the limit is {limits.max_metadata_value_chars}", field=field
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput("metadata numbers must be finite", field=field)


def _integral(value: Any) -> Any:
    # protobuf Struct has only doubles; keep whole numbers as ints so equality filters match.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def conditions(flt: common_pb2.Filter, field: str = "filter") -> tuple[Condition, ...]:
    """Filter proto -> user-level conditions (field names are resolved by the index)."""
    out = []
    for i, cond in enumerate(flt.must):
        where = f"{field}.must[{i}]"
        if not cond.field:
            raise InvalidInput("filter condition has no field name", field=f"{where}.field")
        kind = cond.WhichOneof("match")
        if kind is None:
            raise InvalidInput(f"filter on {cond.field!r} has no match: set equals, any_of or range", field=where)
        if kind == "equals":
            out.append(Condition(key=cond.field, equals=_filter_scalar(cond.equals, f"{where}.equals")))
        elif kind == "any_of":
            if not cond.any_of.values:
                raise InvalidInput(
                    f"filter on {cond.field!r}: any_of needs at least one value", field=f"{where}.any_of"
                )
            values = tuple(_filter_scalar(v, f"{where}.any_of") for v in cond.any_of.values)
            out.append(Condition(key=cond.field, any_of=values))
        else:
            out.append(Condition(key=cond.field, range=_range(cond.range, cond.field, f"{where}.range")))
    return tuple(out)


def _filter_scalar(value: struct_pb2.Value, field: str):
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value" and math.isfinite(value.number_value):
        return _integral(value.number_value)
    raise InvalidInput("filter values must be a string, a finite number or a boolean", field=field)


def _range(rng: common_pb2.Range, name: str, field: str) -> Range:
    bounds = {b: getattr(rng, b) for b in ("gte", "gt", "lte", "lt") if rng.HasField(b)}
    if not bounds:
        raise InvalidInput(f"range filter on {name!r} has no bounds: set gte, gt, lte or lt", field=field)
    if any(not math.isfinite(v) for v in bounds.values()):
        raise InvalidInput(f"range filter on {name!r} has a non-finite bound", field=field)
    low = max((bounds.get("gte", -math.inf), bounds.get("gt", -math.inf)))
    high = min((bounds.get("lte", math.inf), bounds.get("lt", math.inf)))
    if low > high:
        raise InvalidInput(
            f"range filter on {name!r} is empty: lower bound {low} is above upper bound {high}", field=field
        )
    return Range(**bounds)


def item(payload: dict[str, Any], collection: str, *, thumbnail: bool = False) -> common_pb2.Item:
    msg = common_pb2.Item(
        id=payload.get("id", ""),
        modality=_MODALITY_TO_PROTO.get(Modality(payload.get("modality", "image"))),
        sources=payload.get("sources", []),
        text=payload.get("text") or "",
        sha256=payload.get("sha256", ""),
        model_id=payload.get("model_id", ""),
        model_version=payload.get("model_version", ""),
        width=int(payload.get("width") or 0),
        height=int(payload.get("height") or 0),
        created_at=float(payload.get("created_at") or 0),
        updated_at=float(payload.get("updated_at") or 0),
        collection=collection,
        parent_id=payload.get("parent_id") or "",
        start_s=float(payload.get("start_s") or 0),
        end_s=float(payload.get("end_s") or 0),
        language=payload.get("language") or "",
        duration_s=float(payload.get("duration_s") or 0),
    )
    if payload.get("meta"):
        msg.metadata.update(payload["meta"])
    if thumbnail and payload.get("thumbnail"):
        msg.thumbnail = base64.b64decode(payload["thumbnail"])
    return msg


_MODES = {0: "dense", 1: "keyword", 2: "hybrid"}


def search_mode(value: int, field: str = "options.mode") -> str:
    if value not in _MODES:
        raise InvalidInput(f"search mode {value} is not one of DENSE, KEYWORD, HYBRID", field=field)
    return _MODES[value]


def language(code: str, field: str = "language") -> str | None:
    code = code.strip().lower()
    if not code:
        return None
    if not re.fullmatch(r"[a-z]{2,3}", code):
        raise InvalidInput(
            f"language {code[:20]!r} must be an ISO 639-1 code like 'en', or empty to detect it", field=field
        )
    return code


def transcript_controls(controls) -> audio_pb2.TranscriptControls:
    """encoders.whisper.controls.TranscriptControls as the wire message."""
    return audio_pb2.TranscriptControls(**controls.as_dict())


def transcript_part(part) -> audio_pb2.TranscribeResponse:
    """A TranscriptInfo, a Segment or the closing TranscriptControls as a stream message."""
    if hasattr(part, "loops_cut"):
        return audio_pb2.TranscribeResponse(controls=transcript_controls(part))
    if hasattr(part, "language_probability"):
        return audio_pb2.TranscribeResponse(
            info=audio_pb2.TranscriptInfo(
                language=part.language,
                language_probability=part.language_probability,
                duration_s=part.duration_s,
                model_id=part.model_id,
            )
        )
    words = [
        audio_pb2.Word(start_s=w.start, end_s=w.end, text=w.text.strip(), probability=w.probability) for w in part.words
    ]
    return audio_pb2.TranscribeResponse(
        segment=audio_pb2.TranscriptSegment(
            start_s=part.start,
            end_s=part.end,
            text=part.text,
            words=words,
            avg_logprob=part.avg_logprob,
            no_speech_prob=part.no_speech_prob,
        )
    )


_VERDICTS = {
    "answered": qa_pb2.ANSWER_VERDICT_ANSWERED,
    "abstained": qa_pb2.ANSWER_VERDICT_ABSTAINED,
    "blocked": qa_pb2.ANSWER_VERDICT_BLOCKED,
}


def answer(a) -> qa_pb2.AskResponse:
    """An lmm.types.Answer as the wire message."""
    return qa_pb2.AskResponse(
        text=a.text,
        citations=list(a.citations),
        verdict=_VERDICTS[a.verdict.value],
        guards=[qa_pb2.GuardReport(guard=g.guard, passed=g.passed, reason=g.reason, action=g.action) for g in a.guards],
        model_id=a.model_id,
        prompt_version=a.prompt_version,
        timings_s=dict(a.timings),
        attempts=a.attempts,
        tokens_in=a.tokens_in,
        tokens_out=a.tokens_out,
        cited=[
            qa_pb2.Citation(
                id=c.id, source=c.source, snippet=c.snippet, modality=c.modality, start_s=c.start_s, end_s=c.end_s
            )
            for c in a.cited
        ],
    )
