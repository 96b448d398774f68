"""The one mapping of gRPC status codes to client exceptions."""

from __future__ import annotations

import grpc
import pytest

from dpp_client.errors import (
    DppClientError,
    DppUnavailableError,
    SessionConflictError,
    SessionNotFoundError,
    SpecRejectedError,
    error_from_rpc,
    rpc_code,
)
from tests.helpers.rpc import FakeRpcError


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, SpecRejectedError),
        (grpc.StatusCode.NOT_FOUND, SessionNotFoundError),
        (grpc.StatusCode.FAILED_PRECONDITION, SessionConflictError),
        (grpc.StatusCode.UNAVAILABLE, DppUnavailableError),
        (grpc.StatusCode.ABORTED, DppUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DppUnavailableError),
        (grpc.StatusCode.INTERNAL, DppClientError),
        (grpc.StatusCode.UNIMPLEMENTED, DppClientError),
    ],
)
def test_codes_map_to_exception_types(code: grpc.StatusCode, cls: type[DppClientError]) -> None:
    err = error_from_rpc(FakeRpcError(code, "boom"), "CreateSession(name='x')")
    assert type(err) is cls
    assert err.code == code
    assert str(err).startswith("CreateSession(name='x') failed: boom")


def test_spec_rejection_names_the_field() -> None:
    exc = FakeRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "features[3].ops[1].max_value: must be > 0; pass a positive integer",
    )
    err = error_from_rpc(exc, "CreateSession")
    assert isinstance(err, SpecRejectedError)
    assert isinstance(err, ValueError)
    assert err.field == "features[3].ops[1].max_value"
    assert "features[3].ops[1].max_value: must be > 0" in str(err)


def test_plain_rpc_error_without_code() -> None:
    err = error_from_rpc(grpc.RpcError("odd"), "ListWorkers")
    assert type(err) is DppClientError
    assert err.code is None
    assert rpc_code(ValueError("x")) is None
