"""The OpenAPI 3.1 schema of the HTTP/JSON API, made from the .proto descriptors (so it cannot
drift from the contract): one POST path per unary RPC, every message as a component schema
in proto3 JSON form (snake_case names are accepted, and are what responses use)."""

from __future__ import annotations

from functools import lru_cache

from google.protobuf.descriptor import FieldDescriptor as F

_SCALARS = {
    F.TYPE_DOUBLE: {"type": "number"},
    F.TYPE_FLOAT: {"type": "number"},
    F.TYPE_INT64: {"type": "string", "format": "int64"},
    F.TYPE_UINT64: {"type": "string", "format": "uint64"},
    F.TYPE_INT32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "uint32"},
    F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_SINT64: {"type": "string", "format": "int64"},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_WELL_KNOWN = {
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Duration": {"type": "string"},
}
ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "the gRPC status code name, e.g. INVALID_ARGUMENT"},
                "message": {"type": "string", "description": "what went wrong, and what to do"},
                "field_violations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
                    },
                },
                "retry_after_s": {"type": "number"},
            },
            "required": ["code", "message"],
        },
        "request_id": {"type": "string"},
    },
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _field(field, schemas: dict) -> dict:
    if field.type == F.TYPE_MESSAGE:
        msg = field.message_type
        if msg.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": _field(msg.fields_by_name["value"], schemas)}
        one = _message(msg, schemas)
    elif field.type == F.TYPE_ENUM:
        one = {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    else:
        one = dict(_SCALARS[field.type])
    is_repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == F.LABEL_REPEATED
    return {"type": "array", "items": one} if is_repeated else one


def _message(descriptor, schemas: dict) -> dict:
    name = descriptor.full_name
    if name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[name])
    key = name.removeprefix("loupe.v1.").replace(".", "_")
    if key not in schemas:
        schemas[key] = {}  # a placeholder breaks cycles
        schemas[key] = {
            "type": "object",
            "properties": {f.name: _field(f, schemas) for f in descriptor.fields},
            "additionalProperties": False,
        }
    return _ref(key)


@lru_cache(maxsize=1)
def schema() -> dict:
    from services.web.http import unary_rpcs

    schemas: dict = {"Error": ERROR}
    paths = {
        "/api/v1/health": {
            "get": {
                "summary": "SERVING once the model and the store answer",
                "responses": {"200": {"description": "serving"}, "503": {"description": "not serving yet"}},
            }
        }
    }
    for rpc, (request_cls, response_cls, service) in sorted(unary_rpcs().items()):
        error = {"content": {"application/json": {"schema": _ref("Error")}}}
        paths[f"/api/v1/{rpc}"] = {
            "post": {
                "operationId": rpc,
                "tags": [service.removeprefix("loupe.v1.")],
                "summary": f"{service}/{rpc} over HTTP/JSON",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _message(request_cls.DESCRIPTOR, schemas)}},
                },
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": _message(response_cls.DESCRIPTOR, schemas)}},
                    },
                    **{str(s): {"description": d, **error} for s, d in _ERRORS},
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Loupe",
            "version": "v1",
            "description": "The gRPC API (protos/loupe/v1) as JSON: POST the request message, get the "
            "response message. Send `authorization: Bearer KEY` when the service has keys.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


_ERRORS = (
    (400, "bad input (INVALID_ARGUMENT, FAILED_PRECONDITION)"),
    (401, "no key, or an unknown one (UNAUTHENTICATED)"),
    (403, "outside the client's rights or collections (PERMISSION_DENIED)"),
    (404, "a missing id or collection (NOT_FOUND)"),
    (409, "given once already (ALREADY_EXISTS)"),
    (413, "the request is over limits.max_request_bytes"),
    (429, "overloaded, or over a rate limit or quota (RESOURCE_EXHAUSTED; Retry-After)"),
    (503, "a model or the store is not available (UNAVAILABLE)"),
)
