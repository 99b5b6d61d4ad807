"""The one table from domain errors to gRPC status codes, and the details clients get.

Every handler ends in `to_status`; nothing else picks a status code. Rich details follow
the google.rpc model (`grpc-status-details-bin`): BadRequest names the field at fault,
RetryInfo says when to retry, ErrorInfo carries a machine-readable reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from encoders.common.errors import (
    AlreadyExists,
    BatchInvalid,
    Forbidden,
    InvalidInput,
    LoupeError,
    ModelMismatch,
    ModelUnavailable,
    NotFound,
    Overloaded,
    StoreUnavailable,
    TimedOut,
    Unauthenticated,
    VectorStateConflict,
)

log = logging.getLogger(__name__)

DOMAIN = "loupe.v1"

# Most specific first: the first matching class wins.
STATUS_TABLE: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (ModelMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (VectorStateConflict, grpc.StatusCode.FAILED_PRECONDITION),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (TimedOut, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (PermissionError, grpc.StatusCode.UNAUTHENTICATED),
)


@dataclass(frozen=True)
class RpcStatus:
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()


def to_status(exc: BaseException) -> RpcStatus:
    """Map any exception to what the client sees. Unknown errors never leak a stack trace."""
    code = next((c for cls, c in STATUS_TABLE if isinstance(exc, cls)), None)
    if code is None:
        log.exception("unexpected error", exc_info=exc)
        return RpcStatus(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
    reason = exc.reason if isinstance(exc, LoupeError) else _plain_reason(exc)
    rich = status_pb2.Status(code=code.value[0], message=reason)
    rich.details.add().Pack(error_details_pb2.ErrorInfo(reason=type(exc).__name__, domain=DOMAIN))
    if isinstance(exc, InvalidInput):
        rich.details.add().Pack(_bad_request(exc))
    if isinstance(exc, Overloaded):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(exc.retry_after_s * 1000))
        rich.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return RpcStatus(code, reason, (("grpc-status-details-bin", rich.SerializeToString()),))


def _plain_reason(exc: BaseException) -> str:
    # An OSError's text names its file (a path on the server): the client gets the reason alone.
    if isinstance(exc, OSError) and exc.filename is not None:
        log.warning("file error during a call", exc_info=exc)
        return exc.strerror or type(exc).__name__
    return str(exc)


def _bad_request(exc: InvalidInput) -> error_details_pb2.BadRequest:
    problems = exc.problems if isinstance(exc, BatchInvalid) else [exc]
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=p.field or "", description=p.reason) for p in problems
        ]
    )


def _detail(error: grpc.RpcError, kind):
    """Client side: the first detail of type `kind` in a failed call's rich status, or None."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(kind.DESCRIPTOR):
                    out = kind()
                    detail.Unpack(out)
                    return out
    return None


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """Client side: (field, description) pairs from a failed call's BadRequest details."""
    bad = _detail(error, error_details_pb2.BadRequest)
    return [(v.field, v.description) for v in bad.field_violations] if bad else []


def retry_delay_s(error: grpc.RpcError) -> float | None:
    """Client side: the RetryInfo delay of a refusal (RESOURCE_EXHAUSTED), in seconds."""
    info = _detail(error, error_details_pb2.RetryInfo)
    return info.retry_delay.ToMilliseconds() / 1000 if info else None
