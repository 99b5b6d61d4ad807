"""A collection's dense vectors: which model built each, which one is active, and the steps
that re-embed a collection for a new model while its searches go on.

    1. add_vector      a new, empty vector for the new model next to the active one
    2. fill it         a batch job upserts every item with the new model; `Index.upsert`
                       writes that vector only and keeps the others, and `Index.encoded`
                       tells which items are done. Services on the old model keep searching
                       and writing the old vector meanwhile.
    3. catch up        `Index.missing_vector` pages through the points still without it
                       (items indexed online while the batch ran)
    4. mark_complete   refused while any point lacks the vector
    5. switch_vector   it becomes the active vector (`Index.schema`)
    6. drop_vector     the old one, once no service uses its model

Requests are matched to a vector by model (id, version, dim), never by vector name: a
service configured with the new model may still call its vector "clip". Each service
searches and writes the vector of its own model, whichever one is active.

The registry is cached per process and re-read every `_REFRESH_S` seconds, and at once when
a request's model is not in the cached copy, so what a batch job in another process adds,
switches or drops reaches running services.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, replace

from encoders.common.errors import InvalidInput, ModelMismatch, NotFound, VectorStateConflict
from indexing.types import KEYWORD_VECTOR, CollectionSchema, Filter, HasVector, VectorSpec, VectorStore

# Also a folder name in the Edge backend and part of point ids: no "/", nothing hidden.
# Vector names follow the same rule. Always `fullmatch`: `match` with "$" would let a
# trailing newline through (and into a folder name).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_REFRESH_S = 5.0


@dataclass(frozen=True)
class _Cached:
    specs: list[VectorSpec]
    keyword_vector: str | None
    read_at: float


class VectorRegistry:
    """The vector registry of every collection of one store, cached. Callers serialise
    changes (`Index` holds its write lock), so a count and the write it allows stay together
    within this process."""

    def __init__(self, store: VectorStore) -> None:
        self._store = store
        self._cache: dict[str, _Cached] = {}
        self._mu = threading.Lock()

    # -- reading ---------------------------------------------------------------------------

    def specs(self, name: str, *, refresh: bool = False) -> list[VectorSpec] | None:
        """Every dense vector of `name`, active first; None if the collection does not exist."""
        cached = self._read(name, refresh=refresh)
        return None if cached is None else cached.specs

    def active(self, name: str) -> CollectionSchema | None:
        cached = self._read(name)
        return None if cached is None else cached.specs[0].schema(cached.keyword_vector)

    def schema_for(self, name: str, wanted: CollectionSchema) -> CollectionSchema | None:
        """The schema of the vector built by `wanted`'s model (the active one first); None if
        the collection does not exist, ModelMismatch if no vector fits."""
        cached = self._read(name)
        if cached is None:
            return None
        found = _built_by(cached.specs, wanted)
        if found is None:
            # Another process may have added a vector for this model since the last read.
            cached = self._read(name, refresh=True)
            if cached is None:
                return None
            found = _built_by(cached.specs, wanted)
        if found is None:
            raise mismatch(name, cached.specs, wanted)
        return found.schema(cached.keyword_vector)

    def spec(self, name: str, vector_name: str, *, refresh: bool = False) -> VectorSpec:
        """The named vector; NotFound listing the collection's vectors if there is none."""
        specs = self.specs(name, refresh=refresh) or []
        found = next((s for s in specs if s.vector_name == vector_name), None)
        if found is None and not refresh:
            specs = self.specs(name, refresh=True) or []
            found = next((s for s in specs if s.vector_name == vector_name), None)
        if found is None:
            raise NotFound(
                f"collection {name!r} has no vector {vector_name!r}; its vectors: {_listing(specs)}",
                field="vector_name",
            )
        return found

    def count_missing(self, name: str, vector_name: str) -> int:
        return self._store.count(name, missing(vector_name))

    # -- changing --------------------------------------------------------------------------

    def add(self, name: str, schema: CollectionSchema) -> VectorSpec:
        cached = self._read(name, refresh=True)
        if cached is None:
            raise NotFound(f"collection {name!r} does not exist", field="collection")
        check_vector_name(schema.vector_name, cached.keyword_vector)
        if schema.dim <= 0 or not schema.model_id:
            raise InvalidInput(f"invalid vector schema {schema}", field="schema")
        same_name = next((s for s in cached.specs if s.vector_name == schema.vector_name), None)
        if same_name is not None:
            if same_name.matches(schema):
                return same_name
            raise ModelMismatch(
                f"collection {name!r} already has a vector {schema.vector_name!r}, built by {_model(same_name)}; "
                f"give the vector of {_model(schema)} another name",
                field="vector_name",
            )
        same_model = _built_by(cached.specs, schema)
        if same_model is not None:
            raise VectorStateConflict(
                f"collection {name!r} already has vector {same_model.vector_name!r} built by {_model(schema)}; "
                "requests with that model use it, a second one would be ambiguous",
                field="vector_name",
            )
        spec = VectorSpec.of(schema, complete=False)
        # Store first: a crash in between leaves an unlisted vector, which the next add of
        # this name replaces, never a listed vector the store lacks.
        self._store.create_vector(name, spec.vector_name, spec.dim)
        self._write(name, cached, [*cached.specs, spec])
        return spec

    def mark_complete(self, name: str, vector_name: str) -> None:
        spec = self.spec(name, vector_name, refresh=True)
        lacking = self.count_missing(name, vector_name)
        if lacking:
            raise VectorStateConflict(
                f"{lacking} point(s) of collection {name!r} still lack vector {vector_name!r}; "
                "fill them (Index.missing_vector lists them) before marking it complete",
                field="vector_name",
            )
        if not spec.complete:
            self._set_complete(name, {vector_name: True})

    def switch(self, name: str, vector_name: str) -> None:
        spec = self.spec(name, vector_name, refresh=True)
        cached = self._read(name)
        if cached.specs[0].vector_name == vector_name:
            return
        lacking = self.count_missing(name, vector_name)
        if spec.complete and lacking:
            # Points created since it was marked complete, by a service on another model.
            self._set_complete(name, {vector_name: False})
        if not spec.complete or lacking:
            raise VectorStateConflict(
                f"vector {vector_name!r} of collection {name!r} is not complete ({lacking} point(s) lack it); "
                "fill it and mark it complete before making it the active vector",
                field="vector_name",
            )
        self._write(name, cached, [spec, *(s for s in cached.specs if s.vector_name != vector_name)])

    def drop(self, name: str, vector_name: str) -> None:
        self.spec(name, vector_name, refresh=True)
        cached = self._read(name)
        if cached.specs[0].vector_name == vector_name:
            raise VectorStateConflict(
                f"vector {vector_name!r} is the active vector of collection {name!r}; "
                "switch to another vector before dropping it",
                field="vector_name",
            )
        # Registry first: a crash in between leaves an unlisted vector (space, nothing worse),
        # never a listed vector the store lacks.
        self._write(name, cached, [s for s in cached.specs if s.vector_name != vector_name])
        self._store.delete_vector(name, vector_name)

    def mark_incomplete(self, name: str, vector_names: list[str]) -> None:
        """Points were created without these vectors."""
        self._set_complete(name, dict.fromkeys(vector_names, False))

    def forget(self, name: str) -> None:
        with self._mu:
            self._cache.pop(name, None)

    # -- internals -------------------------------------------------------------------------

    def _read(self, name: str, *, refresh: bool = False) -> _Cached | None:
        with self._mu:
            cached = self._cache.get(name)
        if cached is not None and not refresh and time.monotonic() - cached.read_at < _REFRESH_S:
            return cached
        schema = self._store.get_schema(name)
        specs = self._store.get_vectors(name) if schema is not None else None
        if not specs:
            self.forget(name)
            return None
        cached = _Cached(specs, schema.keyword_vector, time.monotonic())
        with self._mu:
            self._cache[name] = cached
        return cached

    def _set_complete(self, name: str, complete: dict[str, bool]) -> None:
        cached = self._read(name, refresh=True)
        if cached is None:
            return
        specs = [replace(s, complete=complete.get(s.vector_name, s.complete)) for s in cached.specs]
        if specs != cached.specs:
            self._write(name, cached, specs)

    def _write(self, name: str, cached: _Cached, specs: list[VectorSpec]) -> None:
        self._store.set_vectors(name, specs)
        with self._mu:
            self._cache[name] = _Cached(specs, cached.keyword_vector, time.monotonic())


def missing(vector_name: str) -> Filter:
    """Points without `vector_name`."""
    return Filter(must_not=(HasVector(vector_name),))


def check_vector_name(vector_name: str, keyword_vector: str | None) -> None:
    if not isinstance(vector_name, str) or not NAME.fullmatch(vector_name):
        raise InvalidInput(
            f"vector name {vector_name!r} must be 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            field="vector_name",
        )
    if vector_name in {KEYWORD_VECTOR, keyword_vector}:
        raise InvalidInput(f"vector name {vector_name!r} is the keyword vector's", field="vector_name")


def mismatch(name: str, specs: list[VectorSpec], wanted: CollectionSchema) -> ModelMismatch:
    if not any(s.model_id for s in specs):
        built_by = "an unknown model (the collection was not created by Loupe)"
    else:
        built_by = " and ".join(
            f"{_model(s)} in vector {s.vector_name!r}{_state(s, i, len(specs))}" for i, s in enumerate(specs)
        )
    return ModelMismatch(
        f"collection {name!r} was built by {built_by}, but this request uses {_model(wanted)}; "
        "vectors of different models are not comparable: use another collection for this model, "
        "or re-index the collection's content with it",
        field="collection",
    )


def versions_kept(payload: dict | None, kept: set[str], specs: list[VectorSpec]) -> dict[str, str]:
    """The payload's `vectors` map restricted to the vectors a point still has.

    Points written before there could be several vectors have no map: their one vector was
    built by the payload's model, whichever of `specs` that is.
    """
    if not payload:
        return {}
    recorded = payload.get("vectors")
    if not isinstance(recorded, dict):
        model = (payload.get("model_id"), payload.get("model_version"))
        recorded = {s.vector_name: s.model_version for s in specs if (s.model_id, s.model_version) == model}
    return {n: v for n, v in recorded.items() if n in kept}


def _built_by(specs: list[VectorSpec], wanted: CollectionSchema) -> VectorSpec | None:
    return next((s for s in specs if s.model_id and s.matches(wanted)), None)


def _model(s: VectorSpec | CollectionSchema) -> str:
    return f"{s.model_id} (version {s.model_version}, dim {s.dim})"


def _state(spec: VectorSpec, position: int, count: int) -> str:
    if count == 1:
        return ""
    if position == 0:
        return " (active)"
    return "" if spec.complete else " (incomplete)"


def _listing(specs: list[VectorSpec]) -> str:
    return ", ".join(f"{s.vector_name!r} ({_model(s)})" for s in specs) or "none"
