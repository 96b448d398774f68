"""Reading a table on S3 through a proxy that adds 20 ms per round trip (moto's server on
loopback behind tests/helpers/delay_proxy.py): a real cluster delivers every row once with the
values of an independent read, and a split costs a bounded number of GET requests (counted by
the proxy). No timing is asserted: bench/remote_storage.py measures rows/s."""

from __future__ import annotations

import collections
import dataclasses
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from dpp_client import DppLoader, Feature, SessionSpec
from dpp_client.frames import decode_frame
from dpp_proto import spec_pb2
from dpp_server.local_cluster import LocalCluster
from dpp_server.master import Master
from dpp_server.worker import Worker, WorkerConfig
from storage import GenConfig, Table, generate_table
from storage.errors import SplitChangedError
from storage.filesystem import fsspec_filesystem_of
from storage.readahead import ReadAhead
from storage.reader import read_split
from storage.remote import ReadOptions
from tests.helpers.delay_proxy import DelayProxy, moto_server
from tests.helpers.server import InProcessLink, make_spec

pytestmark = pytest.mark.integration

KEY, SECRET = "testing", "testing"
BUCKET = "dpp-remote"
CONFIG = GenConfig(
    rows=12_000, days=2, dense=3, sparse=3, row_group_rows=1000, rows_per_file=6000,
    max_list_len=40, seed=5,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Remote:
    """The same table on disk (``local``) and on S3 (``uri``) behind ``proxy``; ``direct``:
    the S3 endpoint itself, for writing."""

    local: str
    uri: str
    proxy: DelayProxy
    direct: str

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
        yield Remote(local, f"s3://{BUCKET}/table", proxy, endpoint)


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


def _split_spec(remote: Remote, **fields: object) -> spec_pb2.SessionSpec:
    spec = make_spec(remote.uri, target_split_rows=1000, batch_size=700, **fields)
    spec.storage_options.update(remote.options)
    return spec


def test_a_worker_reads_splits_ahead_and_produces_every_row_once(remote_table: Remote) -> None:
    """Two pipeline threads, two leases ahead each: every split's footer and chunks are
    fetched before its production starts, and every row arrives once, in numbered batches."""
    master = Master()
    view, _ = master.create_session(_split_spec(remote_table))
    split_ids, _ = master.begin_epoch(view.session_id, 0, 0)
    assert len(split_ids) == 12
    config = WorkerConfig(pipeline_threads=2, remote_lookahead_splits=2)
    worker = Worker(InProcessLink(master), "inproc:0", config)
    worker.start()
    try:
        buffer = worker.buffer(view.session_id, 0)
        seqs: dict[str, list[int]] = collections.defaultdict(list)
        ended: dict[str, int] = {}
        row_ids: list[int] = []
        while len(ended) < len(split_ids):
            frame = buffer.get(30.0)
            assert frame is not None, "the worker stalled"
            header, rows = decode_frame(frame)
            assert not header.error, header.error
            if header.last_in_split:
                ended[header.split_id] = header.batch_seq
                continue
            assert rows is not None
            seqs[header.split_id].append(header.batch_seq)
            row_ids.extend(rows.column("extra.row_id").to_pylist())
    finally:
        worker.stop()
    assert sorted(row_ids) == list(range(CONFIG.rows))
    assert sorted(ended) == sorted(split_ids)
    for split_id, last in ended.items():
        assert seqs[split_id] == list(range(last))
    read_ahead = worker.read_ahead
    # Each thread's first split starts cold; the rest were opened ahead and claimed, and no
    # warm-up was left behind.
    assert read_ahead.claimed >= len(split_ids) - 2, (read_ahead.warmed, read_ahead.claimed)
    assert read_ahead.warmed == read_ahead.claimed and len(read_ahead) == 0
    # Two files: their footers were cached, and most splits found theirs there.
    assert len(read_ahead.footers) == 2 and read_ahead.footers.hits >= 6


def test_read_ahead_never_serves_a_split_twice_or_drops_one(remote_table: Remote) -> None:
    """A cluster whose workers hold two leases ahead per thread loses one worker to SIGKILL
    (its leases held ahead expire with it) and drains another (SIGTERM: it hands its leases
    held ahead back); every row arrives exactly once, with the values of an independent read."""
    spec = SessionSpec(
        table_uri=remote_table.uri,
        storage_options=remote_table.options,
        features=(Feature("d1", "dense", source="dense_1"),),
        passthrough=("row_id",),
        batch_size=250,
        target_split_rows=1000,
    )
    cluster = LocalCluster(
        workers=2,
        worker_args=["--remote-lookahead-splits", "2", "--buffer-mb", "1"],
        master_args=["--lease-timeout-s", "3"],
        allow_table=f"s3://{BUCKET}/",
        allow_endpoint=remote_table.options["endpoint_url"],
    )
    got: dict[int, float] = {}
    with cluster, DppLoader(cluster.master_address, spec) as loader:
        for i, batch in enumerate(loader):
            for row_id, value in zip(
                batch.extras["row_id"].tolist(), batch.dense[:, 0].tolist(), strict=True
            ):
                assert row_id not in got, f"row {row_id} delivered twice"
                got[row_id] = value
            if i == 4:
                cluster.kill_worker(0)
                cluster.add_worker(["--remote-lookahead-splits", "2", "--buffer-mb", "1"])
            if i == 16:
                cluster.kill_worker(1, signal.SIGTERM, wait=False)
        assert loader.plan is not None and loader.plan.num_splits == 12
    expected = pads.dataset(remote_table.local, partitioning="hive").to_table(
        columns=["row_id", "dense_1"]
    )
    want = dict(
        zip(
            expected.column("row_id").to_pylist(),
            expected.column("dense_1").fill_null(0.0).to_pylist(),
            strict=True,
        )
    )
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[r] for r in sorted(got)], [want[r] for r in sorted(got)])


def _write_numbers(remote: Remote, path: str, offset: int, rows: int = 4000) -> None:
    """A file whose size depends only on ``rows`` (plain encoding, no compression or
    statistics): rewriting it with other values keeps its size."""
    import s3fs

    fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={"endpoint_url": remote.direct})
    table = pa.table({"v": pa.array(np.arange(rows, dtype=np.int64) + offset)})
    with fs.open(path, "wb") as f:
        pq.write_table(
            table,
            f,
            row_group_size=1000,
            compression="NONE",
            use_dictionary=False,
            write_statistics=False,
        )
    fs.invalidate_cache()


def test_the_footer_cache_serves_a_files_splits_and_is_dropped_when_the_file_changes(
    remote_table: Remote,
) -> None:
    proxy = remote_table.proxy
    path = f"{BUCKET}/rewritten/part-0.parquet"
    _write_numbers(remote_table, path, 0)
    table = Table.open(f"s3://{BUCKET}/rewritten", remote_table.options)
    splits = table.plan_splits(1000).splits
    assert len(splits) == 4
    size = splits[0].file_size
    footer_range = f"bytes={max(0, size - ReadOptions.footer_bytes)}-{size - 1}"
    read_ahead = ReadAhead()
    inner = fsspec_filesystem_of(table.filesystem)
    assert inner is not None

    def read(index: int) -> list[int]:
        batches = read_split(
            splits[index],
            filesystem=table.filesystem,
            columns=["v"],
            row_filter=None,
            batch_rows=4096,
            read_ahead=read_ahead,
        )
        return [v for b in batches for v in b.column("v").to_pylist()]

    def footer_gets() -> int:
        return sum(1 for line in proxy.snapshot().log if line.endswith(footer_range))

    proxy.reset()
    assert read(0) == list(range(1000))
    assert footer_gets() == 1 and len(read_ahead.footers) == 1
    first = read_ahead.footers.get(inner, path, size)
    assert first is not None and first.identity.tag
    proxy.reset()
    assert read(1) == list(range(1000, 2000))
    assert footer_gets() == 0  # the file's other splits reuse its footer

    # Rewritten with other values and the same size: the cached footer's etag no longer
    # matches, so it is dropped and the footer fetched again; the rows are the new file's.
    _write_numbers(remote_table, path, 10_000)
    assert table.filesystem.get_file_info(path).size == size
    proxy.reset()
    assert read(2) == list(range(12_000, 13_000))
    assert footer_gets() == 1
    second = read_ahead.footers.get(inner, path, size)
    assert second is not None and second.identity.tag != first.identity.tag

    # Rewritten with another size: the split no longer matches its file and is refused; the
    # cached footer (of the old size) is not served for it.
    _write_numbers(remote_table, path, 0, rows=5000)
    with pytest.raises(SplitChangedError, match="rewritten"):
        read(3)
    assert read_ahead.footers.get(inner, path, size + 1) is None
