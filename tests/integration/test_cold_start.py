"""Cold start on many files, small enough for CI: 500 Parquet files on S3 (moto) behind the
20 ms proxy. Planning lists the table by prefix (one page of keys), reads each footer once and
nothing else; a real cluster then delivers every file's rows once. bench/cold_start.py times
the 10,000-file case; no timing is asserted here."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest

from bench.cold_start import BUCKET, ROWS_PER_FILE, upload
from dpp_client import DppLoader, Feature, SessionSpec
from dpp_server.local_cluster import LocalCluster
from storage import Table, read_split
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
