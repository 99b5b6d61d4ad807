"""What a batch run indexes: the rows of a folder or a manifest, with typed metadata.

A SOURCE is a folder (walked recursively; image and audio files by extension, files with
another extension by their first bytes) or a manifest (.csv, .jsonl/.ndjson, .parquet) with
a URI column and metadata columns that become payload fields.

Metadata types: "str", "int", "float", "bool", "date", "list[str]", "list[int]",
"list[float]", "list[bool]". A column's type is declared (`column_types`, or a CSV header
written "price:float"), else taken from Parquet's schema, else from the column's first
non-empty value. A value that does not fit its column's type fails that row only (stage
"metadata"), never the run. Dates are stored as ISO 8601 strings ("2024-05-01", or
"2024-05-01T10:00:00Z" in UTC for a time), which sort and compare as text. Empty cells and
nulls leave the field out for that row. CSV list cells are JSON arrays or "a|b|c".

Rows stream: nothing here holds more than one manifest batch in memory.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoders.audio.decode import sniff_container
from encoders.common.errors import InvalidInput
from encoders.image.decode import sniff_format

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
AUDIO_SUFFIXES = frozenset(
    {".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".webm", ".mka", ".aiff", ".aif", ".caf"}
)
MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
TYPES = ("str", "int", "float", "bool", "date", "list[str]", "list[int]", "list[float]", "list[bool]")
URI_COLUMNS = ("uri", "url", "path", "file")
# Same rule as stored metadata keys (indexing.payloads): they become payload paths.
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


@dataclass(frozen=True)
class Row:
    """One item to index: where it is, and its metadata (already typed), or why not."""

    row: int
    uri: str
    metadata: dict[str, Any]
    # Set when the row itself is broken (bad metadata, no URI): it is reported, not read.
    error: str = ""
    stage: str = ""


def rows(
    source: str | Path, *, uri_column: str | None = None, column_types: dict[str, str] | None = None
) -> Iterator[Row]:
    """Rows of a folder or a manifest, numbered from 1 (a manifest's data rows; the files
    of a folder in sorted order). InvalidInput if the source itself is unusable."""
    path = Path(source)
    if path.is_dir():
        yield from _folder_rows(path)
        return
    if not path.is_file():
        raise InvalidInput(f"batch source {str(source)!r} is neither a folder nor a manifest file", field="source")
    kind = MANIFEST_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InvalidInput(f"manifest {path.name!r} must end in one of {', '.join(MANIFEST_SUFFIXES)}", field="source")
    declared = dict(column_types or {})
    for column, type_name in declared.items():
        _check_type_name(column, type_name)
    records = {"csv": _csv_records, "jsonl": _jsonl_records, "parquet": _parquet_records}[kind](path, declared)
    yield from _typed_rows(records, path, uri_column, declared)


def parse_column_types(specs: list[str]) -> dict[str, str]:
    """["price=float", "tags=list[str]"] -> {"price": "float", "tags": "list[str]"}."""
    out = {}
    for spec in specs:
        name, sep, type_name = spec.partition("=")
        if not sep:
            raise InvalidInput(
                f"column type {spec!r} must be NAME=TYPE, TYPE one of {', '.join(TYPES)}", field="column_types"
            )
        _check_type_name(name.strip(), type_name.strip())
        out[name.strip()] = type_name.strip()
    return out


def media_kind(data: bytes) -> str | None:
    """ "image" or "audio" from the first bytes, else None."""
    if sniff_format(data):
        return "image"
    if sniff_container(data):
        return "audio"
    return None


# -- folders -----------------------------------------------------------------------------------


def _folder_rows(root: Path) -> Iterator[Row]:
    n = 0
    for path in _walk(root):
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES and suffix not in AUDIO_SUFFIXES and not _sniffs_as_media(path):
            continue
        n += 1
        yield Row(n, str(path), {})


def _walk(root: Path) -> Iterator[Path]:
    # Sorted and depth-first, so row numbers are stable between runs; hidden entries skipped.
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def _sniffs_as_media(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return media_kind(head) is not None


# -- manifests ---------------------------------------------------------------------------------


def _csv_records(path: Path, declared: dict[str, str]) -> Iterator[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise InvalidInput(f"manifest {path.name!r} is empty (no header row)", field="source")
        names = []
        for cell in header:
            name, _, type_name = cell.strip().partition(":")
            if type_name:
                _check_type_name(name, type_name.strip())
                declared.setdefault(name, type_name.strip())
            names.append(name)
        for cells in reader:
            if not any(c.strip() for c in cells):
                yield {}
                continue
            if len(cells) != len(names):
                yield {"\0error": f"row has {len(cells)} fields, the header has {len(names)}"}
                continue
            yield {n: c for n, c in zip(names, cells) if c != ""}


def _jsonl_records(path: Path, declared: dict[str, str]) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                yield {}
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield {"\0error": f"not valid JSON: {e.msg} at column {e.colno}"}
                continue
            if not isinstance(record, dict):
                yield {"\0error": "a JSON lines manifest row must be an object"}
                continue
            yield {k: v for k, v in record.items() if v is not None}


def _parquet_records(path: Path, declared: dict[str, str]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a broken file
        raise InvalidInput(f"manifest {path.name!r} is not a readable Parquet file: {e}", field="source") from e
    for field in file.schema_arrow:
        type_name = _arrow_type_name(field.type)
        if type_name:
            declared.setdefault(field.name, type_name)
    for batch in file.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            yield {k: v for k, v in record.items() if v is not None}


def _arrow_type_name(t: Any) -> str | None:
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _arrow_type_name(t.value_type)
        return f"list[{inner}]" if inner in ("str", "int", "float", "bool") else None
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        return "date"
    return None


def _typed_rows(
    records: Iterator[dict[str, Any]], path: Path, uri_column: str | None, declared: dict[str, str]
) -> Iterator[Row]:
    inferred: dict[str, str] = {}
    base = path.resolve().parent
    column = uri_column
    for n, record in enumerate(records, start=1):
        if "\0error" in record:
            yield Row(n, "", {}, error=record["\0error"], stage="manifest")
            continue
        if not record:
            continue
        if column is None:
            column = next((c for c in URI_COLUMNS if c in record), None)
            if column is None:
                raise InvalidInput(
                    f"manifest {path.name!r} has no URI column: name it one of "
                    f"{', '.join(URI_COLUMNS)}, or pass --uri-column",
                    field="uri_column",
                )
        uri = record.get(column)
        if not isinstance(uri, str) or not uri.strip():
            yield Row(n, "", {}, error=f"no URI in column {column!r}", stage="manifest")
            continue
        metadata, problem = {}, ""
        for key, value in record.items():
            if key == column:
                continue
            if not _COLUMN.fullmatch(key):
                raise InvalidInput(
                    f"manifest column {key!r} cannot be a metadata field: names start with a letter "
                    "or '_' and hold letters, digits, '_' or '-' (at most 64)",
                    field="source",
                )
            type_name = declared.get(key) or inferred.setdefault(key, _infer(value))
            try:
                metadata[key] = convert(value, type_name)
            except ValueError as e:
                problem = f"metadata column {key!r} ({type_name}): {e}"
                break
        resolved = _resolve_uri(uri.strip(), base)
        if problem:
            yield Row(n, resolved, {}, error=problem, stage="metadata")
        else:
            yield Row(n, resolved, metadata)


def _resolve_uri(uri: str, base: Path) -> str:
    # Relative paths are relative to the manifest, so a catalog folder can move as a whole.
    if "://" in uri:
        return uri
    p = Path(uri).expanduser()
    return str(p if p.is_absolute() else base / p)


# -- typing ------------------------------------------------------------------------------------


def _check_type_name(column: str, type_name: str) -> None:
    if type_name not in TYPES:
        raise InvalidInput(
            f"column {column!r}: unknown type {type_name!r}; types: {', '.join(TYPES)}", field="column_types"
        )


def _infer(value: Any) -> str:
    if isinstance(value, list):
        inner = {_infer(v) for v in value}
        inner = {"float"} if inner == {"int", "float"} else inner
        return f"list[{inner.pop()}]" if len(inner) == 1 and inner <= {"str", "int", "float", "bool"} else "list[str]"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (dt.date, dt.datetime)):
        return "date"
    text = str(value).strip()
    for type_name in ("int", "float", "bool", "date"):
        try:
            convert(text, type_name)
            return type_name
        except ValueError:
            pass
    if text.startswith("["):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return _infer(parsed)
        except json.JSONDecodeError:
            pass
    return "str"


def convert(value: Any, type_name: str) -> Any:
    """`value` (a CSV string or a JSON/Parquet value) as `type_name`; ValueError says why not."""
    if type_name.startswith("list["):
        inner = type_name[5:-1]
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v for v in text.split("|") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        return [convert(v, inner) for v in value]
    if type_name == "str":
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected text, got {value!r}")
        return value if isinstance(value, str) else json.dumps(value) if isinstance(value, bool) else str(value)
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"expected true/false, got {value!r}")
    if type_name == "int":
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            number = int(value) if not isinstance(value, str) else int(value.strip())
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
        if not -(2**63) <= number < 2**63:
            raise ValueError(f"{number} does not fit in 64 bits")
        return number
    if type_name == "float":
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    if type_name == "date":
        return _iso_date(value)
    raise ValueError(f"unknown type {type_name!r}")


def _iso_date(value: Any) -> str:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        return value.isoformat()
    elif isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return dt.date.fromisoformat(text).isoformat()
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected an ISO 8601 date such as 2024-05-01, got {value!r}") from None
    else:
        raise ValueError(f"expected an ISO 8601 date such as 2024-05-01, got {value!r}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds") + "Z"
