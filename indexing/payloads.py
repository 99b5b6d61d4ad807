"""What an item looks like going in (`NewItem`), its checks, and the payload stored for it.

Payload of every point (both backends):
    id, modality, sha256, sources[], meta{}, model_id, model_version, vectors{}, created_at,
    updated_at, plus, each only when the item sets it: text (text items, OCR text,
    transcripts), width/height (images), parent_id (a segment's recording), start_s/end_s (a
    segment's span in seconds), language (of the text, e.g. "en"), duration_s (a recording's
    length).

model_id/model_version are the model of the vector the latest upsert wrote. `vectors` maps
each dense vector the point has to the model_version that built it, e.g. {"clip": "v1",
"clip_l14": "v7"}: a collection being re-embedded holds a vector per model (see
`indexing.vectors`), and this says which of a point's vectors are already from a given
version. Points written before it existed have no `vectors`; their one vector is from
model_version.

The keyword (sparse) vector is stored as a vector, not in the payload.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from encoders.common.errors import InvalidInput
from encoders.text.keywords import SparseVector
from indexing.types import CollectionSchema, Modality

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Metadata keys become payload paths ("meta.<key>"): no dots, brackets, quotes or spaces,
# which Qdrant's JSON paths would read as structure.
_META_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_MAX_ID_LEN = 512
_INT64 = (-(2**63), 2**63 - 1)
_UINT32_MAX = 2**32 - 1
# BCP 47-like: "en", "pt-BR", "zh-Hant", "yue"; Whisper's codes fit.
_LANGUAGE = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8}){0,4}")


@dataclass
class NewItem:
    """One encoded item to store. `vector` is float32 and L2-normalised by the encoder."""

    public_id: str | None
    sha256: str
    modality: Modality
    vector: np.ndarray
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    width: int | None = None
    height: int | None = None
    # Keyword vector of the item's text (`encoders.text.keywords.keyword_vector`): captions, OCR
    # text, transcripts. None or empty: the item is not found by keyword search.
    keywords: SparseVector | None = None
    # Public id of the item this one is part of (a transcript segment's recording); deleting
    # the parent deletes it too.
    parent_id: str | None = None
    # Span of a segment within its recording, in seconds.
    start_s: float | None = None
    end_s: float | None = None
    # Language of the text, e.g. "en" (as a transcriber reports it).
    language: str | None = None
    # Length of a recording, in seconds.
    duration_s: float | None = None
    # Images: a small JPEG preview (encoders.image.thumbnail), stored base64 in the payload.
    thumbnail: bytes | None = None


def check_item(item: NewItem, index: int, schema: CollectionSchema) -> list[InvalidInput]:
    """Every problem of one item, each naming the request field at fault."""
    at = f"items[{index}]"
    problems: list[InvalidInput] = []
    if item.public_id is not None and not (
        isinstance(item.public_id, str) and 0 < len(item.public_id) <= _MAX_ID_LEN and item.public_id.isprintable()
    ):
        problems.append(InvalidInput(f"id must be 1-{_MAX_ID_LEN} printable characters, or left out", field=f"{at}.id"))
    if not isinstance(item.sha256, str) or not _SHA256.fullmatch(item.sha256.lower()):
        problems.append(InvalidInput("sha256 must be 64 hex digits", field=f"{at}.sha256"))
    if not isinstance(item.modality, Modality):
        problems.append(InvalidInput(f"unknown modality {item.modality!r}", field=f"{at}.modality"))
    problems += _check_vector(item.vector, schema.dim, f"{at}.vector")
    if item.source is not None and not isinstance(item.source, str):
        problems.append(InvalidInput("source must be a string", field=f"{at}.source"))
    if item.text is not None and not isinstance(item.text, str):
        problems.append(InvalidInput("text must be a string", field=f"{at}.text"))
    for name in ("width", "height"):
        value = getattr(item, name)
        if value is not None and not (_is_int(value) and value > 0):
            problems.append(InvalidInput(f"{name} must be a positive integer", field=f"{at}.{name}"))
    if item.keywords is not None:
        problems += _check_keywords(item.keywords, f"{at}.keywords")
    if item.parent_id is not None and not (
        isinstance(item.parent_id, str) and 0 < len(item.parent_id) <= _MAX_ID_LEN and item.parent_id.isprintable()
    ):
        problems.append(
            InvalidInput(
                f"parent_id must be 1-{_MAX_ID_LEN} printable characters, or left out", field=f"{at}.parent_id"
            )
        )
    for name in ("start_s", "end_s", "duration_s"):
        value = getattr(item, name)
        if value is not None and not (_is_number(value) and math.isfinite(value) and value >= 0):
            problems.append(InvalidInput(f"{name} must be a finite number of seconds >= 0", field=f"{at}.{name}"))
    if (
        _is_number(item.start_s)
        and _is_number(item.end_s)
        and math.isfinite(item.start_s)
        and math.isfinite(item.end_s)
        and item.end_s < item.start_s
    ):
        problems.append(InvalidInput(f"end_s ({item.end_s}) is before start_s ({item.start_s})", field=f"{at}.end_s"))
    if item.language is not None and not (isinstance(item.language, str) and _LANGUAGE.fullmatch(item.language)):
        problems.append(
            InvalidInput(
                f"language {item.language!r} must be a language code such as 'en' or 'pt-BR'", field=f"{at}.language"
            )
        )
    if not isinstance(item.metadata, dict):
        problems.append(InvalidInput("metadata must be a map", field=f"{at}.metadata"))
    else:
        for key, value in item.metadata.items():
            problems += _check_meta(key, value, f"{at}.metadata")
    return problems


def _check_vector(vector: Any, dim: int, at: str) -> list[InvalidInput]:
    if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.shape[0] != dim:
        shape = getattr(vector, "shape", None)
        return [InvalidInput(f"vector must have shape ({dim},), got {shape}", field=at)]
    if not np.all(np.isfinite(vector)):
        return [InvalidInput("vector has NaN or infinite values", field=at)]
    return []


def _check_keywords(keywords: Any, at: str) -> list[InvalidInput]:
    if not isinstance(keywords, SparseVector):
        return [InvalidInput("keywords must be a SparseVector (encoders.text.keywords.keyword_vector)", field=at)]
    indices, values = keywords.indices, keywords.values
    if len(indices) != len(values):
        return [InvalidInput(f"keywords have {len(indices)} indices but {len(values)} values", field=at)]
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i <= _UINT32_MAX for i in indices):
        return [InvalidInput("keyword indices must be integers in 0..2^32-1", field=at)]
    if len(set(indices)) != len(indices):
        return [InvalidInput("keyword indices must be unique", field=at)]
    if not all(_is_number(v) and math.isfinite(v) for v in values):
        return [InvalidInput("keyword values must be finite numbers", field=at)]
    return []


def _check_meta(key: Any, value: Any, at: str) -> list[InvalidInput]:
    if not isinstance(key, str) or not _META_KEY.fullmatch(key):
        return [
            InvalidInput(
                f"metadata key {key!r} must start with a letter or '_' and hold only letters, digits, '_' or '-' "
                "(at most 64)",
                field=f"{at}.{key}",
            )
        ]
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if value_type(v) is None:
            return [
                InvalidInput(
                    f"metadata {key!r} must be a string, integer, finite number, boolean or a list of those",
                    field=f"{at}.{key}",
                )
            ]
    return []


def value_type(v: Any) -> str | None:
    """ "str" | "int" | "float" | "bool" for a storable metadata scalar, else None."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int" if _INT64[0] <= v <= _INT64[1] else None
    if isinstance(v, float):
        return "float" if math.isfinite(v) else None
    if isinstance(v, str):
        return "str"
    return None


def meta_types(metadata: dict[str, Any]) -> dict[str, set[str]]:
    """Field name -> value types in one item's metadata (list values count per element)."""
    out: dict[str, set[str]] = {}
    for key, value in metadata.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        out[key] = {t for t in map(value_type, values) if t is not None}
    return out


def build_payload(
    item: NewItem,
    key: str,
    schema: CollectionSchema,
    previous: dict[str, Any] | None,
    now: float,
    versions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The payload to store: new facts replace old ones, history (created_at, sources,
    metadata keys not given again) is kept. `versions`: the `vectors` map of the vectors
    the point keeps besides `schema.vector_name`, which this write adds."""
    sources = list(previous.get("sources", [])) if previous else []
    if item.source and item.source not in sources:
        sources.append(item.source)
    meta = dict(previous.get("meta", {})) if previous else {}
    meta.update({k: list(v) if isinstance(v, tuple) else v for k, v in item.metadata.items()})
    payload: dict[str, Any] = {
        "id": key,
        "modality": item.modality.value,
        "sha256": item.sha256.lower(),
        "sources": sources,
        "meta": meta,
        "model_id": schema.model_id,
        "model_version": schema.model_version,
        "vectors": {**(versions or {}), schema.vector_name: schema.model_version},
        "created_at": previous.get("created_at", now) if previous else now,
        "updated_at": now,
    }
    # Modality-specific fields come from the new item only: an id re-used for other content
    # must not keep the old image's size or text.
    if item.text is not None:
        payload["text"] = item.text
    if item.width is not None:
        payload["width"] = int(item.width)
    if item.height is not None:
        payload["height"] = int(item.height)
    if item.parent_id is not None:
        payload["parent_id"] = item.parent_id
    for name in ("start_s", "end_s", "duration_s"):
        value = getattr(item, name)
        if value is not None:
            # Always a float: filters on these fields compare as numbers either way, and one
            # type per field keeps the field's recorded type stable.
            payload[name] = float(value)
    if item.language is not None:
        payload["language"] = item.language
    if item.thumbnail:
        payload["thumbnail"] = base64.b64encode(item.thumbnail).decode("ascii")
    return payload


def check_update(source: Any, metadata: Any, at: str) -> list[InvalidInput]:
    """Problems of a payload-only update (a source and metadata for a stored item)."""
    problems = []
    if source is not None and not isinstance(source, str):
        problems.append(InvalidInput("source must be a string", field=f"{at}.source"))
    if not isinstance(metadata, dict):
        problems.append(InvalidInput("metadata must be a map", field=f"{at}.metadata"))
    else:
        for key, value in metadata.items():
            problems += _check_meta(key, value, f"{at}.metadata")
    return problems


def merge_update(
    previous: dict[str, Any], source: str | None, metadata: dict[str, Any], now: float
) -> dict[str, Any] | None:
    """`previous` with `source` among its sources and `metadata` merged in (new keys win),
    as `build_payload` merges them; None if that changes nothing."""
    sources = list(previous.get("sources", []))
    meta = dict(previous.get("meta", {}))
    changed = False
    if source and source not in sources:
        sources.append(source)
        changed = True
    for key, value in metadata.items():
        value = list(value) if isinstance(value, tuple) else value
        if key not in meta or not _same(meta[key], value):
            meta[key] = value
            changed = True
    if not changed:
        return None
    return {**previous, "sources": sources, "meta": meta, "updated_at": now}


def _same(a: Any, b: Any) -> bool:
    # Typed: 1, 1.0 and True are equal in Python but distinct values in a filter.
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return value_type(a) == value_type(b) and a == b


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
