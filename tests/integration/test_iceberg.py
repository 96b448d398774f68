"""Iceberg tables through real processes: a master (with a journal) and two workers on
127.0.0.1, a real DppLoader in this process, a real sqlite catalog and Parquet files that
pyiceberg wrote, configured through pyiceberg's own environment variables (the cluster's
processes inherit them).

A session is pinned to the snapshot it planned: a commit landing mid-session changes none of
its epochs, nor a resume from a checkpoint across a master restart, while a new session
sees the new rows. Values are compared with pyiceberg's own read of the snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyiceberg.table import Table

from dpp_client import Batch, DppLoader, Feature, SessionSpec
from dpp_client.errors import SpecRejectedError, TableNotFoundError
from dpp_proto import master_pb2, master_pb2_grpc
from dpp_proto.auth import load_connection, open_channel
from dpp_server.local_cluster import LocalCluster
from dpp_server.policy import local_prefixes
from tests.helpers.iceberg import CATALOG, append, configure_catalog, create_events, renamed, rows

pytestmark = pytest.mark.integration

URI = f"iceberg://{CATALOG}/db.events"
Row = tuple[float, str]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    """Two commits, with ``price`` renamed to ``unit_price`` between them: the first
    commit's files still call it ``price``. One per module: the cluster is started once."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        catalog = configure_catalog(tmp_path_factory.mktemp("iceberg"), monkeypatch)
        table = create_events(catalog)
        append(table, rows(0, 2400))
        with table.update_schema() as update:
            update.rename_column("price", "unit_price")
        append(table, renamed(rows(2400, 1200), {"price": "unit_price"}))
        yield table


@pytest.fixture(scope="module")
def cluster(events: Table) -> Iterator[LocalCluster]:
    """Started after the catalog's environment is set, with a journal (the master restarts)
    and the catalog allowed by the data-access policy."""
    with LocalCluster(
        workers=2,
        pipeline_threads=2,
        journal=True,
        master_args=["--lease-timeout-s", "2", "--heartbeat-interval-s", "0.25"],
        worker_args=["--buffer-mb", "16"],
        allow_table=f"{local_prefixes()},iceberg://{CATALOG}/,iceberg://nosuch/",
    ) as c:
        yield c


def spec(table_uri: str = URI) -> SessionSpec:
    return SessionSpec(
        table_uri=table_uri,
        features=(Feature(name="price", kind="dense", source="unit_price"),),
        passthrough=("row_id", "tag"),
        batch_size=250,
        target_split_rows=500,
        epochs=3,
        deterministic=True,
        shuffle=True,
        seed=7,
    )


def batch_rows(batch: Batch) -> dict[int, Row]:
    row_ids = batch.extras["row_id"].tolist()
    tags = batch.extras_arrow["tag"].to_pylist()
    return {int(r): (float(batch.dense[i, 0].item()), str(tags[i])) for i, r in enumerate(row_ids)}


def collect(batches: Iterator[Batch] | list[Batch]) -> dict[int, Row]:
    """Rows by id, failing on any row delivered twice."""
    got: dict[int, Row] = {}
    for batch in batches:
        for row_id, row in batch_rows(batch).items():
            assert row_id not in got, f"row {row_id} delivered twice"
            got[row_id] = row
    return got


def independent(table: Table, snapshot_id: int) -> dict[int, Row]:
    """pyiceberg's own read of a snapshot, under the current names."""
    read = table.scan(snapshot_id=snapshot_id).to_arrow()
    if "unit_price" not in read.column_names:
        read = read.rename_columns(["unit_price" if n == "price" else n for n in read.column_names])
    return {
        int(r): (float(p), str(t))
        for r, p, t in zip(
            read.column("row_id").to_pylist(),
            read.column("unit_price").to_pylist(),
            read.column("tag").to_pylist(),
            strict=True,
        )
    }


def session_snapshot(cluster: LocalCluster, session_id: str) -> int:
    stub = master_pb2_grpc.MasterServiceStub(
        open_channel(cluster.master_address, load_connection())
    )
    response = stub.GetSession(master_pb2.GetSessionRequest(session_id=session_id), timeout=30)
    return int(response.plan.snapshot_id)


def test_a_session_reads_its_snapshot_across_commits_epochs_resume_and_restart(
    cluster: LocalCluster, events: Table
) -> None:
    planned = events.current_snapshot()
    assert planned is not None
    want = independent(events, planned.snapshot_id)
    assert len(want) >= 3600
    with DppLoader(cluster.master_address, spec()) as first:
        epoch0 = collect(iter(first))
        assert epoch0 == want  # every row once, the renamed column found by field id
        session_id = first.session_id
        assert first.plan is not None and first.plan.snapshot_id == planned.snapshot_id
        assert session_snapshot(cluster, session_id) == planned.snapshot_id

        # A commit lands mid-session.
        newer = append(events, renamed(rows(max(want) + 1, 900), {"price": "unit_price"}))
        it = iter(first)
        kept = [next(it) for _ in range(5)]
        state = first.state_dict()

    # The trainer is lost after its checkpoint, and the master restarts from its journal.
    cluster.restart_master()
    assert session_snapshot(cluster, session_id) == planned.snapshot_id
    with DppLoader(cluster.master_address, spec()) as resumed:
        resumed.load_state_dict(state)
        assert collect(kept + list(iter(resumed))) == want  # the rest of epoch 1
        assert collect(iter(resumed)) == want  # epoch 2
        assert resumed.session_id == session_id

    # A new session plans the new snapshot and sees the new rows.
    with DppLoader(cluster.master_address, spec()) as fresh:
        got = collect(iter(fresh))
        assert fresh.plan is not None and fresh.plan.snapshot_id == newer
        assert session_snapshot(cluster, fresh.session_id) == newer
    assert got == independent(events, newer)
    assert len(got) == len(want) + 900


def test_refusals_name_what_was_wrong(cluster: LocalCluster, events: Table) -> None:
    cases: list[tuple[str, type[Exception], str]] = [
        ("iceberg://nosuch/db.events", TableNotFoundError, "catalog 'nosuch' is not configured"),
        (f"iceberg://{CATALOG}/db.nope", TableNotFoundError, "has no table 'db.nope'"),
        (f"{URI}@123", TableNotFoundError, "has no snapshot 123"),
        (f"iceberg://{CATALOG}/events", SpecRejectedError, "names no namespace"),
    ]
    for uri, error, text in cases:
        with pytest.raises(error) as info, DppLoader(cluster.master_address, spec(uri)) as loader:
            next(iter(loader))
        assert text in str(info.value), uri
    # And the cluster still serves.
    current = events.current_snapshot()
    assert current is not None
    with DppLoader(cluster.master_address, spec()) as loader:
        assert collect(iter(loader)) == independent(events, current.snapshot_id)
