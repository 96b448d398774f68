"""Tables as other tools write them: pyarrow, polars (partition column inside the files or
not), duckdb, and Spark's marker files. Each is planned and read split by split; every row
must come back exactly once with the values the writer was given (the reference is the data
handed to the writer, not another read through dpp)."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.errors import StorageError
from storage.filters import Filter, parse_filter
from storage.reader import read_split
from storage.table import Table

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
ROWS = 3000


def source_frame() -> pl.DataFrame:
    """3000 rows over 3 days; every value derived from ``row_id`` so any mix-up shows."""
    row_id = np.arange(ROWS, dtype=np.int64)
    return pl.DataFrame(
        {
            "row_id": row_id,
            "x": row_id * 3 + 1,
            "y": (row_id % 11).astype(np.float64) / 11.0,
            "s": [f"v{r % 5}" for r in row_id],
            "ds": [DAYS[r % 3] for r in row_id],
        }
    )


def read_table(uri: str, target_split_rows: int = 256, row_filter: str = "") -> pa.Table:
    """Every split of the table read through dpp's reader, concatenated in plan order."""
    table = Table.open(uri)
    plan = table.plan_splits(target_split_rows, row_filter=table_filter(row_filter))
    columns = ["row_id", "x", "y", "s", "ds"]
    batches = [
        batch
        for split in plan.splits
        for batch in read_split(
            split,
            filesystem=table.filesystem,
            columns=columns,
            row_filter=table_filter(row_filter),
            batch_rows=100,
        )
    ]
    return pa.Table.from_batches(batches)


def table_filter(text: str) -> Filter | None:
    return parse_filter(text, "row_filter") if text else None


def assert_exactly_the_source(got: pa.Table, source: pl.DataFrame) -> None:
    """Every source row exactly once, each value equal (partition values as strings)."""
    row_ids = got.column("row_id").to_pylist()
    assert len(row_ids) == len(set(row_ids)) == source.height
    got_sorted = pl.from_arrow(got).sort("row_id")
    want = source.sort("row_id").select(got_sorted.columns)
    assert got_sorted.schema["ds"] == pl.String
    assert got_sorted.equals(want), "values differ from what the writer was given"


def test_pyarrow_write_to_dataset(tmp_path: Path) -> None:
    source = source_frame()
    pq.write_to_dataset(
        source.to_arrow(), tmp_path / "t", partition_cols=["ds"], row_group_size=300
    )
    assert_exactly_the_source(read_table(str(tmp_path / "t")), source)


def test_polars_keeps_the_partition_column_inside_the_files(tmp_path: Path) -> None:
    source = source_frame()
    source.write_parquet(tmp_path / "t", partition_by=["ds"], row_group_size=200)
    files = sorted((tmp_path / "t").rglob("*.parquet"))
    assert files and all("ds" in pq.read_schema(f).names for f in files)  # polars' default
    table = Table.open(str(tmp_path / "t"))
    assert table.schema.names == ["row_id", "x", "y", "s", "ds"]
    assert table.partition_columns == ["ds"]
    assert_exactly_the_source(read_table(str(tmp_path / "t")), source)


def test_polars_without_the_partition_column(tmp_path: Path) -> None:
    source = source_frame()
    source.lazy().sink_parquet(
        pl.PartitionBy(tmp_path / "t", key="ds", include_key=False), mkdir=True
    )
    files = sorted((tmp_path / "t").rglob("*.parquet"))
    assert files and all("ds" not in pq.read_schema(f).names for f in files)
    assert_exactly_the_source(read_table(str(tmp_path / "t")), source)


def test_polars_table_row_filter_on_the_stored_partition_column(tmp_path: Path) -> None:
    source = source_frame()
    source.write_parquet(tmp_path / "t", partition_by=["ds"], row_group_size=200)
    got = read_table(str(tmp_path / "t"), row_filter="ds >= '2026-01-02' AND x > 100")
    want = source.filter((pl.col("ds") >= "2026-01-02") & (pl.col("x") > 100))
    assert_exactly_the_source(got, want)


@pytest.mark.parametrize("write_partition_columns", [False, True])
def test_duckdb_copy_partition_by(tmp_path: Path, write_partition_columns: bool) -> None:
    duckdb = pytest.importorskip("duckdb")  # in the dev extra; skipped only off the dev install
    source = source_frame()
    frame = source.to_arrow()
    out = tmp_path / "t"
    flag = ", WRITE_PARTITION_COLUMNS true" if write_partition_columns else ""
    with duckdb.connect() as con:
        con.register("frame", frame)
        con.execute(
            f"COPY frame TO '{out}' (FORMAT parquet, PARTITION_BY (ds), ROW_GROUP_SIZE 256{flag})"
        )
    files = sorted(out.rglob("*.parquet"))
    stored = {"ds" in pq.read_schema(f).names for f in files}
    assert files and stored == {write_partition_columns}
    assert_exactly_the_source(read_table(str(out)), source)


def test_spark_markers_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    source = source_frame()
    root = tmp_path / "t"
    pq.write_to_dataset(
        source.to_arrow(),
        root,
        partition_cols=["ds"],
        basename_template="part-{i}-c000.snappy.parquet",
    )
    (root / "_SUCCESS").write_text("")
    (root / "_committed_8273645").write_text('{"added":[]}')
    (root / "_started_8273645").write_text("")
    for part in sorted(root.rglob("part-*.parquet")):
        (part.parent / f".{part.name}.crc").write_bytes(b"crc")
        # A half-written file of an aborted task (Spark's _temporary) and a hidden copy.
        (part.parent / "_temporary" / "0").mkdir(parents=True, exist_ok=True)
        (part.parent / "_temporary" / "0" / part.name).write_bytes(part.read_bytes()[:40])
        (part.parent / f".{part.name}").write_bytes(b"not parquet")
    (root / "ds=2026-01-01" / "_SUCCESS").write_text("")
    table = Table.open(str(root))
    assert all(Path(f.path).name.startswith("part-") for f in table.files())
    assert_exactly_the_source(read_table(str(root)), source)


def test_stored_partition_column_that_disagrees_is_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    source_frame().write_parquet(tmp_path / "t", partition_by=["ds"])
    # A file moved under the wrong folder: its ds column says 2026-01-03, its folder 01-01.
    wrong = tmp_path / "t" / "ds=2026-01-01" / "moved.parquet"
    shutil.copy(next((tmp_path / "t" / "ds=2026-01-03").glob("*.parquet")), wrong)
    table = Table.open(str(tmp_path / "t"))
    with pytest.raises(StorageError) as caught:
        table.plan_splits(1000)
    message = str(caught.value)
    assert str(wrong) in message
    assert "partition column 'ds'" in message and "ds=2026-01-01" in message
    assert "'2026-01-03'" in message
    # Pruning the bad partition away plans fine: only files that are read are checked.
    plan = table.plan_splits(1000, partition_filter=parse_filter("ds > '2026-01-01'", "pf"))
    assert plan.num_rows == 2000


def test_stored_partition_column_of_another_type_compares_as_that_type(tmp_path: Path) -> None:
    """``h=03`` over an int column holding 3 agrees; dpp delivers the folder's '03'."""
    root = tmp_path / "t"
    for hour in (3, 4):
        (root / f"h={hour:02d}").mkdir(parents=True)
        data = pa.table(
            {
                "row_id": pa.array(range(hour * 10, hour * 10 + 10), pa.int64()),
                "h": pa.array([hour] * 10, pa.int32()),
                "day": pa.array([datetime.date(2026, 1, hour)] * 10),
            }
        )
        pq.write_table(data, root / f"h={hour:02d}" / "f.parquet", row_group_size=4)
    table = Table.open(str(root))
    assert table.schema.field("h").type == pa.string()
    rows = [
        b
        for s in table.plan_splits(5).splits
        for b in read_split(
            s, filesystem=table.filesystem, columns=["row_id", "h"], row_filter=None, batch_rows=3
        )
    ]
    got = pa.Table.from_batches(rows)
    assert sorted(zip(got["row_id"].to_pylist(), got["h"].to_pylist(), strict=True)) == [
        (r, f"{r // 10:02d}") for r in [*range(30, 40), *range(40, 50)]
    ]


def test_stored_partition_column_without_statistics_is_read_to_check(tmp_path: Path) -> None:
    root = tmp_path / "t"
    good = pa.table({"row_id": pa.array(range(10), pa.int64()), "ds": ["2026-01-01"] * 10})
    (root / "ds=2026-01-01").mkdir(parents=True)
    pq.write_table(good, root / "ds=2026-01-01" / "f.parquet", write_statistics=False)
    assert Table.open(str(root)).plan_splits(100).num_rows == 10
    bad = good.set_column(1, "ds", pa.array(["2026-01-01"] * 9 + ["2026-01-09"]))
    pq.write_table(bad, root / "ds=2026-01-01" / "f.parquet", write_statistics=False)
    with pytest.raises(StorageError, match=r"max '2026-01-09'"):
        Table.open(str(root)).plan_splits(100)
