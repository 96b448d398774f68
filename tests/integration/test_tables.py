"""Tables written by other tools, through real processes: a master and two workers on
127.0.0.1 and a real DppLoader in this process, whose working folder differs from the
master's (the table is named by a relative path).

Every row must arrive exactly once, with feature and passthrough values equal to the data
the writer (polars) was given; a table the master must refuse is refused at session creation
with the file named, and the cluster keeps serving.
"""

from __future__ import annotations

import dataclasses
import datetime
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.orc as paorc
import pytest

from dpp_client import DppLoader, Feature, SessionSpec
from dpp_client.errors import DppClientError, SpecRejectedError
from dpp_server.local_cluster import LocalCluster

pytestmark = pytest.mark.integration

ROWS = 6000
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


def source() -> pl.DataFrame:
    row_id = np.arange(ROWS, dtype=np.int64)
    return pl.DataFrame(
        {
            "row_id": row_id,
            "dense_0": (row_id % 13).astype(np.float64),
            "label": (row_id % 2).astype(np.float32),
            "maybe": pl.Series(
                [None if r % 5 == 0 else int(r) * 3 for r in row_id], dtype=pl.Int32
            ),
            "name": [None if r % 4 == 0 else f"n{r}" for r in row_id],
            "at": [
                datetime.datetime(2026, 1, 1) + datetime.timedelta(minutes=int(r)) for r in row_id
            ],
            "ds": [DAYS[r % 3] for r in row_id],
        }
    )


def spec(table_uri: str) -> SessionSpec:
    return SessionSpec(
        table_uri=table_uri,
        features=(Feature(name="d0", kind="dense", source="dense_0"),),
        label="label",
        passthrough=("row_id", "maybe", "name", "at", "ds"),
        batch_size=500,
        target_split_rows=1000,
    )


def test_polars_table_by_relative_path_with_typed_passthrough(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = source()
    root = tmp_path / "warehouse" / "events"
    frame.write_parquet(root, partition_by=["ds"], row_group_size=400)  # ds stays in the files
    (root / "_SUCCESS").write_text("")
    for part in list(root.rglob("*.parquet")):
        (part.parent / f".{part.name}.crc").write_bytes(b"x")
    monkeypatch.chdir(tmp_path / "warehouse")  # the master's working folder is elsewhere
    want = {r["row_id"]: r for r in frame.to_dicts()}
    got: set[int] = set()
    with DppLoader(cluster.master_address, spec("events")) as loader:
        for batch in loader:
            row_ids = batch.extras["row_id"].tolist()
            maybe = batch.extras["maybe"].tolist()
            maybe_valid = batch.extras_valid["maybe"].tolist()
            at = batch.extras["at"].tolist()
            names = batch.extras_arrow["name"].to_pylist()
            days = batch.extras_arrow["ds"].to_pylist()
            for i, row_id in enumerate(row_ids):
                assert row_id not in got, f"row {row_id} delivered twice"
                got.add(row_id)
                row = want[row_id]
                assert batch.dense[i, 0].item() == row["dense_0"]
                assert batch.labels is not None and batch.labels[i].item() == row["label"]
                assert maybe_valid[i] == (row["maybe"] is not None)
                assert maybe[i] == (row["maybe"] or 0)
                epoch_us = (row["at"] - datetime.datetime(1970, 1, 1)).total_seconds() * 1e6
                assert at[i] == int(epoch_us)
                assert names[i] == row["name"]
                assert days[i] == row["ds"]
    assert got == set(range(ROWS))


def test_refusals_name_the_file_and_the_cluster_keeps_serving(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    frame = source()
    root = tmp_path / "t"
    frame.write_parquet(root, partition_by=["ds"])
    moved = root / "ds=2026-01-01" / "moved.parquet"
    shutil.copy(next((root / "ds=2026-01-02").glob("*.parquet")), moved)
    with (
        pytest.raises(DppClientError) as info,
        DppLoader(cluster.master_address, spec(str(root))) as loader,
    ):
        next(iter(loader))
    assert str(moved) in str(info.value) and "disagrees with its folder" in str(info.value)
    moved.unlink()

    drifted = root / "ds=2026-01-03" / "drift.parquet"
    frame.head(10).with_columns(pl.col("name").str.len_bytes().alias("name")).filter(
        pl.col("ds") == "2026-01-03"
    ).write_parquet(drifted)
    with (
        pytest.raises(SpecRejectedError) as rejected,
        DppLoader(cluster.master_address, spec(str(root))) as loader,
    ):
        next(iter(loader))
    assert "passthrough[2]" in str(rejected.value) and str(drifted) in str(rejected.value)
    drifted.unlink()

    with DppLoader(cluster.master_address, spec(str(root))) as loader:
        assert sum(b.num_rows for b in loader) == ROWS


def test_orc_table_through_the_cluster_every_row_once(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    frame = source()
    root = tmp_path / "orc"
    for day in DAYS:
        part = frame.filter(pl.col("ds") == day).drop("ds").to_arrow()
        (root / f"ds={day}").mkdir(parents=True)
        paorc.write_table(part, root / f"ds={day}" / "part-0.orc", stripe_size=16 * 1024)
    want = {r["row_id"]: r for r in frame.to_dicts()}
    got: set[int] = set()
    orc_spec = dataclasses.replace(spec(str(root)), row_filter="label = 1")
    with DppLoader(cluster.master_address, orc_spec) as loader:
        for batch in loader:
            names = batch.extras_arrow["name"].to_pylist()
            for i, row_id in enumerate(batch.extras["row_id"].tolist()):
                assert row_id not in got, f"row {row_id} delivered twice"
                got.add(row_id)
                assert batch.dense[i, 0].item() == want[row_id]["dense_0"]
                assert names[i] == want[row_id]["name"]
                assert batch.extras_arrow["ds"][i].as_py() == want[row_id]["ds"]
    assert got == {r for r, row in want.items() if row["label"] == 1}
