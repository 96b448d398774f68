"""Reading splits: exact rows, projection, exact filtering, bounded batches, partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from storage_helpers import numbered_table, write_file

from storage.errors import FilterError, SplitChangedError, StorageError
from storage.filters import parse_filter
from storage.reader import read_split
from storage.table import SplitInfo, Table


@pytest.fixture
def table(tmp_path: Path) -> Table:
    """One partition, one file of 100 rows in row groups of 10; row_id = row index."""
    write_file(tmp_path / "t" / "ds=2026-01-05" / "f.parquet", numbered_table(0, 100), [10] * 10)
    return Table.open(str(tmp_path / "t"))


def split_of(table: Table, row_groups: tuple[int, ...]) -> SplitInfo:
    [split] = [s for s in table.plan_splits(10).splits if s.row_groups == row_groups[:1]]
    return SplitInfo(
        split_id="test",
        path=split.path,
        file_size=split.file_size,
        row_groups=row_groups,
        num_rows=10 * len(row_groups),
        partition=split.partition,
    )


def read_all(
    table: Table,
    split: SplitInfo,
    columns: list[str],
    row_filter: str | None = None,
    batch_rows: int = 1000,
) -> tuple[pa.Table, list[pa.RecordBatch]]:
    f = parse_filter(row_filter, "row_filter") if row_filter else None
    batches = list(
        read_split(
            split,
            filesystem=table.filesystem,
            columns=columns,
            row_filter=f,
            batch_rows=batch_rows,
        )
    )
    return pa.Table.from_batches(batches, schema=batches[0].schema) if batches else pa.table(
        {}
    ), batches


def test_reads_exactly_the_split_row_groups(table: Table) -> None:
    result, _ = read_all(table, split_of(table, (2, 3, 4)), ["row_id"])
    assert result.column("row_id").to_pylist() == list(range(20, 50))


def test_row_groups_come_back_in_file_order(table: Table) -> None:
    # Regression: pyarrow's make_fragment(row_groups=[7, 8]) reads group 8 before 7.
    result, _ = read_all(table, split_of(table, (7, 8)), ["row_id"], None, 4)
    assert result.column("row_id").to_pylist() == list(range(70, 90))


def test_every_planned_split_together_reads_every_row_once(table: Table) -> None:
    row_ids = [
        b.column(0)
        for s in table.plan_splits(35).splits
        for b in read_split(
            s, filesystem=table.filesystem, columns=["row_id"], row_filter=None, batch_rows=16
        )
    ]
    assert pa.chunked_array(row_ids).to_pylist() == list(range(100))


def test_projection_yields_only_requested_columns_in_order(table: Table) -> None:
    result, batches = read_all(table, split_of(table, (0,)), ["s", "ds", "row_id"])
    assert all(b.schema.names == ["s", "ds", "row_id"] for b in batches)
    assert result.column("row_id").to_pylist() == list(range(10))


def test_partition_column_is_materialized_as_string(table: Table) -> None:
    result, _ = read_all(table, split_of(table, (5, 6)), ["ds"])
    assert result.schema.field("ds").type == pa.string()
    assert result.column("ds").to_pylist() == ["2026-01-05"] * 20


def test_row_filter_is_exact_and_may_use_unprojected_columns(table: Table) -> None:
    text = "(x BETWEEN 30 AND 150 AND y > 0.4) OR s IN ('c') OR row_id = 99"
    result, batches = read_all(table, split_of(table, tuple(range(10))), ["row_id"], text, 7)
    row_id = np.arange(100)
    x, y, s = row_id * 2, (row_id % 7) / 7.0, np.array(["a", "b", "c"])[row_id % 3]
    expected = row_id[((x >= 30) & (x <= 150) & (y > 0.4)) | (s == "c") | (row_id == 99)]
    assert result.column("row_id").to_pylist() == expected.tolist()
    assert all(b.schema.names == ["row_id"] for b in batches)


def test_row_filter_on_partition_column(table: Table) -> None:
    split = split_of(table, (0, 1))
    kept, _ = read_all(table, split, ["row_id"], "ds = '2026-01-05' AND row_id < 3")
    assert kept.column("row_id").to_pylist() == [0, 1, 2]
    _, none = read_all(table, split, ["row_id"], "ds > '2026-01-05'")
    assert none == []


@pytest.mark.parametrize("batch_rows", [1, 3, 10, 64])
def test_batches_never_exceed_batch_rows(table: Table, batch_rows: int) -> None:
    result, batches = read_all(table, split_of(table, (1, 2, 3, 4)), ["row_id"], None, batch_rows)
    assert all(0 < b.num_rows <= batch_rows for b in batches)
    assert result.column("row_id").to_pylist() == list(range(10, 50))


def test_changed_file_size_is_refused_naming_the_path(table: Table, tmp_path: Path) -> None:
    split = split_of(table, (0,))
    write_file(Path(split.path), numbered_table(0, 50), [50])
    with pytest.raises(SplitChangedError) as info:
        list(
            read_split(
                split, filesystem=table.filesystem, columns=["x"], row_filter=None, batch_rows=5
            )
        )
    assert f"file {split.path!r} is " in str(info.value)
    assert "it was rewritten: start a new session (or replan)" in str(info.value)


def test_deleted_file_is_refused(table: Table) -> None:
    split = split_of(table, (0,))
    Path(split.path).unlink()
    with pytest.raises(SplitChangedError, match="no longer exists"):
        list(
            read_split(
                split, filesystem=table.filesystem, columns=["x"], row_filter=None, batch_rows=5
            )
        )


def test_unknown_columns_are_named(table: Table) -> None:
    split = split_of(table, (0,))
    with pytest.raises(StorageError, match=r"unknown column\(s\) \['nope'\]"):
        read_all(table, split, ["row_id", "nope"])
    with pytest.raises(FilterError, match="unknown column 'zz'"):
        read_all(table, split, ["row_id"], "zz > 1")
    with pytest.raises(FilterError, match="'s > 1' does not fit the table's column types"):
        read_all(table, split, ["row_id"], "s > 1")


def test_batch_rows_must_be_positive(table: Table) -> None:
    with pytest.raises(ValueError, match="batch_rows must be >= 1"):
        read_all(table, split_of(table, (0,)), ["row_id"], None, 0)


@pytest.mark.parametrize(
    "text",
    [
        "x > 1",
        "y = 'b' OR x IS NULL",
        "NOT (x > 1)",
        "x IN (1, 3) AND y IS NOT NULL",
        "TRUE",
        "FALSE",
    ],
)
def test_row_mask_keeps_exactly_the_rows_the_expression_keeps(text: str) -> None:
    from storage.reader import filter_rows, row_mask

    batch = pa.record_batch({"x": [1, None, 3, 4, None], "y": ["a", "b", None, "b", "b"]})
    f = parse_filter(text, "row_filter")
    want = batch.filter(f.expression)
    keep = row_mask(batch, f)
    assert keep is not None and keep.null_count == 0 and len(keep) == batch.num_rows
    assert batch.filter(keep).equals(want)
    assert filter_rows(batch, f, ["y"]).equals(want.select(["y"]))
    assert len(row_mask(batch.slice(0, 0), f) or []) == 0
