"""A worker's cache of produced work: the transformed rows of a split, kept on local disk.

Owns :class:`SplitCache` and :func:`output_digest`. Every epoch and every job over the same
table and features reads and transforms the same Parquet again; the cache keeps what the
transform produced for a split (before batching, dedup sections and framing, which stay
per epoch) as an Arrow IPC stream file, so a later epoch or job streams it back memory-mapped
instead. Must never import grpc or torch.

Key: ``(split id, output digest)``. The split id already carries the file's path, size and
object-store ETag and the row-group range (:func:`storage.table.split_id_of`); the digest
covers every spec field that shapes the transformed rows (:func:`output_digest`) and not the
ones applied after the cache (batch size, epochs, seed, ranks, planning). A local file has no
ETag, so each entry also records the file's size and modification time when it was produced,
and a lookup whose file now differs is a miss that drops the entry: a changed file is never
served from the cache.

What is cached and when (decisions):

- Every session, ``shuffle`` included: the seeded order is applied after the cache, to
  windows of the split's transformed rows (:func:`dpp_server.produce.chunk_permutation`), so
  it does not depend on how the rows were read or cached. Sampling stays inside the cached
  transform: a row's fate is a pure function of its key and the seed, the same every epoch
  (:mod:`dpp_server.transforms.sampling`), so the seed is part of the digest when a spec
  samples, and only then.
- An entry is written while a split is produced and committed (renamed into place) only once
  every chunk was written: a worker killed mid-split leaves a ``.tmp`` file, removed at the
  next start, never a partial entry.
- LRU by bytes under ``max_bytes``: a commit evicts the least recently used entries until the
  total fits; an entry larger than the whole cache is not kept.

Worked example (``max_bytes`` 100 MB): epoch 0 produces split A (60 MB) and B (30 MB): two
misses, both written. Epoch 1 asks for A: a hit, read back from disk; A is now the most
recent. A job asks for split C (40 MB): a miss; committing C evicts B (least recent), total
100 MB. The file of A is rewritten (new size or mtime): the next lookup of A is a miss and
removes the stale entry.

Thread-safety: ``_lock`` guards the index, the byte total and the keys being written; files
are written under unique temporary names, so pipeline threads producing the same split at once
both succeed (the last commit wins). A thread that finds the split being written by another
waits a bounded time for that commit instead (:meth:`SplitCache.get`, ``wait_s``): two jobs on
one spec then read and transform each split once.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from dpp_server.spec import Spec
from storage.table import SplitInfo

__all__ = ["CacheWriter", "SplitCache", "output_digest"]

logger = logging.getLogger(__name__)

#: Spec fields applied after the cache (or only to planning): they never shape cached rows.
_AFTER_CACHE = (
    "batch_size",
    "epochs",
    "seed",
    "world_size",
    "target_split_rows",
    "shuffle",
    "deterministic",
    "max_splits_in_flight",
    "dedup_min_share",
    "partition_filter",
    "share",
)
_SUFFIX = ".arrows"


def output_digest(spec: Spec) -> str:
    """16 hex chars over every spec field that shapes a split's transformed rows.

    The partition filter only chooses splits and the row filter's effect is inside the rows,
    so the row filter is kept and the partition filter dropped; the fields after the cache
    (:data:`_AFTER_CACHE`) are set to one value so that jobs differing only there share.
    """
    neutral = dataclasses.replace(spec, **_neutral_values(spec))  # type: ignore[arg-type]
    return hashlib.sha1(repr(neutral).encode()).hexdigest()[:16]


def _neutral_values(spec: Spec) -> dict[str, object]:
    fields = {f.name: f for f in dataclasses.fields(spec)}
    values: dict[str, object] = {}
    for name in _AFTER_CACHE:
        if name == "seed" and spec.sampled:
            continue  # sampling keeps rows by (key, seed): the seed shapes the rows
        if name in fields:
            values[name] = type(getattr(spec, name))()
    return values


@dataclasses.dataclass(frozen=True)
class _Entry:
    path: Path
    nbytes: int
    file_size: int
    file_mtime_ns: int


class CacheWriter:
    """Writes one split's entry; :meth:`commit` makes it visible, :meth:`abort` drops it.
    For one thread (the pipeline thread producing the split)."""

    def __init__(
        self,
        cache: SplitCache,
        key: str,
        tmp: Path,
        stamp: tuple[int, int],
    ) -> None:
        self._cache, self._key, self._tmp, self._stamp = cache, key, tmp, stamp
        self._sink: pa.OSFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._sink = pa.OSFile(str(self._tmp), "wb")
            self._writer = pa.ipc.new_stream(self._sink, batch.schema)
        self._writer.write_batch(batch)

    def commit(self) -> None:
        """Closes the file and files it under its key (an empty split is not kept)."""
        try:
            if self._writer is None or self._sink is None:
                return
            self._writer.close()
            self._sink.close()
            self._writer = None
            self._cache._commit(self._key, self._tmp, self._stamp)
        finally:
            self._cache._written(self._key)

    def abort(self) -> None:
        try:
            if self._writer is not None and self._sink is not None:
                self._writer.close()
                self._sink.close()
                self._writer = None
            self._tmp.unlink(missing_ok=True)
        finally:
            self._cache._written(self._key)


class SplitCache:
    """Transformed rows of splits as Arrow IPC stream files in ``directory``, LRU by bytes.

    Args:
        directory: a local folder, created if missing; entries found there at start (a
            restarted worker) are kept, leftover temporary files removed.
        max_bytes: the cache's size on disk.
        count: where hits, misses, evictions and bytes are counted (the worker's
            statistics: ``cache_hits``, ``cache_misses``, ``cache_evictions``,
            ``cache_bytes_written``, ``cache_bytes_read``).
    """

    def __init__(
        self, directory: str, max_bytes: int, count: Callable[[str, int], None] | None = None
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._count = count or (lambda name, n: None)
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._bytes = 0
        # Keys being written now, set once committed or aborted (get's bounded wait).
        self._writing: dict[str, threading.Event] = {}
        # Bumped whenever the set of keys changes (commit, eviction, drop): the heartbeat
        # resends the set to the master only then.
        self._generation = 0
        self._load()

    # -- lookups ----------------------------------------------------------------------------

    @staticmethod
    def key(split: SplitInfo, digest: str) -> str:
        return f"{split.split_id}-{digest}"

    def get(
        self,
        split: SplitInfo,
        digest: str,
        filesystem: pafs.FileSystem,
        wait_s: float = 0.0,
    ) -> Iterator[pa.RecordBatch] | None:
        """The cached transformed chunks of ``split``, or None (a miss, counted).

        The file is checked first: a size or modification time other than the entry's is a
        miss and drops the entry.

        Args:
            wait_s: when another thread is writing this entry right now (another job, or
                another rank, producing the same split), wait up to this long for its commit
                and read it back rather than produce the split a second time. Bounded, so a
                writer held up by its own slow consumer (a full frame buffer) delays this
                one by at most ``wait_s``; then the caller produces the split itself.
        """
        key = self.key(split, digest)
        with self._lock:
            entry = self._entries.get(key)
            writing = self._writing.get(key) if entry is None else None
        if writing is not None and wait_s > 0 and writing.wait(wait_s):
            with self._lock:
                entry = self._entries.get(key)
        if entry is not None:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
        if entry is not None and _stamp(split, filesystem) != (
            entry.file_size,
            entry.file_mtime_ns,
        ):
            logger.info("cache: %s changed since it was cached; dropping the entry", split.path)
            self._drop(key)
            entry = None
        if entry is None:
            self._count("cache_misses", 1)
            return None
        try:
            source = pa.memory_map(str(entry.path))
            reader = pa.ipc.open_stream(source)
        except (OSError, pa.ArrowException):
            logger.exception("cache: entry %s unreadable; dropping it", entry.path)
            self._drop(key)
            self._count("cache_misses", 1)
            return None
        self._count("cache_hits", 1)
        self._count("cache_bytes_read", entry.nbytes)
        batches: Iterator[pa.RecordBatch] = iter(reader)
        return batches

    def writer(self, split: SplitInfo, digest: str, filesystem: pafs.FileSystem) -> CacheWriter:
        """A writer for ``split``'s entry, stamped with the file's size and mtime now. Until
        it commits or aborts, :meth:`get` with ``wait_s`` waits for it."""
        tmp = self.directory / f".{uuid.uuid4().hex}.tmp"
        key = self.key(split, digest)
        with self._lock:
            self._writing.setdefault(key, threading.Event())
        return CacheWriter(self, key, tmp, _stamp(split, filesystem))

    def stats(self) -> tuple[int, int]:
        """Entries and bytes held."""
        with self._lock:
            return len(self._entries), self._bytes

    def held(self) -> tuple[int, dict[str, list[str]]]:
        """The split ids held per output digest, and the generation they are of (it changes
        whenever the set does): what the heartbeat reports for the master's locality."""
        by_digest: dict[str, list[str]] = {}
        with self._lock:
            generation = self._generation
            keys = list(self._entries)
        for key in keys:
            split_id, _, digest = key.rpartition("-")
            by_digest.setdefault(digest, []).append(split_id)
        return generation, by_digest

    # -- internals --------------------------------------------------------------------------

    def _commit(self, key: str, tmp: Path, stamp: tuple[int, int]) -> None:
        nbytes = tmp.stat().st_size
        if nbytes > self.max_bytes:
            tmp.unlink(missing_ok=True)
            return
        final = self.directory / f"{key}-{stamp[0]}-{stamp[1]}{_SUFFIX}"
        evicted: list[_Entry] = []
        with self._lock:
            os.replace(tmp, final)
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
                if old.path != final:
                    evicted.append(old)
            self._entries[key] = _Entry(final, nbytes, *stamp)
            self._bytes += nbytes
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, victim = self._entries.popitem(last=False)
                self._bytes -= victim.nbytes
                evicted.append(victim)
            self._generation += 1
        for victim in evicted:
            victim.path.unlink(missing_ok=True)
        self._count("cache_bytes_written", nbytes)
        if evicted:
            self._count("cache_evictions", len(evicted))

    def _written(self, key: str) -> None:
        """A writer of ``key`` finished (committed or aborted): wake whoever waits for it."""
        with self._lock:
            event = self._writing.pop(key, None)
        if event is not None:
            event.set()

    def _drop(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry.nbytes
                self._generation += 1
        if entry is not None:
            entry.path.unlink(missing_ok=True)

    def _load(self) -> None:
        """Indexes entries left by an earlier run (oldest first) and removes temporaries."""
        found = []
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(_SUFFIX):
                continue
            parts = path.name[: -len(_SUFFIX)].rsplit("-", 2)
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
                continue
            stat = path.stat()
            found.append(
                (
                    stat.st_mtime_ns,
                    parts[0],
                    _Entry(path, stat.st_size, int(parts[1]), int(parts[2])),
                )
            )
        for _, key, entry in sorted(found, key=lambda f: f[0]):
            self._entries[key] = entry
            self._bytes += entry.nbytes
        while self._bytes > self.max_bytes and self._entries:
            _, victim = self._entries.popitem(last=False)
            self._bytes -= victim.nbytes
            victim.path.unlink(missing_ok=True)


def _stamp(split: SplitInfo, filesystem: pafs.FileSystem) -> tuple[int, int]:
    """The file's size and modification time (ns; 0 where the file system reports none)."""
    info = filesystem.get_file_info(split.path)
    mtime_ns = info.mtime_ns if info.mtime_ns is not None else 0
    return int(info.size or 0), int(mtime_ns)
