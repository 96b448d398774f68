"""A worker's memory budget holds: its resident set, read from /proc, stays under
``--memory-mb`` on a table whose decoded size is many times the budget, while the same worker
without a budget goes well above it (so the test can fail)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.measure import peak_rss_mb
from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_server.local_cluster import LocalCluster
from storage import GenConfig, generate_table

#: A DLRM-shaped table: 13 dense, 12 id lists of up to 40 ids (decoded ~140 MB, 3x the
#: working memory a 256 MB budget leaves), 32k-row row groups as a warehouse writes them.
_TABLE = GenConfig(
    rows=160_000,
    days=1,
    dense=13,
    sparse=12,
    row_group_rows=32_768,
    rows_per_file=80_000,
    max_list_len=40,
    seed=5,
)
_BUDGET_MB = 256


def _spec(uri: str) -> SessionSpec:
    return SessionSpec(
        table_uri=uri,
        features=tuple(
            Feature(f"d{i}", "dense", source=f"dense_{i}", ops=(Op("fill_null", {"value": 0.0}),))
            for i in range(_TABLE.dense)
        )
        + tuple(
            Feature(
                f"s{i}",
                "sparse",
                source=f"sparse_{i}",
                ops=(
                    Op("first_x", {"x": 20}),
                    Op("sigrid_hash", {"salt": i, "max_value": 100_000}),
                ),
            )
            for i in range(_TABLE.sparse)
        ),
        label="label",
        batch_size=4096,
    )


def _stream(uri: str, memory_mb: int) -> tuple[float, int]:
    """Streams the table once through one worker (one pipeline thread, default buffers) and
    a trainer slower than the worker; returns the worker's peak RSS (VmHWM, MB) and the rows
    delivered."""
    with LocalCluster(
        workers=1, pipeline_threads=1, worker_args=["--memory-mb", str(memory_mb)]
    ) as cluster:
        pid = cluster.workers[0].process.pid
        rows = 0
        with DppLoader(cluster.master_address, _spec(uri), prefetch_batches=2) as loader:
            for batch in loader:
                rows += batch.num_rows
                time.sleep(0.02)  # frames queue up in the worker, filling its buffers
        return peak_rss_mb(pid), rows


@pytest.mark.timeout(240)
def test_a_worker_under_256_mb_stays_under_it_and_one_without_a_budget_does_not(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "table")
    generate_table(uri, _TABLE)
    budgeted, rows = _stream(uri, _BUDGET_MB)
    assert rows == _TABLE.rows
    unbounded, rows = _stream(uri, 0)
    assert rows == _TABLE.rows
    print(f"peak RSS: {budgeted:.0f} MB under --memory-mb {_BUDGET_MB}, {unbounded:.0f} MB without")
    assert budgeted <= _BUDGET_MB, f"peak RSS {budgeted:.0f} MB under --memory-mb {_BUDGET_MB}"
    # The control: without a budget the same job takes far more, so the table is big enough.
    assert unbounded > _BUDGET_MB + 64, f"no budget peaked at only {unbounded:.0f} MB"
