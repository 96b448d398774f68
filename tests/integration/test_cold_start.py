"""Cold start on many files, small enough for CI: 500 Parquet files on S3 (moto) behind the
20 ms proxy. Planning lists the table by prefix (one page of keys), reads each footer once and
nothing else; a real cluster then delivers every file's rows once. bench/cold_start.py times
the 10,000-file case; no timing is asserted here."""

from __future__ import annotations

import collections
import io
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.cold_start import BUCKET, ROWS_PER_FILE, upload
from dpp_client import DppLoader, Feature, SessionSpec
from dpp_server.local_cluster import LocalCluster
from storage import Plan, StorageError, Table, parse_filter, read_split
from tests.helpers.delay_proxy import MOTO_KEY, MOTO_SECRET, DelayProxy, moto_server

pytestmark = pytest.mark.integration

FILES = 500


@pytest.fixture(scope="module")
def many_files() -> Iterator[tuple[DelayProxy, dict[str, str]]]:
    import s3fs

    with moto_server() as endpoint, DelayProxy(endpoint, delay_s=0.020) as proxy:
        direct = s3fs.S3FileSystem(
            key=MOTO_KEY, secret=MOTO_SECRET, client_kwargs={"endpoint_url": endpoint}
        )
        direct.mkdir(BUCKET)
        upload(direct, FILES)
        yield proxy, {"endpoint_url": proxy.endpoint, "key": MOTO_KEY, "secret": MOTO_SECRET}


def test_planning_lists_once_and_reads_each_footer_once(
    many_files: tuple[DelayProxy, dict[str, str]],
) -> None:
    proxy, options = many_files
    proxy.reset()
    table = Table.open(f"s3://{BUCKET}/t", options)
    plan = table.plan_splits(1 << 20)
    assert (plan.num_files, len(plan.splits), plan.num_rows) == (FILES, FILES, FILES * 100)
    stats = proxy.snapshot()
    listings = stats.gets_by_path[f"/{BUCKET}"]
    footers = collections.Counter(
        {p: n for p, n in stats.gets_by_path.items() if p.endswith(".parquet")}
    )
    assert listings == 1, stats.log[:5]  # 500 keys: one ListObjectsV2 page, by prefix
    assert len(footers) == FILES
    # Each footer once; the first file's twice (its schema is read when the table opens).
    assert sorted(footers.values()) == [1] * (FILES - 1) + [2]
    assert stats.requests["HEAD"] == 0
    first = next(
        read_split(
            plan.splits[0],
            filesystem=table.filesystem,
            columns=["row_id"],
            row_filter=None,
            batch_rows=4096,
        )
    )
    assert first.column("row_id").to_pylist() == list(range(ROWS_PER_FILE))


def test_a_cluster_delivers_every_file_once(many_files: tuple[DelayProxy, dict[str, str]]) -> None:
    _, options = many_files
    spec = SessionSpec(
        table_uri=f"s3://{BUCKET}/t",
        storage_options=options,
        features=(Feature("d0", "dense", source="dense_0"),),
        passthrough=("row_id",),
        batch_size=1000,
    )
    # The data-access policy allows exactly this bucket and endpoint (issue 13).
    cluster = LocalCluster(
        workers=2, allow_table=f"s3://{BUCKET}/", allow_endpoint=options["endpoint_url"]
    )
    with cluster, DppLoader(cluster.master_address, spec) as loader:
        row_ids = [r for batch in loader for r in batch.extras["row_id"].tolist()]
    assert sorted(row_ids) == list(range(FILES * ROWS_PER_FILE))


# -- the obstore planning path (storage/object_store.py) against the fsspec one ---------------

PLAIN = "dpp-plain"


@pytest.fixture(scope="module")
def moto_options() -> Iterator[dict[str, str]]:
    import s3fs

    with moto_server() as endpoint:
        direct = s3fs.S3FileSystem(
            key=MOTO_KEY, secret=MOTO_SECRET, client_kwargs={"endpoint_url": endpoint}
        )
        direct.mkdir(PLAIN)
        yield {"endpoint_url": endpoint, "key": MOTO_KEY, "secret": MOTO_SECRET}


def _put(options: dict[str, str], files: dict[str, pa.Table], **write: Any) -> None:
    import s3fs

    direct = s3fs.S3FileSystem(
        key=options["key"],
        secret=options["secret"],
        client_kwargs={"endpoint_url": options["endpoint_url"]},
    )
    for path, table in files.items():
        sink = io.BytesIO()
        pq.write_table(table, sink, **write)
        direct.pipe(f"{PLAIN}/{path}", sink.getvalue())


def _both(uri: str, options: dict[str, str]) -> tuple[Table, Table]:
    """The table opened on the obstore path, and on s3fs alone (an s3fs-only option)."""
    fast = Table.open(uri, options)
    slow = Table.open(uri, {**options, "use_ssl": "false"})
    assert fast._objects is not None and slow._objects is None
    return fast, slow


def _rows(table: Table, plan: Plan, columns: list[str]) -> pa.Table:
    batches = [
        batch
        for split in plan.splits
        for batch in read_split(
            split,
            filesystem=table.filesystem,
            columns=columns,
            row_filter=None,
            batch_rows=1 << 16,
        )
    ]
    return pa.Table.from_batches(batches).sort_by("row_id")


def test_obstore_planning_equals_s3fs_planning(
    moto_options: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Many row groups, statistics pruning, a polars-style stored partition column (one file
    without statistics, checked by reading the column), and a footer longer than the 64 KB
    first read: the same splits, ids and rows through both paths, every row once."""
    files: dict[str, pa.Table] = {}
    for day in range(3):
        ids = np.arange(day * 3000, (day + 1) * 3000, dtype=np.int64)
        files[f"eq/ds=2026-01-0{day + 1}/part-0.parquet"] = pa.table(
            {
                "row_id": ids,
                "price": ids.astype(np.float64),
                "ds": [f"2026-01-0{day + 1}"] * 3000,
            }
        )
    _put(moto_options, {k: v for k, v in files.items() if "01" not in k}, row_group_size=500)
    _put(
        moto_options,
        {k: v for k, v in files.items() if "01" in k},
        row_group_size=500,
        write_statistics=False,
    )
    # 400 columns x 8 row groups: the footer alone is far over 64 KB (a second GET).
    wide_ids = np.arange(9000, 9800, dtype=np.int64)
    wide = {"row_id": wide_ids, "price": wide_ids.astype(np.float64)}
    wide |= {f"c{i}": wide_ids % (i + 7) for i in range(400)}
    _put(moto_options, {"eq/ds=2026-01-04/wide.parquet": pa.table(wide)}, row_group_size=100)
    caplog.set_level(logging.DEBUG, logger="storage.object_store")
    fast, slow = _both(f"s3://{PLAIN}/eq", moto_options)
    assert [f.etag for f in fast.files()] == [f.etag for f in slow.files()]
    row_filter = parse_filter("price < 1000", "row_filter")
    for kwargs in ({}, {"row_filter": row_filter}):
        planned = [t.plan_splits(1200, max_concurrency=8, **kwargs) for t in (fast, slow)]  # type: ignore[arg-type]
        assert planned[0].splits == planned[1].splits
        assert (planned[0].num_rows, planned[0].drift) == (planned[1].num_rows, planned[1].drift)
    full = fast.plan_splits(1200)
    rows = _rows(fast, full, ["row_id", "price", "ds"])
    assert rows.column("row_id").to_pylist() == list(range(9800))  # every row, once
    expected = pa.concat_tables(
        [t.select(["row_id", "price"]) for t in files.values()]
        + [pa.table(wide).select(["row_id", "price"])]
    ).sort_by("row_id")
    assert rows.column("price").equals(expected.column("price"))
    assert rows.column("ds").to_pylist()[:3] == ["2026-01-01"] * 3
    pruned = fast.plan_splits(1200, row_filter=row_filter)
    assert pruned.num_row_groups < full.num_row_groups  # statistics pruned on the fast path
    # Every footer came through obstore (the wide one in two GETs), none through the fallback.
    assert not [r.message for r in caplog.records if "falling back" in r.message]


def test_obstore_planning_still_refuses_drift_and_misfiled_values(
    moto_options: dict[str, str],
) -> None:
    _put(
        moto_options,
        {
            "drift/ds=a/x.parquet": pa.table({"row_id": [1, 2], "tag": [1, 2]}),
            "drift/ds=b/y.parquet": pa.table({"row_id": [3, 4], "tag": ["p", "q"]}),
        },
    )
    fast, slow = _both(f"s3://{PLAIN}/drift", moto_options)
    drift = fast.plan_splits(1000).drift
    assert drift == slow.plan_splits(1000).drift
    assert [(d.column, [(p.rsplit("/", 2)[-2], str(t)) for p, t in d.types]) for d in drift] == [
        ("tag", [("ds=a", "int64"), ("ds=b", "string")])
    ]
    # A stored partition column disagreeing with its folder, with and without statistics.
    for name, statistics in (("stats", True), ("nostats", False)):
        _put(
            moto_options,
            {f"misfiled-{name}/ds=a/x.parquet": pa.table({"row_id": [1], "ds": ["b"]})},
            write_statistics=statistics,
        )
        table = Table.open(f"s3://{PLAIN}/misfiled-{name}", moto_options)
        assert table._objects is not None
        with pytest.raises(StorageError, match=r"misfiled-.*x\.parquet.*'ds'.*ds=a"):
            table.plan_splits(1000)


def test_obstore_planning_names_an_unreadable_file(moto_options: dict[str, str]) -> None:
    import s3fs

    _put(moto_options, {"bad/ds=a/good.parquet": pa.table({"row_id": [1, 2]})})
    direct = s3fs.S3FileSystem(
        key=moto_options["key"],
        secret=moto_options["secret"],
        client_kwargs={"endpoint_url": moto_options["endpoint_url"]},
    )
    direct.pipe(f"{PLAIN}/bad/ds=b/truncated.parquet", b"PAR1 not a footer")
    table = Table.open(f"s3://{PLAIN}/bad", moto_options)
    with pytest.raises(StorageError, match=r"truncated\.parquet"):
        table.plan_splits(1000)


def test_obstore_lists_and_reads_keys_as_s3fs_names_them(
    moto_options: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Hive-encoded values (``%20``, ``%2F``), spaces, braces and non-ASCII in keys: obstore
    must hand back the very paths s3fs uses (workers read through s3fs), and read them."""
    names = ["city=New%20York/a b.parquet", "city=A%2FB/x#y{z}.parquet", "city=u/é€.parquet"]
    _put(moto_options, {f"keys/{n}": pa.table({"row_id": [i]}) for i, n in enumerate(names)})
    caplog.set_level(logging.DEBUG, logger="storage.object_store")
    fast, slow = _both(f"s3://{PLAIN}/keys", moto_options)
    assert [(f.path, f.etag) for f in fast.files()] == [(f.path, f.etag) for f in slow.files()]
    assert sorted(f.partition["city"] for f in fast.files()) == ["A/B", "New York", "u"]
    plan = fast.plan_splits(1000)
    assert plan.splits == slow.plan_splits(1000).splits
    assert _rows(fast, plan, ["row_id"]).column("row_id").to_pylist() == [0, 1, 2]
    assert not [r.message for r in caplog.records if "falling back" in r.message]
