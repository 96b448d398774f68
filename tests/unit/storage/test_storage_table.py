"""Table listing, partition pruning, statistics pruning and split planning."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from storage_helpers import numbered_table, write_file, write_partitioned

from storage.errors import FilterError, StorageError, TableNotFoundError
from storage.filters import parse_filter
from storage.reader import read_split
from storage.table import Plan, SplitInfo, Table, split_id_of

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


@pytest.fixture
def table_root(tmp_path: Path) -> Path:
    """3 days x 2 files x 100 rows, row groups of 10 rows; row_id 0..599 in path order."""
    write_partitioned(tmp_path / "t", DAYS, files_per_day=2, rows_per_file=100, row_group_rows=10)
    return tmp_path / "t"


def relative(paths: list[str], root: Path) -> list[str]:
    return [str(Path(p).relative_to(root)) for p in paths]


def test_open_lists_files_schema_and_partition_columns(table_root: Path) -> None:
    table = Table.open(str(table_root))
    assert table.partition_columns == ["ds"]
    assert table.schema.names == ["row_id", "x", "y", "s", "ds"]
    assert table.schema.field("ds").type == pa.string()
    files = table.files()
    assert relative([f.path for f in files], table_root) == [
        f"ds={day}/part-{i:05d}.parquet" for day in DAYS for i in range(2)
    ]
    assert all(f.etag == "" and f.size > 0 for f in files)
    assert files[0].partition == {"ds": "2026-01-01"}


def test_open_accepts_file_uri_and_skips_hidden_and_non_parquet(table_root: Path) -> None:
    (table_root / "_SUCCESS").write_text("")
    (table_root / "README.md").write_text("not data")
    (table_root / "ds=2026-01-01" / ".part-00000.parquet.crc").write_text("")
    (table_root / "_temporary").mkdir()
    write_file(table_root / "_temporary" / "x.parquet", numbered_table(0, 5), [5])
    table = Table.open(f"file://{table_root}")
    assert len(table.files()) == 6


def test_open_missing_uri_raises_table_not_found(tmp_path: Path) -> None:
    with pytest.raises(TableNotFoundError, match="nothing exists there; check the URI"):
        Table.open(str(tmp_path / "absent"))


def test_open_folder_without_parquet_says_so_without_describing_it(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TableNotFoundError, match=r"holds no file ending in \.parquet") as info:
        Table.open(str(tmp_path))
    # No count, no name of what the folder holds (issue 13: "found 238565 file(s)").
    assert "1" not in str(info.value).replace(str(tmp_path), "")
    assert "notes" not in str(info.value)


def test_open_rejects_inconsistent_partition_folders(table_root: Path) -> None:
    write_file(table_root / "stray.parquet", numbered_table(0, 5), [5])
    with pytest.raises(StorageError, match="inconsistent partition folders"):
        Table.open(str(table_root))


def test_plan_is_stable_across_plans_and_opens(table_root: Path) -> None:
    first = Table.open(str(table_root)).plan_splits(25)
    second = Table.open(str(table_root)).plan_splits(25)
    assert first.splits == second.splits
    ids = [s.split_id for s in first.splits]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


def test_split_id_depends_on_every_part_of_the_key() -> None:
    base = split_id_of("/t/a.parquet", 100, "", 0, 1)
    assert base == split_id_of("/t/a.parquet", 100, "", 0, 1)
    others = {
        split_id_of("/t/b.parquet", 100, "", 0, 1),
        split_id_of("/t/a.parquet", 101, "", 0, 1),
        split_id_of("/t/a.parquet", 100, "etag", 0, 1),
        split_id_of("/t/a.parquet", 100, "", 0, 2),
        split_id_of("/t/a.parquet", 100, "", 1, 1),
    }
    assert base not in others and len(others) == 5


def test_greedy_packing_of_equal_row_groups(table_root: Path) -> None:
    plan = Table.open(str(table_root)).plan_splits(25)
    first_file = [s for s in plan.splits if s.path == plan.splits[0].path]
    assert [s.row_groups for s in first_file] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [s.num_rows for s in first_file] == [20] * 5
    assert (plan.num_files, plan.num_row_groups, plan.num_rows) == (6, 60, 600)
    assert plan.num_partitions == 3
    assert len(plan.splits) == 30


def check_split_invariants(plan: Plan, target: int, row_group_rows: dict[str, list[int]]) -> None:
    """Sizes bounded, runs contiguous, every row group of every file exactly once."""
    seen: dict[str, list[int]] = {}
    for split in plan.splits:
        sizes = row_group_rows[split.path]
        groups = list(split.row_groups)
        assert groups == list(range(groups[0], groups[-1] + 1)), "runs are contiguous"
        assert split.num_rows == sum(sizes[g] for g in groups)
        assert split.num_rows <= target or len(groups) == 1
        seen.setdefault(split.path, []).extend(groups)
    assert seen == {path: list(range(len(sizes))) for path, sizes in row_group_rows.items()}
    keys = [(s.path, s.row_groups[0]) for s in plan.splits]
    assert keys == sorted(keys), "files by path, then first row group"


@pytest.mark.parametrize("target", [1, 7, 25, 40, 1000])
def test_split_sizes_respect_target_and_files(tmp_path: Path, target: int) -> None:
    layout = {
        "a.parquet": [10, 10, 50, 5, 5, 5, 30],
        "b.parquet": [3] * 20,
        "c.parquet": [100],
    }
    first_row = 0
    for name, sizes in layout.items():
        write_file(tmp_path / name, numbered_table(first_row, sum(sizes)), sizes)
        first_row += sum(sizes)
    plan = Table.open(str(tmp_path)).plan_splits(target)
    check_split_invariants(plan, target, {str(tmp_path / k): v for k, v in layout.items()})
    if target == 40:
        a = [s.row_groups for s in plan.splits if s.path.endswith("a.parquet")]
        assert a == [(0, 1), (2,), (3, 4, 5), (6,)]


def test_partition_filter_prunes_exact_files(table_root: Path) -> None:
    table = Table.open(str(table_root))
    kept = table.files(parse_filter("ds >= '2026-01-02'", "partition_filter"))
    assert relative([f.path for f in kept], table_root) == [
        "ds=2026-01-02/part-00000.parquet",
        "ds=2026-01-02/part-00001.parquet",
        "ds=2026-01-03/part-00000.parquet",
        "ds=2026-01-03/part-00001.parquet",
    ]
    only = table.files(parse_filter("ds IN ('2026-01-01', '2026-01-09')", "partition_filter"))
    assert {f.partition["ds"] for f in only} == {"2026-01-01"} and len(only) == 2
    plan = table.plan_splits(1000, partition_filter=parse_filter("ds = '2026-01-03'", "p"))
    assert {s.partition["ds"] for s in plan.splits} == {"2026-01-03"}
    assert (plan.num_files, plan.num_partitions, plan.num_rows) == (2, 1, 200)


def test_partition_filter_on_file_column_names_partition_columns(table_root: Path) -> None:
    table = Table.open(str(table_root))
    with pytest.raises(FilterError) as info:
        table.files(parse_filter("x > 3", "partition_filter"))
    assert str(info.value) == (
        "partition_filter: 'x > 3' refers to unknown column 'x'; available columns: ds"
    )


def test_row_filter_prunes_row_groups_by_statistics(tmp_path: Path) -> None:
    # row_id (and x = 2 * row_id) ranges are disjoint per row group: group g holds 10g..10g+9.
    write_file(tmp_path / "t" / "ds=d1" / "f.parquet", numbered_table(0, 100), [10] * 10)
    table = Table.open(str(tmp_path / "t"))

    def kept(text: str, target: int = 1000) -> list[tuple[int, ...]]:
        plan = table.plan_splits(target, row_filter=parse_filter(text, "row_filter"))
        return [s.row_groups for s in plan.splits]

    assert kept("row_id >= 25 AND row_id < 42") == [(2, 3, 4)]
    assert kept("x < 20 OR x >= 180") == [(0,), (9,)]  # a pruned gap ends a run
    assert kept("row_id IN (3, 77)") == [(0,), (7,)]
    assert kept("row_id BETWEEN 55 AND 64 AND y >= 0") == [(5, 6)]
    assert kept("row_id > 1000") == []
    assert kept("ds = 'd2'") == []  # partition columns are known via the fragment
    assert kept("ds = 'd1' AND row_id < 10") == [(0,)]
    assert kept("s = 'a'") == [tuple(range(10))]  # no usable statistics: nothing pruned
    assert kept("row_id >= 0", target=30) == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]


def test_row_filter_type_errors_surface_at_planning(table_root: Path) -> None:
    table = Table.open(str(table_root))
    with pytest.raises(FilterError, match=r"^row_filter: 'ds = 1' does not fit"):
        table.plan_splits(10, row_filter=parse_filter("ds = 1", "row_filter"))
    with pytest.raises(FilterError, match="unknown column 'nope'"):
        table.plan_splits(10, row_filter=parse_filter("nope = 1", "row_filter"))


def test_plan_rejects_bad_arguments(table_root: Path) -> None:
    table = Table.open(str(table_root))
    with pytest.raises(ValueError, match="target_split_rows must be >= 1, got 0"):
        table.plan_splits(0)
    with pytest.raises(ValueError, match="max_concurrency must be >= 1"):
        table.plan_splits(10, max_concurrency=0)


def test_plan_names_a_file_that_vanished_since_open(table_root: Path) -> None:
    table = Table.open(str(table_root))
    victim = table_root / "ds=2026-01-02" / "part-00001.parquet"
    victim.unlink()
    with pytest.raises(StorageError, match=r"part-00001\.parquet' failed .*reopen the table"):
        table.plan_splits(10)


class _RendezvousHandler(pafs.FSSpecHandler):  # type: ignore[misc]
    """Counts footer opens per thread; the first two must be in flight at the same time.

    If planning read footers one after another, the first open would wait at the barrier
    alone until it times out, breaking it, and the test fails.
    """

    def __init__(self, fs: Any) -> None:
        super().__init__(fs)
        self.lock = threading.Lock()
        self.threads: set[int] = set()
        self.opens = 0
        self.barrier = threading.Barrier(2, timeout=10)

    def open_input_file(self, path: str) -> Any:
        with self.lock:
            self.opens += 1
            self.threads.add(threading.get_ident())
            rendezvous = self.opens <= 2
        if rendezvous:
            self.barrier.wait()
        return super().open_input_file(path)


def test_planning_reads_footers_concurrently(tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(300):
        pq.write_table(numbered_table(i * 4, 4), root / f"part-{i:05d}.parquet", row_group_size=2)
    opened = Table.open(str(root))
    handler = _RendezvousHandler(fsspec.filesystem("file"))
    table = Table(
        opened.uri,
        pafs.PyFileSystem(handler),
        opened.root,
        opened.files(),
        opened.schema,
        opened.partition_columns,
    )
    plan = table.plan_splits(4, max_concurrency=8)
    assert not handler.barrier.broken
    assert handler.opens == 300
    assert len(handler.threads) > 1
    assert (len(plan.splits), plan.num_rows) == (300, 1200)


def test_memory_filesystem_table(tmp_path: Path) -> None:
    uri = f"memory://dpp-test-{uuid.uuid4().hex}/t"
    memory = fsspec.filesystem("memory")
    for day in ("2026-01-01", "2026-01-02"):
        with memory.open(f"{uri}/ds={day}/part-00000.parquet", "wb") as sink:
            pq.write_table(numbered_table(0, 30), sink, row_group_size=10)
    table = Table.open(uri)
    assert table.partition_columns == ["ds"]
    plan = table.plan_splits(20, partition_filter=parse_filter("ds = '2026-01-02'", "p"))
    assert [s.row_groups for s in plan.splits] == [(0, 1), (2,)]
    assert all(isinstance(s, SplitInfo) and "ds=2026-01-02" in s.path for s in plan.splits)
    assert plan.splits == table.plan_splits(20, parse_filter("ds = '2026-01-02'", "p")).splits
    batches = [
        b
        for s in plan.splits
        for b in read_split(
            s, filesystem=table.filesystem, columns=["row_id", "ds"], row_filter=None, batch_rows=8
        )
    ]
    assert pa.Table.from_batches(batches).column("row_id").to_pylist() == list(range(30))
    memory.rm(uri.split("://", 1)[1].split("/", 1)[0], recursive=True)


def test_single_file_uri_is_a_table_without_partitions(tmp_path: Path) -> None:
    write_file(tmp_path / "one.parquet", numbered_table(0, 30), [10, 10, 10])
    memory_uri = f"memory://dpp-one-{uuid.uuid4().hex}/one.parquet"
    with fsspec.filesystem("memory").open(memory_uri, "wb") as sink:
        pq.write_table(numbered_table(0, 30), sink, row_group_size=10)
    for uri in (str(tmp_path / "one.parquet"), memory_uri):
        table = Table.open(uri)
        assert table.partition_columns == []
        plan = table.plan_splits(20)
        assert [s.row_groups for s in plan.splits] == [(0, 1), (2,)]
        assert plan.num_partitions == 1 and plan.splits[0].partition == {}
