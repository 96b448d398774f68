"""A table on S3, written by `dpp gen`, planned by the master and read by workers through s3fs,
every row delivered once. Two endpoints on 127.0.0.1: moto's S3 server (light, a second to
start) and Ceph's radosgw (a production S3 implementation, one-node cluster, about 15 s)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from radosgw import missing_binaries, radosgw

from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_server.local_cluster import LocalCluster
from tests.helpers.delay_proxy import moto_server

pytestmark = pytest.mark.integration

KEY, SECRET = "testing", "testing"
BUCKET = "dpp-tables"


@pytest.fixture(scope="module", params=["moto", "radosgw"])
def s3_endpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    """``(endpoint, key, secret)`` of an S3 server on loopback holding an empty bucket."""
    import s3fs

    servers = {"moto": _moto, "radosgw": _radosgw}
    with servers[request.param](tmp_path_factory.mktemp(request.param)) as (endpoint, key, secret):
        s3fs.S3FileSystem(key=key, secret=secret, client_kwargs={"endpoint_url": endpoint}).mkdir(
            BUCKET
        )
        yield endpoint, key, secret


@contextlib.contextmanager
def _radosgw(root: Path) -> Iterator[tuple[str, str, str]]:
    missing = missing_binaries()
    if missing:
        pytest.fail(
            f"Ceph's {', '.join(missing)} not installed: run `make test` (it installs the Debian "
            "packages ceph-mon ceph-osd radosgw ceph-common)"
        )
    with radosgw(root) as gateway:
        yield gateway.endpoint, gateway.key, gateway.secret


@contextlib.contextmanager
def _moto(root: Path) -> Iterator[tuple[str, str, str]]:
    """moto's S3 server as a plain process (any key and secret work)."""
    with moto_server() as endpoint:
        yield endpoint, KEY, SECRET


def test_a_table_on_s3_is_read_exactly_once(s3_endpoint: tuple[str, str, str]) -> None:
    endpoint, key, secret = s3_endpoint
    uri = f"s3://{BUCKET}/clicks"
    options = [f"endpoint_url={endpoint}", f"key={key}", f"secret={secret}"]
    gen = subprocess.run(
        [sys.executable, "-m", "dpp_server", "gen", uri, "--rows", "6000", "--days", "2",
         "--dense", "2", "--sparse", "2", "--row-group-rows", "1000", "--rows-per-file", "3000",
         "--quiet", *[f"--storage-option={o}" for o in options]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    assert "wrote 6000 rows in 2 files" in gen.stdout
    spec = SessionSpec(
        table_uri=uri,
        storage_options=dict(o.split("=", 1) for o in options),
        partition_filter="ds = '2026-01-02'",
        features=(
            Feature("d0", "dense", source="dense_0", ops=(Op("fill_null", {"value": 0.0}),)),
            Feature("s0", "sparse", source="sparse_0", ops=(Op("first_x", {"x": 4}),)),
        ),
        passthrough=("row_id",),
        batch_size=500,
        target_split_rows=1000,
    )
    # The data-access policy allows exactly this bucket and endpoint (issue 13).
    cluster = LocalCluster(workers=2, allow_table=f"s3://{BUCKET}/", allow_endpoint=endpoint)
    with cluster, DppLoader(cluster.master_address, spec) as loader:
        row_ids = [r for batch in loader for r in batch.extras["row_id"].tolist()]
        assert loader.plan is not None
        assert (loader.plan.num_files, loader.plan.num_splits) == (1, 3)
    # The second day's rows, each once (rows are written day by day).
    assert sorted(row_ids) == list(range(3000, 6000))


def test_dpp_cluster_rewrites_a_table_on_s3(s3_endpoint: tuple[str, str, str]) -> None:
    endpoint, key, secret = s3_endpoint
    source, dest = f"s3://{BUCKET}/logged", f"s3://{BUCKET}/by-session"
    options = [f"--storage-option={o}" for o in (f"endpoint_url={endpoint}", f"key={key}",
               f"secret={secret}")]  # fmt: skip

    def dpp(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "dpp_server", *args, *options],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    dpp("gen", source, "--rows", "3000", "--days", "1", "--dense", "1", "--sparse", "2",
        "--rows-per-session", "6", "--no-cluster", "--quiet")  # fmt: skip
    assert "clustered 3000 rows of 1 partitions" in dpp(
        "cluster", source, dest, "--by", "session_id"
    )
    import pyarrow.dataset as ds
    import s3fs

    fs = s3fs.S3FileSystem(key=key, secret=secret, client_kwargs={"endpoint_url": endpoint})
    table = ds.dataset(dest.removeprefix("s3://"), filesystem=fs, partitioning="hive").to_table()
    assert sorted(table.column("row_id").to_pylist()) == list(range(3000))
    sessions = table.column("session_id").to_numpy()
    runs = 1 + int((sessions[1:] != sessions[:-1]).sum())
    assert runs == len(set(sessions.tolist()))  # each session is one run of rows


def test_an_iceberg_table_on_s3_is_read_exactly_once(
    s3_endpoint: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Iceberg table whose metadata and data files pyiceberg wrote to S3 (a sqlite catalog
    on local disk), read by a cluster whose processes find the catalog through pyiceberg's
    environment variables and read the data files with the spec's storage options."""
    from pyiceberg.catalog import load_catalog

    from tests.helpers.iceberg import DAYS, rows

    endpoint, key, secret = s3_endpoint
    properties = {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path}/catalog.db",
        "warehouse": f"s3://{BUCKET}/iceberg",
        "s3.endpoint": endpoint,
        "s3.access-key-id": key,
        "s3.secret-access-key": secret,
        "s3.region": "us-east-1",
        # s3fs: pyarrow's S3 client uploads parts radosgw refuses (HTTP 411).
        "py-io-impl": "pyiceberg.io.fsspec.FsspecFileIO",
    }
    for name, value in properties.items():
        env = name.replace(".", "__").replace("-", "_").upper()
        monkeypatch.setenv(f"PYICEBERG_CATALOG__S3TEST__{env}", value)
    catalog = load_catalog("s3test", **properties)
    catalog.create_namespace("db")
    table = catalog.create_table("db.events", schema=rows(0, 1).schema)
    with table.update_spec() as update:
        update.add_identity("ds")
    table.append(rows(0, 3000))
    want = table.scan(row_filter=f"ds == '{DAYS[2]}'").to_arrow().column("row_id").to_pylist()
    spec = SessionSpec(
        table_uri="iceberg://s3test/db.events",
        storage_options={"endpoint_url": endpoint, "key": key, "secret": secret},
        row_filter=f"ds = '{DAYS[2]}'",
        features=(Feature("p", "dense", source="price"),),
        passthrough=("row_id",),
        batch_size=250,
        target_split_rows=1000,
    )
    cluster = LocalCluster(workers=2, allow_table="iceberg://s3test/", allow_endpoint=endpoint)
    with cluster, DppLoader(cluster.master_address, spec) as loader:
        row_ids = [r for batch in loader for r in batch.extras["row_id"].tolist()]
        assert loader.plan is not None
        assert loader.plan.num_files == 1  # the manifests pruned the other days' files
        assert loader.plan.snapshot_id == table.current_snapshot().snapshot_id  # type: ignore[union-attr]
    assert sorted(row_ids) == sorted(want) and len(want) == 1000
