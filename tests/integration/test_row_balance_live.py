"""Equal batches at world_size 8 lose at most one batch per rank (issue 12, goal 5), on a real
cluster: 8 ranks (loaders in threads) read a 42-split table whose splits cannot be dealt
whole evenly; every row at most once, each rank short of its row share by less than a batch,
and deterministic mode gives the same batch sequence per rank in two sessions."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_server.local_cluster import LocalCluster
from storage import GenConfig, generate_table

pytestmark = pytest.mark.integration

WORLD_SIZE = 8
BATCH = 256
ROWS = 42_000  # 42 splits of 1000 rows: dealt whole, ranks got 5 or 6 splits (5000 or 6000)


def _spec(table: str, **overrides: object) -> SessionSpec:
    fields: dict[str, object] = {
        "table_uri": table,
        "features": (
            Feature("d0", "dense", source="dense_0", ops=(Op("fill_null", {"value": 0.0}),)),
        ),
        "passthrough": ("row_id",),
        "batch_size": BATCH,
        "target_split_rows": 1000,
        "world_size": WORLD_SIZE,
        "seed": 11,
    }
    fields.update(overrides)
    return SessionSpec(**fields)  # type: ignore[arg-type]


def _run(address: str, spec: SessionSpec, name: str) -> dict[int, list[list[int]]]:
    """Every rank's epoch-0 batches, as lists of row ids."""
    out: dict[int, list[list[int]]] = {}
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        try:
            with DppLoader(address, spec, rank=rank, session_name=name) as loader:
                out[rank] = [batch.extras["row_id"].tolist() for batch in loader]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(WORLD_SIZE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    if errors:
        raise errors[0]
    assert sorted(out) == list(range(WORLD_SIZE))
    return out


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("balance") / "t")
    generate_table(
        uri, GenConfig(rows=ROWS, days=1, dense=1, sparse=1, row_group_rows=500, rows_per_file=6000)
    )
    return uri


@pytest.mark.parametrize("deterministic", [False, True])
def test_world_size_8_loses_at_most_one_batch_per_rank(
    cluster: LocalCluster, table: str, deterministic: bool, tmp_path: Path
) -> None:
    spec = _spec(table, deterministic=deterministic, shuffle=True)
    first = _run(cluster.master_address, spec, f"balance-{deterministic}-a")
    counts = {len(batches) for batches in first.values()}
    assert len(counts) == 1, counts  # equal batches per rank
    rows = [row for batches in first.values() for batch in batches for row in batch]
    assert len(rows) == len(set(rows)), "a row was delivered twice"
    assert set(rows) <= set(range(ROWS))
    # Ranks hold ROWS // WORLD_SIZE rows or one more, so the equal-batches rule drops at
    # most that one row per rank (the goal is "at most a batch"). Dealt whole, the two ranks
    # of 6 splits each dropped 880 rows (20 batches, like the ranks of 5 splits): 1,760.
    share = ROWS // WORLD_SIZE
    for rank, batches in first.items():
        delivered = sum(len(b) for b in batches)
        assert delivered >= share > delivered - BATCH, (rank, delivered)
    assert ROWS - len(rows) <= WORLD_SIZE
    if deterministic:
        second = _run(cluster.master_address, spec, f"balance-{deterministic}-b")
        assert second == first
