"""How a worker reads a data file that lives in an object store: round trips and bytes.

Owns :class:`ReadOptions` (the knobs, with defaults chosen by ``bench/remote_storage.py``) and
:func:`open_source` (the one place a split's Parquet file is opened for reading). On local
disk a read costs microseconds and none of this matters (local files are read by pyarrow's
native file system with ``pre_buffer``, whatever the options say). Through an object store
each request costs a round trip (tens of milliseconds) and fetches one byte range, so what
counts is how many requests a split waits for one after another, and how many bytes they bring.

Three ways to read a split's file (``ReadOptions.mode``), all measured (docs/tables.md):

* ``prefetch`` (the default): dpp's own. The footer is fetched (the last
  ``footer_bytes``) while the file's size is checked (both at once: one round trip); from
  the footer dpp knows the byte range of every column chunk the split reads (its row groups,
  projected and filter columns only), coalesces neighbours (holes up to
  ``hole_size_limit_bytes``, ranges up to ``range_size_limit_bytes``) and requests all of the
  ranges concurrently, in file order, up to ``readahead_bytes`` not yet decoded. pyarrow then
  decodes row group 0 as soon as its ranges arrive while later ones are still in flight. A
  split costs about two round trips, however many columns and row groups it has.
* ``pre_buffer``: pyarrow's own coalescing (``pre_buffer=True`` with
  :class:`pyarrow.CacheOptions` from the same hole/range limits, ``lazy``,
  ``prefetch_limit``) over an fsspec file without a cache. pyarrow reads fsspec files through
  :class:`pyarrow.PythonFile`, which serializes reads: the coalesced ranges arrive one round
  trip after another.
* ``readahead``: fsspec's block cache (``readahead``, ``block_size_bytes``), no pre-buffering:
  each cache miss fetches a whole block from the read position on, projected or not.

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import dataclasses
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.filesystem import fsspec_filesystem_of

__all__ = [
    "READ_MODES",
    "READ_WAITS",
    "FileIdentity",
    "FooterCache",
    "RangeFile",
    "ReadOptions",
    "Source",
    "WaitClock",
    "coalesce",
    "column_chunk_ranges",
    "open_source",
]  # fmt: skip

READ_MODES = ("prefetch", "pre_buffer", "readahead")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How a split's Parquet file is read from a remote (fsspec) file system.

    Attributes:
        mode: ``prefetch``, ``pre_buffer`` or ``readahead`` (module docstring). ``prefetch``
            waits about two round trips per split; the others one per range or block.
        hole_size_limit_bytes: two column chunks closer than this are fetched as one range,
            the hole's bytes included. Larger means fewer requests but fetches the bytes of
            unread columns lying between read ones.
        range_size_limit_bytes: the largest coalesced range. Larger means fewer requests;
            smaller lets decoding start sooner.
        readahead_bytes: (``prefetch``) bytes requested ahead of decoding: fetched but not
            yet read, or in flight. More hides more latency; it bounds the memory a split's
            prefetch holds (at least one range is always requested).
        footer_bytes: (``prefetch``) the file's tail fetched first; a footer longer than
            this costs one more round trip.
        lazy: (``pre_buffer``) pyarrow fetches a coalesced range only when the reader
            reaches it (plus ``prefetch_limit`` ahead) instead of all at once.
        prefetch_limit: (``pre_buffer`` with ``lazy``) ranges fetched ahead.
        block_size_bytes: (``readahead``) fsspec's block. Larger means fewer requests but
            fetches bytes of other columns and row groups.
    """

    mode: str = "prefetch"
    hole_size_limit_bytes: int = 1 << 20
    range_size_limit_bytes: int = 32 << 20
    readahead_bytes: int = 256 << 20
    footer_bytes: int = 64 << 10
    lazy: bool = False
    prefetch_limit: int = 0
    block_size_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        if self.mode not in READ_MODES:
            raise ValueError(f"read mode {self.mode!r} is not one of {', '.join(READ_MODES)}")
        for name in (
            "hole_size_limit_bytes",
            "range_size_limit_bytes",
            "readahead_bytes",
            "footer_bytes",
            "block_size_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prefetch_limit < 0:
            raise ValueError(f"prefetch_limit must be >= 0, got {self.prefetch_limit}")

    def scan_options(self, remote: bool) -> pads.ParquetFragmentScanOptions:
        """The Parquet scan options for a local (``remote`` False) or a remote file."""
        if not remote:
            return pads.ParquetFragmentScanOptions(pre_buffer=True)
        if self.mode != "pre_buffer":
            # prefetch: the bytes are already coming; pre-buffering would copy them again.
            return pads.ParquetFragmentScanOptions(pre_buffer=False)
        return pads.ParquetFragmentScanOptions(
            pre_buffer=True,
            cache_options=pa.CacheOptions(
                hole_size_limit=self.hole_size_limit_bytes,
                range_size_limit=self.range_size_limit_bytes,
                lazy=self.lazy,
                prefetch_limit=self.prefetch_limit,
            ),
        )


class WaitClock:
    """Seconds the threads that produce splits spent blocked on object-store bytes not yet
    arrived (a range in flight, a footer, a HEAD, a split still being opened ahead): the
    latency that read-ahead did not hide. Waits on a read-ahead thread (:func:`in_background`)
    block nobody and are not counted. Thread-safe: ``_lock`` guards the total."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds = 0.0
        self._local = threading.local()

    def add(self, seconds: float) -> None:
        if getattr(self._local, "background", False):
            return
        with self._lock:
            self._seconds += seconds

    def wait(self, future: concurrent.futures.Future[Any]) -> Any:
        """``future.result()``, timed when it has to wait."""
        if future.done():
            return future.result()
        started = time.perf_counter()
        try:
            return future.result()
        finally:
            self.add(time.perf_counter() - started)

    @contextlib.contextmanager
    def in_background(self) -> Iterator[None]:
        """Waits of this thread within the block are not counted (nobody waits on them)."""
        self._local.background = True
        try:
            yield
        finally:
            self._local.background = False

    def take(self) -> float:
        """The seconds counted since the last call."""
        with self._lock:
            seconds, self._seconds = self._seconds, 0.0
            return seconds


#: Every remote read of this process counts its waits here (bench/remote_storage.py reports
#: them per split).
READ_WAITS = WaitClock()


@dataclasses.dataclass
class Source:
    """A split's file as pyarrow reads it.

    Attributes:
        file: the path (native file systems) or an open file (fsspec ones).
        ranges: the :class:`RangeFile` behind ``file`` in ``prefetch`` mode, to tell it which
            ranges the split reads; None otherwise.
        metadata: the file's footer when it is known before pyarrow opens the file: from a
            :class:`FooterCache` (no footer request was made; valid only once
            :meth:`RangeFile.identity` agreed with it), or parsed when the split was opened
            ahead of its reader.
        identity: the remote file's size and etag as checked when opened (``prefetch``).
    """

    file: str | pa.NativeFile
    ranges: RangeFile | None = None
    metadata: pq.FileMetaData | None = None
    identity: FileIdentity | None = None

    @property
    def remote(self) -> bool:
        return not isinstance(self.file, str)

    def close(self) -> None:
        if isinstance(self.file, pa.NativeFile):
            self.file.close()


def open_source(
    filesystem: pafs.FileSystem,
    path: str,
    size: int,
    options: ReadOptions,
    footers: FooterCache | None = None,
) -> Source:
    """Opens ``path`` (``size`` bytes at planning) for a split's read.

    A native (local) file system gets the path itself. An fsspec one gets a file opened with
    ``size`` (no HEAD request): in ``prefetch`` mode a :class:`RangeFile` whose footer fetch
    (unless ``footers`` holds the footer, or another split's opening is fetching it: then
    that is awaited) and identity check (a HEAD) have already started; without a footer from
    ``footers``, the caller must :meth:`FooterCache.put` or :meth:`FooterCache.release` it;
    otherwise an fsspec file with the cache ``options.mode`` names. The caller closes the
    source.
    """
    inner = fsspec_filesystem_of(filesystem)
    if inner is None:
        return Source(path)
    if options.mode == "prefetch":
        cached = footers.reserve(inner, path, size) if footers is not None else None
        ranges = RangeFile(inner, path, size, options, footer=cached)
        return Source(pa.PythonFile(ranges, mode="r"), ranges, cached.metadata if cached else None)
    kwargs: dict[str, Any] = {"size": size, "cache_type": "none"}
    if options.mode == "readahead":
        kwargs.update(cache_type="readahead", block_size=options.block_size_bytes)
    try:
        handle = inner.open(path, mode="rb", **kwargs)
    except TypeError:  # an fsspec implementation that takes no size or cache arguments
        handle = inner.open(path, mode="rb")
    return Source(pa.PythonFile(handle, mode="r"))


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    """What the object store says a file is now: its size and its version tag (S3's ETag;
    where a store reports no etag, its modification time; "" when it reports neither, and
    such a file's footer is never cached)."""

    size: int
    tag: str

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> FileIdentity:
        """From an fsspec ``info()`` answer."""
        size = int(info.get("size") or 0)
        for key in ("ETag", "etag", "md5Hash", "LastModified", "mtime", "last_modified"):
            value = info.get(key)
            if value:
                return cls(size, str(value))
        return cls(size, "")


@dataclasses.dataclass(frozen=True)
class CachedFooter:
    """A parsed footer and the identity of the file it was read from."""

    identity: FileIdentity
    metadata: pq.FileMetaData
    nbytes: int


class FooterCache:
    """Parsed Parquet footers of remote files, so that the splits of one file fetch its footer
    once (one GET per file, not per split) and can request their column chunks at once.

    The splits of a file tend to open together (each pipeline thread and the splits it reads
    ahead): :meth:`reserve` makes the first opener of a file the one that fetches its footer
    and the others wait for it (single flight) instead of each fetching it.

    An entry is keyed by the fsspec file system's token (its endpoint and credentials) and the
    path, and served only for the size the split was planned with; the reader then checks the
    file's :class:`FileIdentity` (the HEAD it makes anyway) against the entry's before using a
    byte, and :meth:`invalidate` s a mismatch (the file was rewritten): its footer is fetched
    again. Least recently used entries go first once the footers' serialized bytes exceed
    ``max_bytes``.

    Thread-safe: ``_lock`` guards the entries and the counters.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str, str], CachedFooter] = OrderedDict()
        self._loading: dict[tuple[str, str, str], threading.Event] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, str, str]:
        token = getattr(fs, "_fs_token", None) or f"id{id(fs)}"
        return type(fs).__qualname__, str(token), path

    def get(self, fs: fsspec.AbstractFileSystem, path: str, size: int) -> CachedFooter | None:
        """The footer of ``path`` if cached for a file of ``size`` bytes (not yet checked
        against the file's current identity: the caller does that)."""
        with self._lock:
            key = self._key(fs, path)
            entry = self._entries.get(key)
            if entry is None or entry.identity.size != size:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def reserve(
        self, fs: fsspec.AbstractFileSystem, path: str, size: int, wait_s: float = 10.0
    ) -> CachedFooter | None:
        """:meth:`get`, waiting up to ``wait_s`` for a footer another caller is fetching. On
        a miss the caller becomes the one fetching it and must :meth:`put` it or
        :meth:`release` the reservation (when it cannot)."""
        key = self._key(fs, path)
        with self._lock:
            loading = self._loading.get(key)
            if loading is None:
                entry = self._entries.get(key)
                if entry is None or entry.identity.size != size:
                    self._loading[key] = threading.Event()
                    self.misses += 1
                    return None
        if loading is not None:
            loading.wait(wait_s)
        return self.get(fs, path, size)

    def release(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        """Ends a :meth:`reserve` that will not :meth:`put`: those waiting go on."""
        with self._lock:
            loading = self._loading.pop(self._key(fs, path), None)
        if loading is not None:
            loading.set()

    def put(
        self,
        fs: fsspec.AbstractFileSystem,
        path: str,
        identity: FileIdentity,
        metadata: pq.FileMetaData,
    ) -> None:
        """Keeps ``metadata``, read from the file ``identity`` names (not kept without a
        version tag: a rewrite of the same size could not be told apart), and ends the
        caller's :meth:`reserve`."""
        nbytes = int(metadata.serialized_size)
        if not identity.tag or nbytes > self.max_bytes:
            self.release(fs, path)
            return
        with self._lock:
            key = self._key(fs, path)
            loading = self._loading.pop(key, None)
            if loading is not None:
                loading.set()
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = CachedFooter(identity, metadata, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def invalidate(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        with self._lock:
            old = self._entries.pop(self._key(fs, path), None)
            if old is not None:
                self._bytes -= old.nbytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def column_chunk_ranges(
    metadata: pq.FileMetaData, row_groups: Sequence[int], columns: Sequence[str]
) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges of the column chunks of ``columns`` (top-level names;
    every leaf of a nested column) in ``row_groups``, in file order."""
    wanted = set(columns)
    leaves = [
        i
        for i in range(metadata.num_columns)
        if metadata.schema.column(i).path.split(".", 1)[0] in wanted
        or metadata.schema.column(i).path in wanted
    ]
    ranges = []
    for rg in row_groups:
        group = metadata.row_group(rg)
        for i in leaves:
            chunk = group.column(i)
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
                start = chunk.dictionary_page_offset
            ranges.append((start, start + chunk.total_compressed_size))
    return sorted(ranges)


def coalesce(
    ranges: Sequence[tuple[int, int]], hole_size_limit: int, range_size_limit: int
) -> list[tuple[int, int, int]]:
    """Merges sorted ranges whose gap is at most ``hole_size_limit`` into ranges of at most
    ``range_size_limit`` bytes (a single range larger than that stays whole).

    Returns:
        ``(start, end, needed)``: each merged range and how many of its bytes are wanted
        (the rest is holes).
    """
    merged: list[tuple[int, int, int]] = []
    for start, end in ranges:
        if merged:
            m_start, m_end, needed = merged[-1]
            if start <= m_end + hole_size_limit and max(end, m_end) - m_start <= range_size_limit:
                overlap = max(0, min(end, m_end) - start)
                merged[-1] = (m_start, max(end, m_end), needed + (end - start) - overlap)
                continue
        merged.append((start, end, end - start))
    return merged


@dataclasses.dataclass
class _Part:
    """One coalesced range: requested (``future``), arrived (``data``) or released."""

    start: int
    end: int
    needed: int
    future: concurrent.futures.Future[bytes] | None = None
    data: bytes | None = None
    consumed: int = 0
    released: bool = False


class RangeFile(io.RawIOBase):
    """A read-only remote file whose reads are served from ranges fetched concurrently ahead
    of the reader, or (anything not announced) by one ranged GET each.

    Opening it starts two requests at once: the file's tail (its footer; not when a cached
    ``footer`` is given) and its :meth:`identity` (a HEAD), which the reader checks against
    the size it planned with (and against the cached footer's) before trusting any byte.

    Thread-safe: ``_lock`` guards the parts and the position (pyarrow's ``PythonFile``
    serializes its calls anyway); fetches run on the fsspec file system's own event loop
    (s3fs and every async fsspec implementation), so requests overlap without threads of
    our own. A synchronous fsspec file system fetches each range when it is first read.
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        path: str,
        size: int,
        options: ReadOptions,
        footer: CachedFooter | None = None,
    ) -> None:
        super().__init__()
        self._fs = fs
        self._path = path
        self._size = size
        self._options = options
        self.footer = footer
        self._lock = threading.Lock()
        self._position = 0
        self._parts: list[_Part] = []  # sorted by start, never overlapping
        self._starts: list[int] = []
        self._pending: list[_Part] = []  # announced, not yet requested (over the budget)
        self._announced: set[tuple[int, int]] = set()  # coalesced ranges already announced
        self._in_budget = 0  # bytes requested and not yet released
        self._tail: _Part | None = None
        if footer is None:
            footer_start = max(0, size - options.footer_bytes)
            self._tail = _Part(footer_start, size, size - footer_start)
            self._insert(self._tail)
            self._request(self._tail)
        self._info: concurrent.futures.Future[dict[str, Any]] | None = None
        loop = self._loop()
        if loop is not None:
            try:  # the store's answer, not a listing cached in this process (s3fs: refresh)
                info = self._fs._info(path, refresh=True)
            except TypeError:
                info = self._fs._info(path)
            self._info = asyncio.run_coroutine_threadsafe(info, loop)

    @property
    def filesystem(self) -> fsspec.AbstractFileSystem:
        return self._fs

    def identity(self) -> FileIdentity:
        """The file as the store describes it now (the HEAD started when opened; waits).

        Raises:
            FileNotFoundError: the file is gone.
        """
        if self._info is not None:
            info = READ_WAITS.wait(self._info)
        else:
            started = time.perf_counter()
            self._fs.invalidate_cache(self._path)  # the store's answer, not a cached listing
            info = self._fs.info(self._path)
            READ_WAITS.add(time.perf_counter() - started)
        if info.get("type", "file") != "file":
            raise FileNotFoundError(self._path)
        return FileIdentity.of(info)

    # -- what pyarrow calls -----------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = base + offset
        return self._position

    def read(self, size: int = -1) -> bytes | memoryview:
        start = self._position
        end = self._size if size is None or size < 0 else min(self._size, start + size)
        if end <= start:
            return b""
        data = self._read_range(start, end)
        self._position = end
        return data

    def readall(self) -> bytes:
        return bytes(self.read(-1))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with self._lock:
            for part in self._parts:
                if part.future is not None and not part.future.done():
                    part.future.cancel()
                part.data = None
            self._pending.clear()
            if self._info is not None and not self._info.done():
                self._info.cancel()
        super().close()

    # -- prefetching ---------------------------------------------------------------------------

    def prefetch(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Announces the byte ranges the reader will read, in order: they are coalesced and
        requested now, up to ``readahead_bytes`` ahead of the reader. Bytes the footer's
        tail already holds are not requested again, nor ranges announced before (a split
        read ahead announces its ranges, then its reader announces the same ones)."""
        merged = coalesce(
            ranges, self._options.hole_size_limit_bytes, self._options.range_size_limit_bytes
        )
        footer_start = self._tail.start if self._tail is not None else self._size
        with self._lock:
            for start, end, needed in merged:
                end = min(end, footer_start)
                if end <= start or (start, end) in self._announced:
                    continue
                self._announced.add((start, end))
                part = _Part(start, end, min(needed, end - start))
                self._insert(part)
                self._pending.append(part)
            self._pump()

    def _read_range(self, start: int, end: int) -> bytes | memoryview:
        """The bytes ``[start, end)``: from the parts covering them (a read may span the
        last announced range and the footer's tail), fetched now where none does."""
        pieces: list[bytes | memoryview] = []
        position = start
        while position < end:
            with self._lock:
                index = bisect.bisect_right(self._starts, position) - 1
                part = self._parts[index] if index >= 0 else None
                if part is not None and part.end <= position:
                    part = None
                if part is not None and part.future is None and part.data is None:
                    self._pending.remove(part)
                    self._request(part)  # the reader got here before the budget allowed it
                following = self._starts[index + 1] if index + 1 < len(self._starts) else end
            stop = min(end, part.end if part is not None else following)
            data = self._data_of(part) if part is not None else None
            if part is None or data is None:  # not announced, or released: one ranged GET
                pieces.append(self._fetch_now(position, stop))
            else:
                # A view, not a copy: pyarrow wraps what read() returns without copying it.
                pieces.append(memoryview(data)[position - part.start : stop - part.start])
                self._consumed(part, stop - position)
            position = stop
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _consumed(self, part: _Part, n: int) -> None:
        """Releases a part once all of its wanted bytes were read (never the footer's tail:
        pyarrow may read the footer more than once)."""
        with self._lock:
            part.consumed += n
            if part.consumed >= part.needed and not part.released and part is not self._tail:
                part.released = True
                part.data = None
                self._in_budget -= part.end - part.start
                self._pump()

    def _data_of(self, part: _Part) -> bytes | None:
        """The part's bytes, waiting for them if in flight; None once released."""
        with self._lock:
            if part.data is not None or part.released:
                return part.data
            future = part.future
        if future is None:
            raise RuntimeError(f"bytes {part.start}-{part.end} of {self._path!r} never requested")
        data: bytes = READ_WAITS.wait(future)
        if len(data) != part.end - part.start:
            raise OSError(
                f"{self._path!r}: asked for bytes {part.start}-{part.end} and got "
                f"{len(data)}; the object changed since planning: replan the table"
            )
        with self._lock:
            if not part.released:
                part.data = data
        return data

    def _fetch_now(self, start: int, end: int) -> bytes:
        started = time.perf_counter()
        data: bytes = self._fs.cat_file(self._path, start=start, end=end)
        READ_WAITS.add(time.perf_counter() - started)
        return data

    def _insert(self, part: _Part) -> None:
        index = bisect.bisect_left(self._starts, part.start)
        self._starts.insert(index, part.start)
        self._parts.insert(index, part)

    def _pump(self) -> None:
        """Requests pending parts in order while the read-ahead budget allows (always one)."""
        while self._pending and (
            self._in_budget == 0
            or self._in_budget + self._pending[0].end - self._pending[0].start
            <= self._options.readahead_bytes
        ):
            self._request(self._pending.pop(0))

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        """The fsspec file system's event loop (async implementations), or None."""
        if not getattr(self._fs, "async_impl", False):
            return None
        loop: asyncio.AbstractEventLoop | None = getattr(self._fs, "loop", None)
        return loop

    def _request(self, part: _Part) -> None:
        self._in_budget += part.end - part.start
        loop = self._loop()
        if loop is not None:
            coroutine = self._fs._cat_file(self._path, start=part.start, end=part.end)
            part.future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        else:
            future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
            future.set_result(self._fs.cat_file(self._path, start=part.start, end=part.end))
            part.future = future
