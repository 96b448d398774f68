"""ORC tables: stripe row counts from the footer, stripes as splits, projection, exact row
filters, partition columns, and the same exactly-once reading as Parquet. The reference for
every value is the data handed to pyarrow's ORC writer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.orc as paorc
import pyarrow.parquet as pq
import pytest

from storage.errors import StorageError
from storage.filters import parse_filter
from storage.orc import stripe_rows
from storage.reader import read_split
from storage.table import Table

DAYS = ["2026-01-01", "2026-01-02"]


def source(first: int, rows: int) -> pa.Table:
    row_id = np.arange(first, first + rows, dtype=np.int64)
    return pa.table(
        {
            "row_id": row_id,
            "x": row_id * 5 - 3,
            "y": (row_id % 9).astype(np.float64) / 9.0,
            # Incompressible, so that compressed files still cut many stripes.
            "r": np.random.default_rng(first).random(rows),
            "s": pa.array([None if r % 10 == 0 else f"s{r % 7}" for r in row_id]),
            "ids": pa.array([list(range(r % 4)) for r in row_id], pa.list_(pa.int64())),
        }
    )


def write_orc(root: Path, compression: str = "zstd", rows_per_file: int = 20_000) -> pa.Table:
    """Two partitions x two files; small stripes so every file has several."""
    parts = []
    first = 0
    for day in DAYS:
        for i in range(2):
            data = source(first, rows_per_file)
            path = root / f"ds={day}" / f"part-{i}.orc"
            path.parent.mkdir(parents=True, exist_ok=True)
            paorc.write_table(
                data, path, compression=compression, stripe_size=8 * 1024, batch_size=500
            )
            parts.append(data.append_column("ds", pa.array([day] * rows_per_file)))
            first += rows_per_file
    return pa.concat_tables(parts)


def read_all(table: Table, target: int, columns: list[str], row_filter: str = "") -> pa.Table:
    parsed = parse_filter(row_filter, "row_filter") if row_filter else None
    plan = table.plan_splits(target, row_filter=parsed)
    batches = [
        b
        for split in plan.splits
        for b in read_split(
            split, filesystem=table.filesystem, columns=columns, row_filter=parsed, batch_rows=700
        )
    ]
    return pa.Table.from_batches(batches)


@pytest.mark.parametrize("compression", ["uncompressed", "zlib", "snappy", "zstd"])
def test_stripe_rows_match_the_stripes(tmp_path: Path, compression: str) -> None:
    data = source(0, 200_000)
    path = tmp_path / "f.orc"
    # Tiny stripes: many stripe entries, so the footer itself is worth compressing.
    paorc.write_table(data, path, compression=compression, stripe_size=4096, batch_size=500)
    reader = paorc.ORCFile(str(path))
    assert reader.nstripes > 20
    rows = stripe_rows(pa.fs.LocalFileSystem(), str(path), os.path.getsize(path))
    assert rows == [reader.read_stripe(i).num_rows for i in range(reader.nstripes)]
    assert sum(rows) == 200_000


def test_orc_table_every_row_once_with_its_values(tmp_path: Path) -> None:
    want = write_orc(tmp_path / "t")
    table = Table.open(str(tmp_path / "t"))
    assert table.schema.names == ["row_id", "x", "y", "r", "s", "ids", "ds"]
    plan = table.plan_splits(5000)
    assert plan.num_rows == want.num_rows == 80_000
    assert len(plan.splits) > plan.num_files == 4  # stripes, not files, are the unit
    assert all(s.num_rows <= 5000 or len(s.row_groups) == 1 for s in plan.splits)
    columns = ["row_id", "x", "y", "r", "s", "ids", "ds"]
    got = read_all(table, 5000, columns).sort_by("row_id")
    assert got.column("row_id").to_pylist() == list(range(80_000))
    assert got.equals(want.select(columns).sort_by("row_id"))
    assert (
        table.plan_splits(5000).splits == Table.open(str(tmp_path / "t")).plan_splits(5000).splits
    )


def test_orc_projection_and_exact_row_filter(tmp_path: Path) -> None:
    want = write_orc(tmp_path / "t", compression="snappy")
    table = Table.open(str(tmp_path / "t"))
    got = read_all(table, 8000, ["row_id", "s"], "y > 0.5 AND ds = '2026-01-02'")
    assert got.schema.names == ["row_id", "s"]  # the filter's columns are read, not returned
    mask = [
        y > 0.5 and d == "2026-01-02"
        for y, d in zip(want["y"].to_pylist(), want["ds"].to_pylist(), strict=True)
    ]
    expected = want.filter(pa.array(mask)).select(["row_id", "s"])
    assert got.sort_by("row_id").equals(expected.sort_by("row_id"))


def test_orc_partition_column_stored_in_the_file_is_checked(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for day in DAYS:
        (root / f"ds={day}").mkdir(parents=True)
        data = source(0, 100).append_column("ds", pa.array([day] * 100))
        paorc.write_table(data, root / f"ds={day}" / "f.orc")
    assert Table.open(str(root)).plan_splits(1000).num_rows == 200
    wrong = root / "ds=2026-01-01" / "g.orc"
    paorc.write_table(source(0, 10).append_column("ds", pa.array(["2026-01-02"] * 10)), wrong)
    with pytest.raises(StorageError, match=r"g\.orc.*disagrees with its folder ds=2026-01-01"):
        Table.open(str(root)).plan_splits(1000)


def test_truncated_orc_file_is_refused_at_planning_naming_it(tmp_path: Path) -> None:
    write_orc(tmp_path / "t", rows_per_file=2000)
    cut = tmp_path / "t" / "ds=2026-01-02" / "part-1.orc"
    cut.write_bytes(cut.read_bytes()[:-200])
    table = Table.open(str(tmp_path / "t"))
    with pytest.raises(StorageError, match=str(cut)):
        table.plan_splits(1000)


def test_a_table_mixing_orc_and_parquet_is_refused(tmp_path: Path) -> None:
    write_orc(tmp_path / "t", rows_per_file=100)
    pq.write_table(source(0, 10), tmp_path / "t" / "ds=2026-01-01" / "x.parquet")
    with pytest.raises(StorageError, match=r"mixes ORC .* and Parquet"):
        Table.open(str(tmp_path / "t"))
