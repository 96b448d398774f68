"""Every server error type crosses the wire as its status code and arrives as its client error.

Arrow Flight's way (``test_flight.py``: each ``FlightError`` raised in a handler, caught as the
same type by a real client): the real ``MasterServicer`` on a real gRPC server on
127.0.0.1:0, whose ``Master`` raises the error, so it goes through the one server mapping
(``dpp_server.errors.grpc_error_of``, as every MasterService method uses it); a real stub call,
its ``grpc.RpcError`` through the one client mapping (``dpp_client.errors.error_from_rpc``).

The table below is the contract. The error types are enumerated (every subclass of
``DppError`` and of ``storage``'s ``StorageError``), so a new type fails here until it has a
row: its status code and the client exception a trainer catches.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from dpp_client.errors import (
    REASON_ERRORS,
    CorruptFileError,
    DppAccessError,
    DppClientError,
    DppUnavailableError,
    LimitExceededError,
    SessionConflictError,
    SessionNotFoundError,
    SpecRejectedError,
    TableChangedError,
    TableError,
    TableLayoutError,
    TableNotFoundError,
    error_from_rpc,
)
from dpp_proto import master_pb2, master_pb2_grpc
from dpp_proto.reasons import Reason
from dpp_server.auth import AuthInterceptor, Guard
from dpp_server.errors import (
    CapacityError,
    ConflictError,
    DppError,
    InvalidArgumentError,
    LimitError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    SpecError,
    StatsError,
    UnauthenticatedError,
    UnavailableError,
)
from dpp_server.master_service import MasterServicer
from storage import errors as storage_errors
from storage.errors import FilterError, RowGroupTooLargeError, SplitChangedError, StorageError

pytestmark = pytest.mark.integration

Code = grpc.StatusCode

# error raised on the server -> (status code on the wire, reason, client exception class)
CONTRACT: list[tuple[Exception, Code, Reason, type[DppClientError]]] = [
    (
        SpecError("features[3].ops[1].op", "unknown op 'foo'", "known ops: clamp, log1p"),
        Code.INVALID_ARGUMENT,
        Reason.SPEC_INVALID,
        SpecRejectedError,
    ),
    (
        NotFoundError("session 's-1f2e' (name 'clic_é') not found; create it again"),
        Code.NOT_FOUND,
        Reason.SESSION_NOT_FOUND,
        SessionNotFoundError,
    ),
    (
        NotFoundError("session s-1 has no split 'x'", Reason.SPLIT_NOT_FOUND),
        Code.NOT_FOUND,
        Reason.SPLIT_NOT_FOUND,
        SessionNotFoundError,
    ),
    (
        NotFoundError("session s-1 has not begun epoch 3 for rank 0", Reason.EPOCH_NOT_BEGUN),
        Code.NOT_FOUND,
        Reason.EPOCH_NOT_BEGUN,
        SessionNotFoundError,
    ),
    (
        NotFoundError("worker w-1 is not registered", Reason.WORKER_NOT_FOUND),
        Code.NOT_FOUND,
        Reason.WORKER_NOT_FOUND,
        DppClientError,
    ),
    (
        ConflictError("session name 'ctr' is in use with another spec; pick another name"),
        Code.FAILED_PRECONDITION,
        Reason.SESSION_CONFLICT,
        SessionConflictError,
    ),
    (
        OutOfRangeError("epoch 2 is past the last (epochs=2)"),
        Code.OUT_OF_RANGE,
        Reason.OUT_OF_RANGE,
        DppClientError,
    ),
    (
        LimitError("max_sessions", "64 sessions are open; close one"),
        Code.RESOURCE_EXHAUSTED,
        Reason.LIMIT_EXCEEDED,
        LimitExceededError,
    ),
    (
        InvalidArgumentError("session_name", "300 characters is over the limit of 256"),
        Code.INVALID_ARGUMENT,
        Reason.SPEC_INVALID,
        SpecRejectedError,
    ),
    (
        UnavailableError("the master cannot write its journal (disk full); retry later"),
        Code.UNAVAILABLE,
        Reason.UNAVAILABLE,
        DppUnavailableError,
    ),
    (
        storage_errors.TableNotFoundError("no Parquet files under /data/t (is the URI right?)"),
        Code.NOT_FOUND,
        Reason.TABLE_NOT_FOUND,
        TableNotFoundError,
    ),
    (
        FilterError("row_filter", "unknown column 'dense_99'; columns: dense_0, label"),
        Code.INVALID_ARGUMENT,
        Reason.SPEC_INVALID,
        SpecRejectedError,
    ),
    (
        storage_errors.TableUriError("table_uri 'iceberg://prod/events': names no namespace"),
        Code.INVALID_ARGUMENT,
        Reason.SPEC_INVALID,
        SpecRejectedError,
    ),
    (
        storage_errors.TableLayoutError("table '/t': inconsistent partition folders"),
        Code.FAILED_PRECONDITION,
        Reason.TABLE_LAYOUT,
        TableLayoutError,
    ),
    (
        storage_errors.CorruptFileError("reading the footer of '/t/a.parquet' failed"),
        Code.FAILED_PRECONDITION,
        Reason.FILE_UNREADABLE,
        CorruptFileError,
    ),
    (
        SplitChangedError("/data/t/ds=1/part-0.parquet changed since planning: replan"),
        Code.FAILED_PRECONDITION,
        Reason.TABLE_CHANGED,
        TableChangedError,
    ),
    (
        RowGroupTooLargeError("row group 0 of '/t/a.parquet' holds 900.0 MB, over the budget"),
        Code.RESOURCE_EXHAUSTED,
        Reason.LIMIT_EXCEEDED,
        LimitExceededError,
    ),
    (
        StorageError("reading /data/t failed: permission denied"),
        Code.FAILED_PRECONDITION,
        Reason.STORAGE_FAILED,
        TableError,
    ),
    (
        StatsError("no split payloads to merge; the stats session produced no splits"),
        Code.INVALID_ARGUMENT,
        Reason.SPEC_INVALID,
        SpecRejectedError,
    ),
    (
        CapacityError("table t0 needs 3.2 GB more than 8 GPUs x 1 GB hold", "t0", 3.2),
        Code.RESOURCE_EXHAUSTED,
        Reason.LIMIT_EXCEEDED,
        LimitExceededError,
    ),
    (
        UnauthenticatedError("MasterService.CreateSession needs credentials: no token was sent"),
        Code.UNAUTHENTICATED,
        Reason.UNAUTHENTICATED,
        DppAccessError,
    ),
    (
        PermissionDeniedError("table_uri: '/etc' refused by the data-access policy"),
        Code.PERMISSION_DENIED,
        Reason.PERMISSION_DENIED,
        DppAccessError,
    ),
    # Not deliberate: a bug. INTERNAL, with the type named.
    (KeyError("plan"), Code.INTERNAL, Reason.INTERNAL, DppClientError),
]


def _subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


class _RaisingMaster:
    """Stands in for ``dpp_server.master.Master``: ``create_session`` raises ``self.error``."""

    error: Exception = RuntimeError("not set")

    def create_session(self, spec: object, session_name: str, tenant: str = "") -> object:
        raise self.error

    def session_tenant(self, session_id: str) -> str:
        return ""


@pytest.fixture(scope="module")
def master() -> Iterator[tuple[_RaisingMaster, master_pb2_grpc.MasterServiceStub]]:
    fake = _RaisingMaster()
    # The servicer takes the caller from the auth interceptor, as on every master (here the
    # --insecure one: everyone may call).
    guard = Guard(None, insecure=True, session_tenant=fake.session_tenant)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[AuthInterceptor(guard)]
    )
    master_pb2_grpc.add_MasterServiceServicer_to_server(MasterServicer(fake), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield fake, master_pb2_grpc.MasterServiceStub(channel)
    finally:
        channel.close()
        server.stop(0)


def test_every_error_type_and_reason_has_a_row() -> None:
    server_types = _subclasses(DppError) | {StorageError, *_subclasses(StorageError)}
    in_contract = {type(error) for error, _, _, _ in CONTRACT}
    assert server_types - in_contract == set(), "error types with no status/client mapping"
    # A DppError subclass names its own status: inheriting one silently is how a new type
    # would end up INTERNAL (or another type's code) by accident.
    inherited = {cls.__name__ for cls in _subclasses(DppError) if "status" not in vars(cls)}
    assert inherited == set()
    assert {reason for _, _, reason, _ in CONTRACT} == set(Reason), "reasons with no row"
    assert set(REASON_ERRORS) == set(Reason), "reasons the client cannot map"


@pytest.mark.parametrize(
    ("error", "code", "reason", "client_type"),
    CONTRACT,
    ids=[f"{type(e).__name__}-{r.value}" for e, _, r, _ in CONTRACT],
)
def test_error_crosses_the_wire(
    master: tuple[_RaisingMaster, master_pb2_grpc.MasterServiceStub],
    error: Exception,
    code: grpc.StatusCode,
    reason: Reason,
    client_type: type[DppClientError],
) -> None:
    fake, stub = master
    fake.error = error
    with pytest.raises(grpc.RpcError) as raised:
        stub.CreateSession(master_pb2.CreateSessionRequest(session_name="ctr"), timeout=10)
    assert raised.value.code() == code

    mapped = error_from_rpc(raised.value, "CreateSession(name='ctr')")
    assert type(mapped) is client_type
    assert mapped.code == code
    assert mapped.reason == reason.value
    text = str(error) if code != Code.INTERNAL else f"internal error (KeyError): {error}"
    assert str(mapped).startswith(f"CreateSession(name='ctr') failed: {text}")
    if isinstance(mapped, SpecRejectedError):
        assert mapped.field == getattr(error, "field", "")
