"""Remote read settings (storage/remote.py): range coalescing, the column chunks a split needs,
and every read mode giving the rows of a direct pyarrow read, on fsspec's in-memory file
system (no sockets; the S3 path through a delaying proxy is tests/integration/
test_remote_storage.py)."""

from __future__ import annotations

import threading
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.readahead import ReadAhead
from storage.reader import read_split
from storage.remote import (
    CachedFooter,
    FileIdentity,
    FooterCache,
    RangeFile,
    ReadOptions,
    coalesce,
    column_chunk_ranges,
)
from storage.table import Table


def test_coalesce_merges_within_the_hole_limit_and_caps_the_range() -> None:
    ranges = [(0, 100), (150, 300), (2000, 2100), (2100, 2500)]
    assert coalesce(ranges, hole_size_limit=50, range_size_limit=10_000) == [
        (0, 300, 250),
        (2000, 2500, 500),
    ]
    assert coalesce(ranges, hole_size_limit=49, range_size_limit=10_000) == [
        (0, 100, 100),
        (150, 300, 150),
        (2000, 2500, 500),
    ]
    # The size cap keeps 2000-2100 and 2100-2500 apart; a range above the cap stays whole.
    assert coalesce(ranges, hole_size_limit=5000, range_size_limit=400) == [
        (0, 300, 250),
        (2000, 2100, 100),
        (2100, 2500, 400),
    ]


def _table(rows: int) -> pa.Table:
    ids = np.arange(rows, dtype=np.int64)
    return pa.table(
        {
            "row_id": ids,
            "a": ids * 3,
            "s": pa.array([f"v{i % 13}" for i in ids]),
            "ids": pa.array([list(range(i % 5)) for i in ids], pa.list_(pa.int64())),
        }
    )


def _memory_table(rows: int = 10_000, row_group_rows: int = 1000) -> tuple[str, pa.Table]:
    fs = fsspec.filesystem("memory")
    root = f"memory://remote-{uuid.uuid4().hex}"
    table = _table(rows)
    with fs.open(f"{root}/ds=2026-01-01/part-0.parquet", "wb") as f:
        pq.write_table(table, f, row_group_size=row_group_rows)
    return root, table


def test_column_chunk_ranges_cover_exactly_the_projected_chunks() -> None:
    root, _ = _memory_table()
    fs = fsspec.filesystem("memory")
    path = fs.find(root)[0]
    metadata = pq.read_metadata(fs.open(path))
    ranges = column_chunk_ranges(metadata, [2, 3], ["a", "ids"])
    assert len(ranges) == 4  # two row groups x (a, ids.list.element)
    chunks = [
        metadata.row_group(rg).column(i) for rg in (2, 3) for i in (1, 3)
    ]  # leaves: row_id, a, s, ids.list.element
    assert sorted(r[1] - r[0] for r in ranges) == sorted(c.total_compressed_size for c in chunks)
    assert ranges == sorted(ranges)


@pytest.mark.parametrize(
    "options",
    [
        ReadOptions(),
        ReadOptions(hole_size_limit_bytes=1, range_size_limit_bytes=64, readahead_bytes=1),
        ReadOptions(mode="pre_buffer", lazy=True, prefetch_limit=1),
        ReadOptions(mode="readahead", block_size_bytes=4096),
    ],
    ids=["prefetch", "prefetch-tiny-ranges", "pre_buffer", "readahead"],
)
def test_every_read_mode_gives_the_rows_of_a_direct_read(options: ReadOptions) -> None:
    root, table = _memory_table()
    opened = Table.open(root)
    plan = opened.plan_splits(2500)
    assert len(plan.splits) == 5  # two row groups each
    rows = []
    for split in plan.splits:
        for batch in read_split(
            split,
            filesystem=opened.filesystem,
            columns=["row_id", "ids", "ds"],
            row_filter=None,
            batch_rows=700,
            read_options=options,
        ):
            assert batch.num_rows <= 700
            rows.append(batch)
    got = pa.Table.from_batches(rows)
    assert got.column("row_id").to_pylist() == table.column("row_id").to_pylist()
    assert got.column("ids").to_pylist() == table.column("ids").to_pylist()
    assert set(got.column("ds").to_pylist()) == {"2026-01-01"}


def test_range_file_serves_reads_from_prefetched_parts_and_releases_them() -> None:
    fs = fsspec.filesystem("memory")
    path = f"/range-{uuid.uuid4().hex}"
    payload = bytes(range(256)) * 64  # 16 KiB
    fs.pipe_file(path, payload)
    calls: list[tuple[int, int]] = []
    original = fs.cat_file

    def counting(p: str, start: int, end: int) -> bytes:
        calls.append((start, end))
        data: bytes = original(p, start=start, end=end)
        return data

    fs.cat_file = counting  # type: ignore[method-assign]
    options = ReadOptions(footer_bytes=1024, hole_size_limit_bytes=100)
    file = RangeFile(fs, path, len(payload), options)
    assert calls == [(len(payload) - 1024, len(payload))]  # the footer, at once
    file.prefetch([(0, 1000), (1050, 2000), (8000, 9000)])
    assert calls[1:] == [(0, 2000), (8000, 9000)]  # coalesced across the 50-byte hole
    file.seek(1050)
    assert bytes(file.read(950)) == payload[1050:2000]
    file.seek(0)
    assert bytes(file.read(1000)) == payload[:1000]
    file.seek(8000)
    assert bytes(file.read(1000)) == payload[8000:9000]
    file.seek(4000)
    assert bytes(file.read(10)) == payload[4000:4010]  # never announced: one ranged read
    assert calls[3:] == [(4000, 4010)]
    file.seek(0)  # read again after release: fetched again, still right
    assert bytes(file.read(5)) == payload[:5]
    assert file.seek(0, 2) == len(payload)
    file.close()


def test_a_range_reaching_into_the_footer_tail_is_clipped_and_reads_span_both() -> None:
    fs = fsspec.filesystem("memory")
    path = f"/range-{uuid.uuid4().hex}"
    payload = bytes(range(256)) * 64
    fs.pipe_file(path, payload)
    calls: list[tuple[int, int]] = []
    original = fs.cat_file

    def counting(p: str, start: int, end: int) -> bytes:
        calls.append((start, end))
        data: bytes = original(p, start=start, end=end)
        return data

    fs.cat_file = counting  # type: ignore[method-assign]
    tail = len(payload) - 1024
    file = RangeFile(fs, path, len(payload), ReadOptions(footer_bytes=1024))
    file.prefetch([(14000, 16000)])
    assert calls == [(tail, len(payload)), (14000, tail)]  # the tail is not fetched twice
    file.seek(14500)
    assert bytes(file.read(1300)) == payload[14500:15800]  # spans the range and the tail
    file.seek(tail)
    assert bytes(file.read(1024)) == payload[tail:]  # the tail is kept (footers are re-read)
    assert len(calls) == 2


def test_read_options_refuse_unknown_modes_and_empty_sizes() -> None:
    with pytest.raises(ValueError, match="read mode 'mmap' is not one of prefetch"):
        ReadOptions(mode="mmap")
    with pytest.raises(ValueError, match="readahead_bytes must be >= 1"):
        ReadOptions(readahead_bytes=0)


def _footer(rows: int) -> pq.FileMetaData:
    sink = pa.BufferOutputStream()
    pq.write_table(_table(rows), sink, row_group_size=100)
    return pq.read_metadata(pa.BufferReader(sink.getvalue()))


def test_footer_cache_keys_by_size_and_tag_and_evicts_by_bytes() -> None:
    fs = fsspec.filesystem("memory")
    small = _footer(1000)
    cache = FooterCache(max_bytes=3 * small.serialized_size)
    cache.put(fs, "/a", FileIdentity(10, ""), small)
    assert cache.get(fs, "/a", 10) is None  # no version tag: a same-size rewrite is invisible
    cache.put(fs, "/a", FileIdentity(10, '"etag-1"'), small)
    entry = cache.get(fs, "/a", 10)
    assert entry is not None and entry.identity.tag == '"etag-1"'
    assert cache.get(fs, "/a", 11) is None  # planned with another size: never served
    for name in ("/b", "/c", "/d"):
        cache.put(fs, name, FileIdentity(10, "t"), small)
    assert len(cache) == 3 and cache.get(fs, "/a", 10) is None  # least recently used went
    cache.invalidate(fs, "/d")
    assert cache.get(fs, "/d", 10) is None and len(cache) == 2


def test_footer_cache_reserve_lets_one_opening_fetch_and_the_others_wait() -> None:
    fs = fsspec.filesystem("memory")
    cache = FooterCache()
    assert cache.reserve(fs, "/f", 10) is None  # the first opening fetches the footer
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(cache.reserve(fs, "/f", 10, wait_s=30)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waiting for the first opening's footer, not fetching its own
    cache.put(fs, "/f", FileIdentity(10, "t"), _footer(100))
    waiter.join(10)
    assert len(got) == 1 and isinstance(got[0], CachedFooter)
    # A reservation released without a footer lets the waiters go on (each fetches its own).
    assert cache.reserve(fs, "/g", 10) is None
    late: list[object] = []
    waiter = threading.Thread(target=lambda: late.append(cache.reserve(fs, "/g", 10, wait_s=30)))
    waiter.start()
    cache.release(fs, "/g")
    waiter.join(10)
    assert late == [None]


def test_read_ahead_is_claimed_only_by_the_same_split_and_columns() -> None:
    root, table = _memory_table()
    opened = Table.open(root)
    splits = opened.plan_splits(2500).splits
    read_ahead = ReadAhead(max_entries=2, threads=1)
    try:
        assert read_ahead.warm(splits[0], opened.filesystem, ["row_id"], ReadOptions())
        assert not read_ahead.warm(
            splits[0], opened.filesystem, ["row_id"], ReadOptions(mode="pre_buffer")
        )  # only prefetch reads are opened ahead
        # Claimed for other columns: refused (and closed), the reader opens the file itself.
        assert read_ahead.claim(splits[0], ["row_id", "a"]) is None
        assert read_ahead.claim(splits[0], ["row_id"]) is None  # gone with the refusal
        read_ahead.warm(splits[1], opened.filesystem, ["row_id"], ReadOptions())
        source = read_ahead.claim(splits[1], ["row_id"])
        assert source is not None and source.metadata is not None
        source.close()
        # Never claimed: bounded by max_entries, the oldest closed first.
        for split in splits[2:5]:
            read_ahead.warm(split, opened.filesystem, ["row_id"], ReadOptions())
        assert len(read_ahead) == 2
        read_ahead.discard(splits[4])
        assert len(read_ahead) == 1
        rows = [
            v
            for b in read_split(
                splits[3],
                filesystem=opened.filesystem,
                columns=["row_id"],
                row_filter=None,
                batch_rows=700,
                read_ahead=read_ahead,
            )
            for v in b.column("row_id").to_pylist()
        ]
        assert rows == table.column("row_id").to_pylist()[6000:8000]
        assert (read_ahead.warmed, read_ahead.claimed, len(read_ahead)) == (5, 2, 0)
    finally:
        read_ahead.close()
