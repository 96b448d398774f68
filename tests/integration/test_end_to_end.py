"""End to end through real processes: a master and two workers on 127.0.0.1, a real client.

Every row id must arrive exactly once per epoch, with values equal to an independent
computation from the Parquet files (numpy for dense ops, pure-Python fmix64 for hashes).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_client.errors import SpecRejectedError
from dpp_proto import master_pb2, master_pb2_grpc
from dpp_server.local_cluster import LocalCluster
from tests.helpers import secure
from tests.helpers.oracle import sigrid_hash

pytestmark = pytest.mark.integration


def demo_spec(table: str, **overrides: object) -> SessionSpec:
    fields: dict[str, object] = {
        "table_uri": table,
        "features": (
            Feature(
                name="d0",
                kind="dense",
                source="dense_0",
                ops=(
                    Op("fill_null", {"value": 1.5}),
                    Op("clamp", {"min": 0.0, "max": 50.0}),
                    Op("log1p"),
                ),
            ),
            Feature(
                name="d1",
                kind="dense",
                source="dense_1",
                ops=(Op("fill_null", {"value": 0.0}), Op("clamp", {"min": 0.0}), Op("log1p")),
            ),
            Feature(
                name="s0",
                kind="sparse",
                source="sparse_0",
                ops=(Op("first_x", {"x": 5}), Op("sigrid_hash", {"salt": 3, "max_value": 1000})),
            ),
            Feature(
                name="s1",
                kind="sparse",
                source="sparse_1",
                ops=(Op("sigrid_hash", {"salt": 0, "max_value": 97}),),
            ),
        ),
        "label": "label",
        "passthrough": ("row_id",),
        "batch_size": 1000,
        "target_split_rows": 4000,
        "epochs": 1,
        "seed": 5,
    }
    fields.update(overrides)
    return SessionSpec(**fields)  # type: ignore[arg-type]


def read_reference(table: str, row_filter: object = None) -> dict[str, list[object]]:
    dataset = ds.dataset(table, format="parquet", partitioning="hive")
    columns = ["row_id", "dense_0", "dense_1", "sparse_0", "sparse_1", "label"]
    return dataset.to_table(columns=columns, filter=row_filter).to_pydict()


def expected_rows(ref: dict[str, list[object]]) -> dict[int, tuple[object, ...]]:
    """row_id -> (d0, d1, s0, s1, label), computed independently of dpp's transforms."""
    d0 = np.array([1.5 if v is None else v for v in ref["dense_0"]], dtype=np.float64)
    d0 = np.log1p(np.clip(d0, 0.0, 50.0)).astype(np.float32)
    d1 = np.array([0.0 if v is None else v for v in ref["dense_1"]], dtype=np.float64)
    d1 = np.log1p(np.maximum(d1, 0.0)).astype(np.float32)
    out = {}
    for i, row_id in enumerate(ref["row_id"]):
        s0 = [sigrid_hash(v, 3, 1000) for v in (ref["sparse_0"][i] or [])[:5]]
        s1 = [sigrid_hash(v, 0, 97) for v in (ref["sparse_1"][i] or [])]
        out[int(row_id)] = (float(d0[i]), float(d1[i]), s0, s1, float(ref["label"][i]))  # type: ignore[arg-type]
    return out


def list_workers(address: str) -> list[master_pb2.WorkerInfo]:
    with secure.channel(address) as channel:
        stub = master_pb2_grpc.MasterServiceStub(channel)
        return list(stub.ListWorkers(master_pb2.ListWorkersRequest()).workers)


def collect(loader: DppLoader) -> dict[int, tuple[object, ...]]:
    """Reads one epoch; fails on any duplicated row id."""
    got: dict[int, tuple[object, ...]] = {}
    for batch in loader:
        row_ids = batch.extras["row_id"].tolist()
        dense = batch.dense.numpy()
        s0, s1 = batch.sparse["s0"], batch.sparse["s1"]
        s0_off, s1_off = s0.offsets.tolist(), s1.offsets.tolist()
        s0_val, s1_val = s0.values.tolist(), s1.values.tolist()
        labels = batch.labels.tolist() if batch.labels is not None else []
        for i, row_id in enumerate(row_ids):
            assert row_id not in got, f"row {row_id} delivered twice"
            got[row_id] = (
                float(dense[i, 0]),
                float(dense[i, 1]),
                s0_val[s0_off[i] : s0_off[i + 1]],
                s1_val[s1_off[i] : s1_off[i + 1]],
                labels[i],
            )
    return got


def assert_rows_equal(
    got: dict[int, tuple[object, ...]], want: dict[int, tuple[object, ...]]
) -> None:
    assert got.keys() == want.keys(), (
        f"missing {len(want.keys() - got.keys())} rows, unexpected {len(got.keys() - want.keys())}"
    )
    for row_id, (d0, d1, s0, s1, label) in want.items():
        g = got[row_id]
        assert math.isclose(g[0], d0, rel_tol=1e-6, abs_tol=1e-6), (row_id, g[0], d0)  # type: ignore[arg-type]
        assert math.isclose(g[1], d1, rel_tol=1e-6, abs_tol=1e-6), (row_id, g[1], d1)  # type: ignore[arg-type]
        assert g[2] == s0, (row_id, g[2], s0)
        assert g[3] == s1, (row_id, g[3], s1)
        assert g[4] == label, (row_id, g[4], label)


def test_one_epoch_exactly_once_with_two_workers(cluster: LocalCluster, small_table: str) -> None:
    want = expected_rows(read_reference(small_table))
    with DppLoader(cluster.master_address, demo_spec(small_table)) as loader:
        got = collect(loader)
        stats = loader.stats
    assert_rows_equal(got, want)
    assert stats.rows == len(want)
    assert stats.batches == math.ceil(len(want) / 1000)
    # The workers' counters (reported with heartbeats, every 0.25 s here) add up to the rows.
    deadline = time.monotonic() + 10
    while True:
        workers = list_workers(cluster.master_address)
        rows_out = sum(w.counters.rows_out for w in workers)
        if rows_out == len(want) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(workers) == 2
    assert rows_out == len(want)


def test_filters_and_several_epochs(cluster: LocalCluster, small_table: str) -> None:
    spec = demo_spec(
        small_table,
        partition_filter="ds = '2026-01-02'",
        row_filter="dense_2 > 1.0 AND label = 0",
        epochs=2,
        shuffle=True,
    )
    expr = (pc.field("ds") == "2026-01-02") & (pc.field("dense_2") > 1.0) & (pc.field("label") == 0)
    want = expected_rows(read_reference(small_table, expr))
    assert 0 < len(want) < 12_000
    with DppLoader(cluster.master_address, spec) as loader:
        first = collect(loader)
        second = collect(loader)
        assert list(loader) == []  # past the last epoch
    assert_rows_equal(first, want)
    assert_rows_equal(second, want)


def test_bad_spec_is_rejected_with_the_field_named(cluster: LocalCluster, small_table: str) -> None:
    spec = demo_spec(
        small_table,
        features=(
            Feature(name="d0", kind="dense", source="dense_0"),
            Feature(name="oops", kind="dense", source="no_such_column"),
        ),
    )
    with (
        pytest.raises(SpecRejectedError) as info,
        DppLoader(cluster.master_address, spec) as loader,
    ):
        next(iter(loader))
    assert "features[1].source" in str(info.value)
    assert "no_such_column" in str(info.value)

    bad_op = demo_spec(
        small_table,
        features=(Feature(name="d0", kind="dense", source="dense_0", ops=(Op("nope"),)),),
    )
    with (
        pytest.raises(SpecRejectedError) as info,
        DppLoader(cluster.master_address, bad_op) as loader,
    ):
        next(iter(loader))
    assert "features[0].ops[0].op" in str(info.value)

    # The cluster keeps serving everyone else.
    with DppLoader(cluster.master_address, demo_spec(small_table)) as loader:
        assert sum(b.num_rows for b in loader) == 24_000


def test_two_ranks_get_disjoint_halves(cluster: LocalCluster, small_table: str) -> None:
    spec = demo_spec(small_table, world_size=2)
    results: dict[int, dict[int, tuple[object, ...]]] = {}

    def run(rank: int) -> None:
        with DppLoader(cluster.master_address, spec, rank=rank, session_name="job-1") as loader:
            results[rank] = collect(loader)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(results) == {0, 1}
    assert not results[0].keys() & results[1].keys()
    assert len(results[0]) + len(results[1]) == 24_000
    assert results[0] and results[1]
