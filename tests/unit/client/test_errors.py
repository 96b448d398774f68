"""The one mapping of gRPC status codes to client exceptions."""

from __future__ import annotations

import grpc
import pytest

from dpp_client.errors import (
    CorruptFileError,
    DppClientError,
    DppUnavailableError,
    LimitExceededError,
    SessionConflictError,
    SessionNotFoundError,
    SpecRejectedError,
    TableError,
    TableLayoutError,
    TableNotFoundError,
    error_from_rpc,
    rpc_code,
)
from dpp_proto.reasons import REASON_KEY, Reason
from tests.helpers.rpc import FakeRpcError


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, SpecRejectedError),
        (grpc.StatusCode.NOT_FOUND, SessionNotFoundError),
        # Without the master's reason FAILED_PRECONDITION is ambiguous (a name conflict, a
        # table problem): no guess, no hint.
        (grpc.StatusCode.FAILED_PRECONDITION, DppClientError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, LimitExceededError),
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
    if cls is not SpecRejectedError and cls is not DppUnavailableError:
        assert str(err) == "CreateSession(name='x') failed: boom"  # no hint that may not apply


def test_grpc_message_size_errors_name_the_limit() -> None:
    exc = FakeRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than max (20000000 vs. 16777216)"
    )
    err = error_from_rpc(exc, "CreateSession")
    assert isinstance(err, LimitExceededError)
    assert err.limit == "grpc.max_send_message_length"
    assert "20000000 bytes, above this client's limit of 16777216 bytes" in str(err)


@pytest.mark.parametrize(
    ("reason", "cls"),
    [
        (Reason.SESSION_CONFLICT, SessionConflictError),
        (Reason.TABLE_LAYOUT, TableLayoutError),
        (Reason.FILE_UNREADABLE, CorruptFileError),
        (Reason.TABLE_NOT_FOUND, TableNotFoundError),
        (Reason.STORAGE_FAILED, TableError),
    ],
)
def test_the_reason_picks_the_class(reason: Reason, cls: type[DppClientError]) -> None:
    exc = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "why", {REASON_KEY: reason.value})
    err = error_from_rpc(exc, "CreateSession")
    assert type(err) is cls and err.reason == reason.value
    assert str(err) == "CreateSession failed: why"


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
