"""RecD deduplication through a live cluster: a deduplicated session's batches, expanded,
equal a plain session's rows (matched by row id), and cost fewer bytes on the wire."""

from __future__ import annotations

import pytest
import torch

from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_server.local_cluster import LocalCluster

pytestmark = pytest.mark.integration


def spec_of(table: str, group: str, **fields: object) -> SessionSpec:
    hashed = (Op("sigrid_hash", {"max_value": 1000}),)
    return SessionSpec(
        table_uri=table,
        features=(
            Feature("d0", "dense", source="dense_0", ops=(Op("fill_null"),)),
            Feature("u0", "sparse", source="sparse_0", ops=hashed, dedup_group=group),
            Feature("u1", "sparse", source="sparse_1", dedup_group=group),
            Feature("s3", "sparse", source="sparse_3", ops=hashed),
        ),
        label="label",
        passthrough=("row_id",),
        batch_size=1000,
        target_split_rows=4000,
        **fields,  # type: ignore[arg-type]
    )


def rows_of(cluster: LocalCluster, spec: SessionSpec) -> tuple[dict[int, tuple], int, int]:
    out: dict[int, tuple] = {}
    deduplicated = 0
    with DppLoader(cluster.master_address, spec) as loader:
        for batch in loader:
            deduplicated += bool(batch.dedup)
            plain = batch.expand()
            assert list(plain.sparse) == ["u0", "u1", "s3"]
            for i, row_id in enumerate(plain.extras["row_id"].tolist()):
                assert row_id not in out, f"row {row_id} delivered twice"
                lists = [
                    tuple(jt.values[jt.offsets[i] : jt.offsets[i + 1]].tolist())
                    for jt in plain.sparse.values()
                ]
                out[row_id] = (*lists, float(plain.dense[i, 0]), float(batch.labels[i]))  # type: ignore[index]
        bytes_received = loader.stats.bytes_received
    return out, bytes_received, deduplicated


@pytest.mark.parametrize("shuffle", [False, True])
def test_deduplicated_session_equals_plain_session(
    cluster: LocalCluster, small_table: str, shuffle: bool
) -> None:
    plain, plain_bytes, _ = rows_of(cluster, spec_of(small_table, "", shuffle=shuffle, seed=4))
    dedup, dedup_bytes, batches = rows_of(
        cluster, spec_of(small_table, "user", shuffle=shuffle, seed=4)
    )
    assert len(plain) == 24_000 and batches > 0
    assert dedup == plain
    assert dedup_bytes < plain_bytes


def test_model_side_torch_tensors_are_views(cluster: LocalCluster, small_table: str) -> None:
    with DppLoader(cluster.master_address, spec_of(small_table, "user")) as loader:
        batch = next(iter(loader))
    ikjt = batch.dedup["user"]
    assert ikjt.inverse_indices.dtype == torch.int32
    assert 0 < ikjt.num_unique < batch.num_rows
    assert int(ikjt.inverse_indices.max()) == ikjt.num_unique - 1
