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

from dpp_client import DppLoader
from dpp_client.errors import (
    REASON_ERRORS,
    CorruptFileError,
    DppClientError,
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
from dpp_server.errors import (
    ConflictError,
    DppError,
    LimitError,
    NotFoundError,
    OutOfRangeError,
    SpecError,
)
from dpp_server.local_cluster import LocalCluster
from dpp_server.master_service import MasterServicer
from storage import errors as storage_errors
from storage.errors import FilterError, SplitChangedError, StorageError

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
        StorageError("reading /data/t failed: permission denied"),
        Code.FAILED_PRECONDITION,
        Reason.STORAGE_FAILED,
        TableError,
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

    def create_session(self, spec: object, session_name: str) -> object:
        raise self.error


@pytest.fixture(scope="module")
def master() -> Iterator[tuple[_RaisingMaster, master_pb2_grpc.MasterServiceStub]]:
    fake = _RaisingMaster()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
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
        assert mapped.field == getattr(error, "field", None)
    if isinstance(mapped, LimitExceededError):
        assert mapped.limit == "max_sessions"
    # A hint only where it applies: never the session-name advice on a table problem.
    if client_type is not SessionConflictError:
        assert "session_name" not in str(mapped)


# --------------------------------------------------------------------------------------------
# The user's path: every validation path, from a bad spec or table to the exception a trainer
# catches, through a live cluster (a real master and workers as processes) and DppLoader.


def _base(table: str, **fields: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "table_uri": table,
        "features": [
            {"name": "d0", "kind": "dense", "source": "dense_0", "ops": [{"op": "log1p"}]},
            {
                "name": "s0",
                "kind": "sparse",
                "source": "sparse_0",
                "ops": [{"op": "sigrid_hash", "max_value": 1000}],
            },
        ],
        "label": "label",
        "batch_size": 512,
    }
    spec.update(fields)
    return spec


def _feature(**fields: object) -> list[dict[str, object]]:
    return [{"name": "d0", "kind": "dense", "source": "dense_0", **fields}]


@pytest.fixture(scope="module")
def live() -> Iterator[LocalCluster]:
    """One cluster for every row (each row's error must leave it serving the next)."""
    with LocalCluster(workers=1, pipeline_threads=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def bad_tables(tmp_path_factory: pytest.TempPathFactory, small_table: str) -> dict[str, str]:
    """A missing table, one whose partition folders disagree, one with a corrupt footer."""
    import shutil
    from pathlib import Path

    root = tmp_path_factory.mktemp("bad-tables")
    files = sorted(Path(small_table).rglob("*.parquet"))
    layout = root / "layout"
    (layout / "ds=2026-01-01").mkdir(parents=True)
    (layout / "day=2026-01-02").mkdir(parents=True)
    shutil.copy(files[0], layout / "ds=2026-01-01" / "part-0.parquet")
    shutil.copy(files[-1], layout / "day=2026-01-02" / "part-0.parquet")
    corrupt = root / "corrupt" / "ds=2026-01-01"
    corrupt.mkdir(parents=True)
    (corrupt / "part-0.parquet").write_bytes(b"PAR1" + b"\0" * 64)  # no valid footer
    shutil.copy(files[0], corrupt / "part-1.parquet")
    return {
        "missing": str(root / "no-such-table"),
        "layout": str(layout),
        "corrupt": str(root / "corrupt"),
    }


# name -> (spec fields (TABLE: the small table, or a bad_tables key), client exception,
#          status code (None: refused locally, before any RPC), field, message fragment)
USER_PATH: dict[str, tuple[dict[str, object], type[DppClientError], Code | None, str, str]] = {
    "batch_size negative": (
        {"batch_size": -5},
        SpecRejectedError,
        None,
        "batch_size",
        "must be between 1 and 1048576, got -5",
    ),
    "batch_size zero": (
        {"batch_size": 0},
        SpecRejectedError,
        None,
        "batch_size",
        "must be between 1 and 1048576, got 0",
    ),
    "epochs negative": (
        {"epochs": -1},
        SpecRejectedError,
        None,
        "epochs",
        "must be between 0 and 4294967295 (0 means 1), got -1",
    ),
    "unknown spec field": (
        {"batchsize": 3},
        SpecRejectedError,
        None,
        "batchsize",
        "unknown spec field",
    ),
    "no features": (
        {"features": []},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "features",
        "at least one feature is required",
    ),
    "unknown source column": (
        {"features": [{"name": "d0", "kind": "dense", "source": "no_such_column"}]},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "features[0].source",
        "'no_such_column'",
    ),
    "unknown op": (
        {"features": _feature(ops=[{"op": "log2p"}])},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "features[0].ops[0].op",
        "unknown op 'log2p'",
    ),
    "bad op param": (
        {"features": _feature(ops=[{"op": "clamp", "min": "zero"}])},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "features[0].ops[0].min",
        "",
    ),
    "duplicate feature": (
        {"features": _feature() + _feature()},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "features[1].name",
        "duplicate feature name 'd0'",
    ),
    "dedup_group on dense": (
        {"features": _feature(dedup_group="user")},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "features[0].dedup_group",
        "only sparse features are deduplicated",
    ),
    "label of a list column": (
        {"label": "sparse_0"},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "label",
        "",
    ),
    "passthrough repeated": (
        {"passthrough": ["row_id", "row_id"]},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "passthrough[1]",
        "duplicate column 'row_id'",
    ),
    "rate out of range": (
        {"negative_downsample_rate": 1.5},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "negative_downsample_rate",
        "must be in (0, 1], got 1.5",
    ),
    "sampling without a key": (
        {"sample_rate": 0.5},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "sample_key",
        "is required when",
    ),
    "dedup_min_share out of range": (
        {"dedup_min_share": 1.0},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "dedup_min_share",
        "must be in [0, 1)",
    ),
    "partition filter on a stored column": (
        {"partition_filter": "label = 1"},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "partition_filter",
        "'label', a column stored in the files, not a partition folder key",
    ),
    "partition filter on an unknown column": (
        {"partition_filter": "region = 'eu'"},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "partition_filter",
        "unknown column 'region'; available columns: ds",
    ),
    "partition filter of the wrong type": (
        {"partition_filter": "ds > 3"},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "partition_filter",
        "partition columns are strings",
    ),
    "row filter on an unknown column": (
        {"row_filter": "dense_99 > 0"},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "row_filter",
        "unknown column 'dense_99'",
    ),
    "row filter that does not parse": (
        {"row_filter": "dense_0 >"},
        SpecRejectedError,
        Code.INVALID_ARGUMENT,
        "row_filter",
        "",
    ),
    "missing table": (
        {"table_uri": "missing"},
        TableNotFoundError,
        Code.NOT_FOUND,
        "",
        "nothing exists there; check the URI and storage options",
    ),
    "inconsistent partition folders": (
        {"table_uri": "layout"},
        TableLayoutError,
        Code.FAILED_PRECONDITION,
        "",
        "inconsistent partition folders",
    ),
    "corrupt footer": (
        {"table_uri": "corrupt"},
        CorruptFileError,
        Code.FAILED_PRECONDITION,
        "",
        "footer",
    ),
    "request above the message size limit": (
        {"passthrough": [f"column_{i:07d}_{'x' * 40}" for i in range(400_000)]},
        LimitExceededError,
        Code.RESOURCE_EXHAUSTED,
        "grpc.max_send_message_length",
        "above this client's limit of",
    ),
}


@pytest.mark.parametrize("case", list(USER_PATH))
def test_a_bad_spec_or_table_fails_in_the_loader_constructor(
    live: LocalCluster, small_table: str, bad_tables: dict[str, str], case: str
) -> None:
    fields, client_type, code, field, fragment = USER_PATH[case]
    table = bad_tables.get(str(fields.get("table_uri", "")), small_table)
    spec = _base(table, **{k: v for k, v in fields.items() if k != "table_uri"})
    with pytest.raises(DppClientError) as raised:
        DppLoader(live.master_address, spec)
    error = raised.value
    assert type(error) is client_type, str(error)
    assert error.code == code, str(error)
    assert getattr(error, "field", getattr(error, "limit", "")) == field, str(error)
    assert fragment in str(error)
    if code is not None:  # the master still serves everyone else
        with DppLoader(live.master_address, _base(small_table)) as loader:
            assert len(loader) == 24_000 // 512 + 1


def test_a_session_name_taken_by_another_spec_fails_in_the_constructor(
    live: LocalCluster, small_table: str
) -> None:
    with DppLoader(live.master_address, _base(small_table), session_name="ctr") as first:
        next(iter(first))
        with pytest.raises(SessionConflictError) as raised:
            DppLoader(live.master_address, _base(small_table, batch_size=256), session_name="ctr")
        assert raised.value.code == Code.FAILED_PRECONDITION
        assert "session name 'ctr' is already used by session" in str(raised.value)
        # The same spec joins: validation passes for a rank that joins.
        DppLoader(live.master_address, _base(small_table), session_name="ctr").close()
