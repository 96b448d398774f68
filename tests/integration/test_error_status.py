"""Every server error type crosses the wire as its status code and arrives as its client error.

Arrow Flight's way (``test_flight.py``: each ``FlightError`` raised in a handler, caught as the
same type by a real client): the real ``MasterServicer`` on a real gRPC server on
127.0.0.1:0, whose ``Master`` raises the error, so it goes through the one server mapping
(``dpp_server.errors.grpc_status_of``, as every MasterService method uses it); a real stub call,
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
    DppAccessError,
    DppClientError,
    SessionConflictError,
    SessionNotFoundError,
    SpecRejectedError,
    error_from_rpc,
)
from dpp_proto import master_pb2, master_pb2_grpc
from dpp_server.auth import AuthInterceptor, Guard
from dpp_server.errors import (
    ConflictError,
    DppError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    SpecError,
    UnauthenticatedError,
)
from dpp_server.master_service import MasterServicer
from storage.errors import FilterError, SplitChangedError, StorageError, TableNotFoundError

pytestmark = pytest.mark.integration

Code = grpc.StatusCode

# error raised on the server -> (status code on the wire, client exception class)
CONTRACT: list[tuple[Exception, Code, type[DppClientError]]] = [
    (
        SpecError("features[3].ops[1].op", "unknown op 'foo'", "known ops: clamp, log1p"),
        Code.INVALID_ARGUMENT,
        SpecRejectedError,
    ),
    (
        NotFoundError("session 's-1f2e' (name 'clic_é') not found; create it again"),
        Code.NOT_FOUND,
        SessionNotFoundError,
    ),
    (
        ConflictError("session name 'ctr' is in use with another spec; pick another name"),
        Code.FAILED_PRECONDITION,
        SessionConflictError,
    ),
    (OutOfRangeError("epoch 2 is past the last (epochs=2)"), Code.OUT_OF_RANGE, DppClientError),
    (
        TableNotFoundError("no Parquet files under /data/t (is the URI right?)"),
        Code.NOT_FOUND,
        SessionNotFoundError,
    ),
    (
        FilterError("row_filter", "unknown column 'dense_99'; columns: dense_0, label"),
        Code.INVALID_ARGUMENT,
        SpecRejectedError,
    ),
    (
        SplitChangedError("/data/t/ds=1/part-0.parquet changed since planning: replan"),
        Code.FAILED_PRECONDITION,
        SessionConflictError,
    ),
    (
        StorageError("reading /data/t failed: permission denied"),
        Code.FAILED_PRECONDITION,
        SessionConflictError,
    ),
    (
        UnauthenticatedError("MasterService.CreateSession needs credentials: no token was sent"),
        Code.UNAUTHENTICATED,
        DppAccessError,
    ),
    (
        PermissionDeniedError("table_uri: '/etc' refused by the data-access policy"),
        Code.PERMISSION_DENIED,
        DppAccessError,
    ),
    # Not deliberate: a bug. INTERNAL, with the type named.
    (KeyError("plan"), Code.INTERNAL, DppClientError),
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


def test_every_error_type_has_a_row() -> None:
    server_types = _subclasses(DppError) | {StorageError, *_subclasses(StorageError)}
    in_contract = {type(error) for error, _, _ in CONTRACT}
    assert server_types - in_contract == set(), "error types with no status/client mapping"
    # A DppError subclass names its own status: inheriting one silently is how a new type
    # would end up INTERNAL (or another type's code) by accident.
    inherited = {cls.__name__ for cls in _subclasses(DppError) if "status" not in vars(cls)}
    assert inherited == set()


@pytest.mark.parametrize(
    ("error", "code", "client_type"), CONTRACT, ids=[type(e).__name__ for e, _, _ in CONTRACT]
)
def test_error_crosses_the_wire(
    master: tuple[_RaisingMaster, master_pb2_grpc.MasterServiceStub],
    error: Exception,
    code: grpc.StatusCode,
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
    text = str(error) if code != Code.INTERNAL else f"internal error (KeyError): {error}"
    assert str(mapped).startswith(f"CreateSession(name='ctr') failed: {text}")
    if isinstance(mapped, SpecRejectedError):
        assert mapped.field == getattr(error, "field", None)
