"""A real Iceberg table for tests: pyiceberg's SqlCatalog on sqlite, Parquet files written by
pyiceberg itself under a temporary warehouse, configured the way production is (pyiceberg's
``PYICEBERG_CATALOG__<NAME>__*`` environment), so that processes started afterwards (a
cluster's master and workers) find the same catalog."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.table import Table

CATALOG = "dpptest"
DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")


def configure_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    """Points catalog ``dpptest`` at a sqlite file and a warehouse folder under ``tmp_path``
    (environment variables, so child processes inherit them) and creates namespace ``db``."""
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    prefix = f"PYICEBERG_CATALOG__{CATALOG.upper()}__"
    monkeypatch.setenv(prefix + "TYPE", "sql")
    monkeypatch.setenv(prefix + "URI", f"sqlite:///{warehouse}/catalog.db")
    monkeypatch.setenv(prefix + "WAREHOUSE", f"file://{warehouse}")
    catalog = load_catalog(
        CATALOG,
        type="sql",
        uri=f"sqlite:///{warehouse}/catalog.db",
        warehouse=f"file://{warehouse}",
    )
    catalog.create_namespace("db")
    return catalog


def rows(first: int, count: int, days: Sequence[str] = DAYS) -> pa.Table:
    """``count`` rows with unique ``row_id`` from ``first``, a ``ds`` day and values derived
    from the id (``price`` float, ``clicks`` int, ``tag`` string)."""
    row_id = np.arange(first, first + count, dtype=np.int64)
    return pa.table(
        {
            "row_id": row_id,
            "ds": pa.array([days[int(r) % len(days)] for r in row_id], pa.string()),
            "price": (row_id % 97).astype(np.float64) / 4.0,
            "clicks": (row_id % 11).astype(np.int64),
            "tag": pa.array([f"t{int(r) % 5}" for r in row_id], pa.string()),
        }
    )


def create_events(catalog: Catalog, name: str = "db.events", row_group_rows: int = 250) -> Table:
    """An empty table of :func:`rows`' schema, partitioned by ``ds`` (identity)."""
    # Small row groups, so that a file holds several and splits are runs of them.
    table = catalog.create_table(
        name,
        schema=rows(0, 1).schema,
        properties={"write.parquet.row-group-limit": str(row_group_rows)},
    )
    with table.update_spec() as spec:
        spec.add_identity("ds")
    return table


def append(table: Table, data: pa.Table) -> int:
    """Commits ``data`` (one file per day) and returns the new snapshot's id."""
    table.append(data)
    snapshot = table.current_snapshot()
    if snapshot is None:
        raise RuntimeError("append committed no snapshot")
    return snapshot.snapshot_id


def renamed(data: pa.Table, names: dict[str, str]) -> pa.Table:
    """``data`` with columns renamed (old -> new), as a writer after a rename sends it."""
    return data.rename_columns([names.get(n, n) for n in data.column_names])


def commit_position_delete(table: Table, folder: Path, row: int) -> str:
    """Commits a v2 position delete file dropping row ``row`` of the table's first data file
    (pyiceberg writes no delete files itself, but reads and applies them: its own scan then
    skips the row). Returns the delete file's URI."""
    import pyarrow.parquet as pq
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record

    target = min(task.file.file_path for task in table.scan().plan_files())
    path = folder / "position-delete-0.parquet"
    pq.write_table(pa.table({"file_path": [target], "pos": pa.array([row], pa.int64())}), path)
    deletes = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=f"file://{path}",
        file_format=FileFormat.PARQUET,
        partition=Record(),
        record_count=1,
        file_size_in_bytes=path.stat().st_size,
    )
    deletes.spec_id = table.metadata.default_spec_id
    with (
        table.transaction() as transaction,
        transaction.update_snapshot().fast_append() as commit,
    ):
        commit.append_data_file(deletes)
    return f"file://{path}"
