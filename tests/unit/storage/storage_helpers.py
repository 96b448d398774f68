"""Helpers shared by the storage unit tests: small Parquet tables written to tmp_path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def numbered_table(first_row: int, num_rows: int) -> pa.Table:
    """Rows with a unique ``row_id`` and a few columns derived from it."""
    row_id = np.arange(first_row, first_row + num_rows, dtype=np.int64)
    return pa.table(
        {
            "row_id": row_id,
            "x": row_id * 2,
            "y": (row_id % 7).astype(np.float64) / 7.0,
            "s": pa.array(np.array(["a", "b", "c"])[row_id % 3]),
        }
    )


def write_file(path: Path, table: pa.Table, row_group_sizes: Sequence[int]) -> None:
    """Writes ``table`` to ``path`` with exactly the given row-group sizes."""
    if sum(row_group_sizes) != table.num_rows:
        raise ValueError("row_group_sizes must add up to the table's rows")
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, table.schema) as writer:
        offset = 0
        for size in row_group_sizes:
            writer.write_table(table.slice(offset, size), row_group_size=size)
            offset += size


def write_partitioned(
    root: Path, days: Sequence[str], files_per_day: int, rows_per_file: int, row_group_rows: int
) -> list[Path]:
    """Writes ``root/ds=<day>/part-<i>.parquet``; row_id runs on across files in path order."""
    paths = []
    first_row = 0
    for day in days:
        for part in range(files_per_day):
            path = root / f"ds={day}" / f"part-{part:05d}.parquet"
            sizes = [row_group_rows] * (rows_per_file // row_group_rows)
            if rows_per_file % row_group_rows:
                sizes.append(rows_per_file % row_group_rows)
            write_file(path, numbered_table(first_row, rows_per_file), sizes)
            paths.append(path)
            first_row += rows_per_file
    return paths
