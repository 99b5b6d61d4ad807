"""Turn a client's filter (user-facing field names) into a store `Filter` (payload keys).

Checks happen here, once, so both backends see only conditions Qdrant can evaluate:
equality on str/int/bool, any_of over strings or integers, numeric ranges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from encoders.common.errors import InvalidInput
from indexing.types import Condition, Filter, Range

# User-facing name -> (payload key, value types). User metadata field "x" is "meta.x"; a
# metadata field shadowed by a built-in name stays reachable as "meta.<name>".
BUILTIN_FIELDS: dict[str, tuple[str, frozenset[str]]] = {
    "id": ("id", frozenset({"str"})),
    "source": ("sources", frozenset({"str"})),
    "sha256": ("sha256", frozenset({"str"})),
    "modality": ("modality", frozenset({"str"})),
    "model_id": ("model_id", frozenset({"str"})),
    "model_version": ("model_version", frozenset({"str"})),
    "width": ("width", frozenset({"int"})),
    "height": ("height", frozenset({"int"})),
    "created_at": ("created_at", frozenset({"float"})),
    "updated_at": ("updated_at", frozenset({"float"})),
    # Audio: a segment's recording, its span, a recording's length, the text's language.
    "parent_id": ("parent_id", frozenset({"str"})),
    "language": ("language", frozenset({"str"})),
    "start_s": ("start_s", frozenset({"float"})),
    "end_s": ("end_s", frozenset({"float"})),
    "duration_s": ("duration_s", frozenset({"float"})),
}
_NUMERIC = frozenset({"int", "float"})


def lookup_field(name: str, meta_fields: dict[str, frozenset[str]]) -> tuple[str, frozenset[str]] | None:
    """(payload key, value types) of a user-facing field, None if unknown."""
    if name in BUILTIN_FIELDS:
        return BUILTIN_FIELDS[name]
    bare = name[len("meta.") :] if name.startswith("meta.") else name
    if bare in meta_fields:
        return "meta." + bare, meta_fields[bare]
    return None


def unknown_field(name: str, meta_fields: dict[str, frozenset[str]], at: str) -> InvalidInput:
    builtins = ", ".join(sorted(BUILTIN_FIELDS))
    user = ", ".join(sorted(meta_fields)) or "none yet"
    return InvalidInput(
        f"unknown filter field {name!r}; built-in fields: {builtins}; metadata fields of this collection: {user}",
        field=at,
    )


def check_condition(c: Condition, key: str, types: frozenset[str], at: str) -> Condition:
    """One user condition, validated against the field's value types, with payload `key`.

    `types` is empty for a field only ever seen holding empty lists: nothing to check against.
    """
    given = [name for name in ("equals", "any_of", "range") if getattr(c, name) is not None]
    if len(given) != 1:
        raise InvalidInput(
            f"a condition on {c.key!r} must set exactly one of equals, any_of, range (got {given or 'none'})",
            field=at,
        )
    if c.range is not None:
        return Condition(key=key, range=_check_range(c.key, c.range, types, f"{at}.range"))
    if c.any_of is not None:
        return Condition(key=key, any_of=_check_any_of(c.key, c.any_of, types, f"{at}.any_of"))
    return _check_equals(c.key, key, c.equals, types, f"{at}.equals")


def _check_range(name: str, r: Range, types: frozenset[str], at: str) -> Range:
    if types and not types <= _NUMERIC:
        raise InvalidInput(f"field {name!r} holds {_describe(types)} values; a range needs a numeric field", field=at)
    bounds = [r.gte, r.gt, r.lte, r.lt]
    if all(b is None for b in bounds):
        raise InvalidInput(f"the range on {name!r} sets no bound; set gte, gt, lte or lt", field=at)
    for b in bounds:
        if b is not None and not (_is_number(b) and math.isfinite(b)):
            raise InvalidInput(f"range bounds on {name!r} must be finite numbers, got {b!r}", field=at)
    return r


def _check_any_of(name: str, values: Any, types: frozenset[str], at: str) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        raise InvalidInput(f"any_of on {name!r} must be a non-empty list of values", field=at)
    out = tuple(_integral(v) for v in values)
    if all(isinstance(v, str) for v in out):
        kind = "str"
    elif all(_is_int(v) for v in out):
        kind = "int"
    else:
        # Qdrant matches sets of strings or of integers only.
        raise InvalidInput(
            f"any_of on {name!r} takes only strings or only integers; for a boolean use equals, "
            "for decimals use a range",
            field=at,
        )
    _check_kind(name, kind, types, at)
    return out


def _check_equals(name: str, key: str, value: Any, types: frozenset[str], at: str) -> Condition:
    if isinstance(value, (list, tuple, set, dict)):
        raise InvalidInput(f"equals on {name!r} takes one value; to match any of several values use any_of", field=at)
    if isinstance(value, bool) or isinstance(value, str):
        _check_kind(name, "bool" if isinstance(value, bool) else "str", types, at)
        return Condition(key=key, equals=value)
    if not (_is_number(value) and math.isfinite(value)):
        raise InvalidInput(f"equals on {name!r} takes a string, integer, number or boolean, got {value!r}", field=at)
    _check_kind(name, "int", types, at)
    value = _integral(value)
    if isinstance(value, float) or "float" in types:
        # Floats are compared as a closed range: exact float equality is not a Qdrant match,
        # and 3 must also find a stored 3.0.
        return Condition(key=key, range=Range(gte=float(value), lte=float(value)))
    return Condition(key=key, equals=value)


def _check_kind(name: str, kind: str, types: frozenset[str], at: str) -> None:
    compatible = types & _NUMERIC if kind == "int" else types & {kind}
    if types and not compatible:
        shown = {"str": "a string", "int": "a number", "bool": "a boolean"}[kind]
        raise InvalidInput(f"field {name!r} holds {_describe(types)} values, the filter gives {shown}", field=at)


def _describe(types: frozenset[str]) -> str:
    names = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
    return "/".join(sorted(names[t] for t in types))


def _integral(v: Any) -> Any:
    # Clients may send every number as a double (protobuf Value, JSON); 3.0 means 3.
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def resolve(
    conditions: Sequence[Condition], meta_fields: dict[str, frozenset[str]]
) -> tuple[Filter, list[tuple[str, str]]]:
    """Resolve what is known; return (field name, request path) of unknown fields for the
    caller to refresh and retry (another process may have just recorded them). Raises on
    any other problem."""
    out: list[Condition] = []
    unknown: list[tuple[str, str]] = []
    for i, c in enumerate(conditions):
        found = lookup_field(c.key, meta_fields)
        if found is None:
            unknown.append((c.key, f"filter.must[{i}].field"))
            continue
        key, types = found
        out.append(check_condition(c, key, types, f"filter.must[{i}]"))
    return Filter(must=tuple(out)), unknown
