"""Reading a table on S3 through a proxy that adds 20 ms per round trip (moto's server on
loopback behind tests/helpers/delay_proxy.py): a real cluster delivers every row once with the
values of an independent read, and a split costs a bounded number of GET requests (counted by
the proxy). No timing is asserted: bench/remote_storage.py measures rows/s."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from dpp_client import DppLoader, Feature, SessionSpec
from dpp_server.local_cluster import LocalCluster
from storage import GenConfig, Table, generate_table
from storage.reader import read_split
from storage.remote import ReadOptions
from tests.helpers.delay_proxy import DelayProxy, moto_server

pytestmark = pytest.mark.integration

KEY, SECRET = "testing", "testing"
BUCKET = "dpp-remote"
CONFIG = GenConfig(
    rows=12_000, days=2, dense=3, sparse=3, row_group_rows=1000, rows_per_file=6000,
    max_list_len=40, seed=5,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Remote:
    """The same table on disk (``local``) and on S3 (``uri``) behind ``proxy``."""

    local: str
    uri: str
    proxy: DelayProxy

    @property
    def options(self) -> dict[str, str]:
        return {"endpoint_url": self.proxy.endpoint, "key": KEY, "secret": SECRET}


@pytest.fixture(scope="module")
def remote_table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    """The table, uploaded straight to moto (not through the 20 ms proxy)."""
    import s3fs

    local = str(tmp_path_factory.mktemp("remote") / "table")
    generate_table(local, CONFIG)
    with moto_server() as endpoint, DelayProxy(endpoint, delay_s=0.020) as proxy:
        direct = s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={"endpoint_url": endpoint})
        direct.mkdir(BUCKET)
        direct.put(local, f"{BUCKET}/table", recursive=True)
        yield Remote(local, f"s3://{BUCKET}/table", proxy)


def test_a_cluster_reads_through_the_proxy_every_row_once(remote_table: Remote) -> None:
    spec = SessionSpec(
        table_uri=remote_table.uri,
        storage_options=remote_table.options,
        features=(Feature("d1", "dense", source="dense_1"),),
        passthrough=("row_id",),
        batch_size=700,
        target_split_rows=2000,
    )
    got: dict[int, float] = {}
    # The data-access policy allows exactly this bucket and endpoint (issue 13).
    cluster = LocalCluster(
        workers=2,
        allow_table=f"s3://{BUCKET}/",
        allow_endpoint=remote_table.options["endpoint_url"],
    )
    with cluster, DppLoader(cluster.master_address, spec) as loader:
        for batch in loader:
            for row_id, value in zip(
                batch.extras["row_id"].tolist(), batch.dense[:, 0].tolist(), strict=True
            ):
                assert row_id not in got, f"row {row_id} delivered twice"
                got[row_id] = value
        assert loader.plan is not None and loader.plan.num_splits == 6
    expected = pads.dataset(remote_table.local, partitioning="hive").to_table(
        columns=["row_id", "dense_1"]
    )
    assert sorted(got) == sorted(expected.column("row_id").to_pylist())
    want = dict(
        zip(
            expected.column("row_id").to_pylist(),
            expected.column("dense_1").fill_null(0.0).to_pylist(),
            strict=True,
        )
    )
    np.testing.assert_allclose([got[r] for r in sorted(got)], [want[r] for r in sorted(got)])


@pytest.mark.parametrize("mode", ["prefetch", "pre_buffer"])
def test_get_requests_per_split_are_bounded(remote_table: Remote, mode: str) -> None:
    proxy = remote_table.proxy
    table = Table.open(remote_table.uri, remote_table.options)
    plan = table.plan_splits(2000)
    assert len(plan.splits) == 6
    everything = [f"dense_{i}" for i in range(3)] + [f"sparse_{i}" for i in range(3)]
    for split in plan.splits:
        local_file = Path(remote_table.local) / Path(split.path).relative_to(f"{BUCKET}/table")
        for columns, most_gets in (([*everything, "label", "row_id"], 2), (["sparse_2"], 2)):
            proxy.reset()
            rows = sum(
                b.num_rows
                for b in read_split(
                    split,
                    filesystem=table.filesystem,
                    columns=columns,
                    row_filter=None,
                    batch_rows=4096,
                    read_options=ReadOptions(mode=mode),
                )
            )
            stats = proxy.snapshot()
            assert rows == split.num_rows
            # The footer, then one coalesced range (the split's two row groups' chunks lie
            # together); and the size check.
            assert stats.requests["GET"] <= most_gets, (split, columns, stats.log)
            assert stats.requests["HEAD"] <= 2, stats
            assert set(stats.requests) <= {"GET", "HEAD"}
            # Never the whole file: the split's row groups (and the footer) only.
            assert stats.bytes_down < local_file.stat().st_size, (split, stats)
