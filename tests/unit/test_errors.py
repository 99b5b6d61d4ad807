import grpc
from google.rpc import error_details_pb2, status_pb2

from encoders.common.errors import (
    BatchInvalid,
    InvalidInput,
    ModelMismatch,
    ModelUnavailable,
    NotFound,
    Overloaded,
    StoreUnavailable,
)
from services.rpc.errors import to_status


def _details(status):
    ((key, raw),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(raw)


def test_each_domain_error_has_its_code():
    cases = {
        InvalidInput("x"): grpc.StatusCode.INVALID_ARGUMENT,
        NotFound("x"): grpc.StatusCode.NOT_FOUND,
        ModelMismatch("x"): grpc.StatusCode.FAILED_PRECONDITION,
        Overloaded("x"): grpc.StatusCode.RESOURCE_EXHAUSTED,
        ModelUnavailable("x"): grpc.StatusCode.UNAVAILABLE,
        StoreUnavailable("x"): grpc.StatusCode.UNAVAILABLE,
        PermissionError("x"): grpc.StatusCode.UNAUTHENTICATED,
    }
    for exc, code in cases.items():
        assert to_status(exc).code == code, exc


def test_unexpected_errors_hide_the_trace():
    status = to_status(ZeroDivisionError("secret internals"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert "secret" not in status.details and status.trailing_metadata == ()


def test_bad_request_names_every_bad_field():
    exc = BatchInvalid([InvalidInput("empty", field="items[0].data"), InvalidInput("too big", field="items[2].data")])
    rich = _details(to_status(exc))
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in rich.details if d.Is(bad.DESCRIPTOR))
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("items[0].data", "empty"),
        ("items[2].data", "too big"),
    ]


def test_overload_carries_retry_delay():
    rich = _details(to_status(Overloaded("busy", retry_after_s=2.5)))
    info = error_details_pb2.RetryInfo()
    assert any(d.Unpack(info) for d in rich.details if d.Is(info.DESCRIPTOR))
    assert info.retry_delay.ToMilliseconds() == 2500
