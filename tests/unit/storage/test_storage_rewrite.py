"""``dpp cluster``: rows of a key made adjacent per partition, same rows, files and row groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from storage import GenConfig, StorageError, generate_table
from storage.rewrite import cluster_order, cluster_table

CONFIG = GenConfig(
    rows=6_000,
    days=2,
    dense=2,
    sparse=4,
    user_sparse_share=0.75,
    rows_per_session=10.0,
    row_group_rows=1_000,
    rows_per_file=2_000,
    max_list_len=12,
    seed=3,
    clustered=False,
)


def read(uri: str) -> pa.Table:
    return ds.dataset(uri, partitioning="hive").to_table()


def test_cluster_order_groups_keys_by_first_occurrence_nulls_last() -> None:
    keys = pa.array([5, None, 3, 5, 3, 7, None, 5])
    assert cluster_order(keys).to_pylist() == [0, 3, 7, 2, 4, 5, 1, 6]
    assert cluster_order(pa.chunked_array([["b", "a"], ["b"]])).to_pylist() == [0, 2, 1]


def test_clustering_keeps_rows_files_and_row_groups(tmp_path: Path) -> None:
    source, dest = str(tmp_path / "raw"), str(tmp_path / "clustered")
    generate_table(source, CONFIG)
    before = read(source)
    sessions = before.column("session_id").to_numpy()
    assert (np.diff(sessions) != 0).sum() > 3 * len(np.unique(sessions))  # interleaved
    summary = cluster_table(source, dest, "session_id")
    after = read(dest)
    assert summary.rows == 6_000 and summary.files == 4 and summary.partitions == 2
    assert summary.bytes < summary.source_bytes
    assert sorted(after.column("row_id").to_pylist()) == list(range(6_000))
    key = ["row_id"]
    assert after.sort_by([(k, "ascending") for k in key]).equals(
        before.sort_by([(k, "ascending") for k in key])
    )
    for path in sorted(Path(dest).rglob("*.parquet")):
        rel = path.relative_to(dest)
        src_meta = pq.ParquetFile(Path(source) / rel).metadata
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows == src_meta.num_rows
        assert meta.row_group(0).num_rows == src_meta.row_group(0).num_rows
        group = meta.row_group(0)
        columns = [group.column(i) for i in range(group.num_columns)]
        lists = [c for c in columns if c.path_in_schema.startswith("sparse_")]
        assert len(lists) == 4
        assert all("RLE_DICTIONARY" not in c.encodings for c in lists)  # zstd sees the repeats
    for ds_value in ("2026-01-01", "2026-01-02"):
        part = after.filter(pa.compute.equal(after.column("ds"), ds_value))
        ids = part.column("session_id").to_numpy()
        changes = int((np.diff(ids) != 0).sum())
        assert changes == len(np.unique(ids)) - 1  # each session is one run


def test_clustering_history_like_lists_halves_the_bytes(tmp_path: Path) -> None:
    """The storage target of RecD on a small table: 10 rows per session, half the features
    user-side with history-like lists (up to 100 ids), clustered at least 2x smaller."""
    source, dest = str(tmp_path / "raw"), str(tmp_path / "clustered")
    config = GenConfig(
        rows=20_000,
        days=1,
        dense=2,
        sparse=8,
        rows_per_session=10.0,
        max_list_len=30,
        max_user_list_len=100,
        row_group_rows=10_000,
        rows_per_file=20_000,
        clustered=False,
    )
    generate_table(source, config)
    summary = cluster_table(source, dest, "session_id")
    assert summary.source_bytes / summary.bytes > 2.0
    # List dictionaries (pyarrow's default) hide most repeats from zstd.
    with_dictionaries = cluster_table(
        source, str(tmp_path / "dictionaries"), "session_id", dictionary_lists=True
    )
    assert with_dictionaries.bytes > 1.2 * summary.bytes
    meta = pq.ParquetFile(next((tmp_path / "dictionaries").rglob("*.parquet"))).metadata
    sparse_0 = meta.row_group(0).column(5)
    assert sparse_0.path_in_schema == "sparse_0.list.element"
    assert "RLE_DICTIONARY" in sparse_0.encodings


def test_cluster_refuses_a_used_destination_and_unknown_keys(tmp_path: Path) -> None:
    source = str(tmp_path / "raw")
    generate_table(source, GenConfig(rows=100, days=1, dense=1, sparse=1, row_group_rows=50))
    with pytest.raises(StorageError, match="already holds files"):
        cluster_table(source, source, "session_id")
    with pytest.raises(StorageError, match=r"clustering .* by 'nope': no such column"):
        cluster_table(source, str(tmp_path / "out"), "nope")


def test_unclustered_gen_keeps_row_ids_in_order(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    generate_table(uri, CONFIG)
    first = pq.read_table(sorted(Path(uri).rglob("*.parquet"))[0])
    assert first.column("row_id").to_pylist() == list(range(2_000))
