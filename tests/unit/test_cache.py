"""The worker's cache of transformed splits: byte-identical frames from cache and from storage,
never a changed file's rows, LRU by bytes, no partial entries."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Generator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpp_proto import spec_pb2
from dpp_proto.wire import decode_frame
from dpp_server.cache import SplitCache, output_digest
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, StageTotals, produce_split
from dpp_server.spec import Spec, spec_from_proto
from storage import SplitChangedError, SplitInfo, Table


def _spec(uri: str, **extra: object) -> Spec:
    fields: dict[str, object] = {
        "table_uri": uri,
        "batch_size": 300,
        "target_split_rows": 4000,
        "label": "label",
        "passthrough": ["row_id"],
        "row_filter": "label = 0 OR dense_1 > 0.5",
        "features": [
            {"name": "d0", "source": "dense_0", "kind": spec_pb2.FEATURE_KIND_DENSE},
            {
                "name": "s0",
                "source": "sparse_0",
                "kind": spec_pb2.FEATURE_KIND_SPARSE,
                "ops": [{"op": "sigrid_hash", "params": {"max_value": 1000}}],
            },
        ],
    }
    return spec_from_proto(spec_pb2.SessionSpec(**{**fields, **extra}))  # type: ignore[arg-type]


def _frames(session: SessionPipeline, split: SplitInfo, start: int = 0) -> list[bytes]:
    grant = LeaseGrant(session_id="s", epoch=0, rank=0, split=split, start_batch=start)
    return list(produce_split(session, grant, StageTotals()))


def _copy_table(src: str, dst: Path) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def test_cached_frames_are_byte_identical_and_resume_mid_split(
    small_table: str, tmp_path: Path
) -> None:
    uri = _copy_table(small_table, tmp_path / "t")
    spec = _spec(uri)
    splits = Table.open(uri).plan_splits(spec.target_split_rows).splits[:3]
    plain = SessionPipeline.compile(spec, read_batch_rows=700)
    counts: dict[str, int] = {}
    cache = SplitCache(
        str(tmp_path / "cache"), 1 << 30, lambda k, n: counts.__setitem__(k, counts.get(k, 0) + n)
    )
    cached = SessionPipeline.compile(spec, read_batch_rows=700, cache=cache)
    for split in splits:
        want = _frames(plain, split)
        assert len(want) > 2
        assert _frames(cached, split) == want  # a miss: produced and written
        assert _frames(cached, split) == want  # a hit: read back
        assert _frames(cached, split, start=2) == want[2:]  # a re-produced split resumes
    assert counts["cache_misses"] == 3 and counts["cache_hits"] == 6
    # A worker restarted on the same folder keeps the entries (and a different spec misses).
    again = SplitCache(str(tmp_path / "cache"), 1 << 30)
    assert again.stats() == cache.stats()
    reopened = SessionPipeline.compile(spec, read_batch_rows=4000, cache=again)
    assert _frames(reopened, splits[0]) == _frames(plain, splits[0])
    other = _spec(uri, batch_size=100)
    assert output_digest(other) == output_digest(spec)  # batching is after the cache
    assert output_digest(_spec(uri, row_filter="label = 1")) != output_digest(spec)


def _write_plain(path: Path, values: list[float]) -> None:
    """Uncompressed, unencoded, no statistics: other values of the same length give a file
    of the same size (a rewrite that an ETag-less file system cannot tell by size)."""
    table = pa.table(
        {
            "row_id": pa.array(range(len(values)), pa.int64()),
            "label": pa.array([0.0] * len(values), pa.float32()),
            "dense_0": pa.array(values, pa.float32()),
        }
    )
    pq.write_table(
        table,
        path,
        row_group_size=500,
        compression="none",
        use_dictionary=False,
        write_statistics=False,
    )


def test_a_changed_file_is_never_served_from_the_cache(tmp_path: Path) -> None:
    folder = tmp_path / "t" / "ds=2026-01-01"
    folder.mkdir(parents=True)
    path = folder / "part-0.parquet"
    _write_plain(path, [float(i) for i in range(2000)])
    uri = str(tmp_path / "t")
    spec = spec_from_proto(
        spec_pb2.SessionSpec(
            table_uri=uri,
            batch_size=300,
            label="label",
            features=[{"name": "d0", "source": "dense_0", "kind": spec_pb2.FEATURE_KIND_DENSE}],
        )
    )
    split = Table.open(uri).plan_splits(spec.target_split_rows).splits[0]
    cache = SplitCache(str(tmp_path / "cache"), 1 << 30)
    session = SessionPipeline.compile(spec, read_batch_rows=1000, cache=cache)
    before = _frames(session, split)
    assert _frames(session, split) == before  # served from the cache
    _write_plain(path, [float(-i) for i in range(2000)])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert path.stat().st_size == split.file_size  # same size, same split id
    after = _frames(session, split)
    fresh = SessionPipeline.compile(spec, read_batch_rows=1000)
    assert after != before and after == _frames(fresh, split)
    assert cache.stats()[0] == 1  # the stale entry was replaced by the new production
    # A file of another size: the cache drops its entry and the reader refuses the file.
    with path.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(SplitChangedError):
        _frames(session, split)
    assert cache.stats() == (0, 0)


def test_lru_by_bytes_and_no_partial_entries(small_table: str, tmp_path: Path) -> None:
    uri = _copy_table(small_table, tmp_path / "t")
    spec = _spec(uri)
    splits = Table.open(uri).plan_splits(spec.target_split_rows).splits[:3]
    probe = SplitCache(str(tmp_path / "probe"), 1 << 30)
    _frames(SessionPipeline.compile(spec, read_batch_rows=1000, cache=probe), splits[0])
    one_entry = probe.stats()[1]
    counts: dict[str, int] = {}
    cache = SplitCache(
        str(tmp_path / "cache"),
        int(one_entry * 2.5),
        lambda k, n: counts.__setitem__(k, counts.get(k, 0) + n),
    )
    session = SessionPipeline.compile(spec, read_batch_rows=1000, cache=cache)
    for split in splits:
        _frames(session, split)
    entries, nbytes = cache.stats()
    assert entries == 2 and nbytes <= cache.max_bytes
    assert counts["cache_evictions"] == 1
    _frames(session, splits[0])  # evicted (least recent): a miss again
    assert counts["cache_misses"] == 4
    # A split abandoned mid-way (the worker stopped) leaves no entry and no temporary file.
    small = SplitCache(str(tmp_path / "partial"), 1 << 30)
    partial = SessionPipeline.compile(spec, read_batch_rows=500, cache=small)
    grant = LeaseGrant(session_id="s", epoch=0, rank=0, split=splits[1], start_batch=0)
    frames = produce_split(partial, grant, StageTotals())
    assert isinstance(frames, Generator)
    next(frames)
    frames.close()
    assert small.stats() == (0, 0)
    assert list((tmp_path / "partial").iterdir()) == []


@pytest.mark.parametrize("dedup", [False, True])
def test_shuffled_sessions_use_the_cache_and_keep_their_order(
    small_table: str, tmp_path: Path, dedup: bool
) -> None:
    """The seeded order is applied after the cache: cached and uncached runs give the same
    frames, budget-decoded runs (smaller reads) the same rows in the same order, every epoch
    its own order, every row once."""
    extra: dict[str, object] = {"shuffle": True, "seed": 3}
    if dedup:
        extra["features"] = [
            {"name": "d0", "source": "dense_0", "kind": spec_pb2.FEATURE_KIND_DENSE},
            {
                "name": "u0",
                "source": "sparse_0",
                "kind": spec_pb2.FEATURE_KIND_SPARSE,
                "dedup_group": "user",
            },
            {
                "name": "u1",
                "source": "sparse_1",
                "kind": spec_pb2.FEATURE_KIND_SPARSE,
                "dedup_group": "user",
            },
        ]
    spec = _spec(small_table, **extra)
    split = Table.open(small_table).plan_splits(spec.target_split_rows).splits[0]
    plain = SessionPipeline.compile(spec, read_batch_rows=1000)
    # Under a memory budget the reader decodes smaller steps: the order must not change.
    small_reads = SessionPipeline.compile(spec, read_batch_rows=1000, max_batch_bytes=20_000)
    cache = SplitCache(str(tmp_path / "cache"), 1 << 30)
    cached = SessionPipeline.compile(spec, read_batch_rows=1000, cache=cache)
    assert cached.cache is cache

    def frames(session: SessionPipeline, epoch: int) -> list[bytes]:
        grant = LeaseGrant(session_id="s", epoch=epoch, rank=0, split=split, start_batch=0)
        return list(produce_split(session, grant, StageTotals()))

    def row_ids(frames: list[bytes]) -> list[int]:
        ids: list[int] = []
        for frame in frames:
            _, batch = decode_frame(frame)
            if batch is not None:
                ids.extend(batch.column("extra.row_id").to_pylist())
        return ids

    def rows_of(frames: list[bytes]) -> list[dict[str, list[object]]]:
        """The frames' rows, dedup groups taken through their inverse: what a trainer sees."""
        decoded = []
        for frame in frames:
            _, batch = decode_frame(frame)
            if batch is not None:
                columns = {}
                for name, column in zip(batch.schema.names, batch.columns, strict=True):
                    if pa.types.is_dictionary(column.type):
                        column = column.dictionary.take(column.indices)
                    columns[name] = column.to_pylist()
                decoded.append(columns)
        return decoded

    epoch0, epoch1 = frames(plain, 0), frames(plain, 1)
    budget_reads = frames(small_reads, 0)
    # The same rows in the same order; with dedup, a session cut by a smaller read is one
    # unique row per read piece, so the encoding of such a batch may differ.
    assert rows_of(budget_reads) == rows_of(epoch0)
    if not dedup:
        assert budget_reads == epoch0
    assert frames(cached, 0) == epoch0  # a miss, written
    assert cache.stats()[0] == 1
    assert frames(cached, 0) == epoch0  # a hit
    assert frames(cached, 1) == epoch1  # a hit, in epoch 1's order
    ids0, ids1 = row_ids(epoch0), row_ids(epoch1)
    unshuffled = row_ids(frames(SessionPipeline.compile(_spec(small_table), 1000), 0))
    assert ids0 != ids1 and ids0 != unshuffled  # shuffled, differently per epoch
    assert sorted(ids0) == sorted(ids1) == sorted(unshuffled)  # every row once
    assert len(ids0) == len(set(ids0))


def test_the_seed_keys_the_cache_only_when_the_spec_samples(small_table: str) -> None:
    assert output_digest(_spec(small_table, seed=1)) == output_digest(_spec(small_table, seed=2))
    sampled = {"sample_rate": 0.5, "sample_key": "row_id"}
    assert output_digest(_spec(small_table, seed=1, **sampled)) != output_digest(
        _spec(small_table, seed=2, **sampled)
    )


def test_held_lists_split_ids_per_digest_and_bumps_its_generation(
    small_table: str, tmp_path: Path
) -> None:
    spec = _spec(small_table)
    splits = Table.open(small_table).plan_splits(spec.target_split_rows).splits[:2]
    cache = SplitCache(str(tmp_path / "cache"), 1 << 30)
    session = SessionPipeline.compile(spec, read_batch_rows=1000, cache=cache)
    generation, held = cache.held()
    assert held == {}
    for split in splits:
        _frames(session, split)
    after, held = cache.held()
    assert after == generation + 2
    assert held == {output_digest(spec): [s.split_id for s in splits]}
    _frames(session, splits[0])  # a hit changes nothing
    assert cache.held()[0] == after


def test_a_split_being_written_is_waited_for_within_a_bound(
    small_table: str, tmp_path: Path
) -> None:
    """Two jobs on one spec asking for a split at once: the second reads the first's entry
    once committed instead of producing it again; a writer that never finishes delays it at
    most ``wait_s``."""
    spec = _spec(small_table)
    split = Table.open(small_table).plan_splits(spec.target_split_rows).splits[0]
    fs = pa.fs.LocalFileSystem()
    counts: dict[str, int] = {}
    cache = SplitCache(
        str(tmp_path / "cache"), 1 << 30, lambda k, n: counts.__setitem__(k, counts.get(k, 0) + n)
    )
    chunk = pa.record_batch({"x": [1, 2, 3]})
    writer = cache.writer(split, "d", fs)
    writer.write(chunk)
    # A writer in progress that does not finish: the wait ends after wait_s, a miss.
    assert cache.get(split, "d", fs, wait_s=0.05) is None
    got: list[list[pa.RecordBatch] | None] = []
    waiting = threading.Thread(
        target=lambda: got.append(
            None if (b := cache.get(split, "d", fs, wait_s=60)) is None else list(b)
        )
    )
    waiting.start()
    writer.commit()
    waiting.join(60)
    assert got == [[chunk]]
    assert (counts["cache_misses"], counts["cache_hits"]) == (1, 1)
    # An aborted writer wakes its waiters too (they then produce the split themselves).
    other = cache.writer(split, "e", fs)
    other.abort()
    assert cache.get(split, "e", fs, wait_s=60) is None
