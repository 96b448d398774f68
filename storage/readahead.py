"""Reading the next split ahead: a remote split's footer and column chunks are fetched while the
split before it is still decoding, so its round trips are hidden behind that work.

Owns :class:`ReadAhead`: a worker (``dpp_server/worker.py``) that holds a lease it has not
started yet calls :meth:`ReadAhead.warm` with it, and the split's reader
(:func:`storage.reader.scan_split`) :meth:`ReadAhead.claim` s what the warm-up opened. A
warm-up does exactly what the reader's own start does, on a thread of its own: open the file
(:func:`storage.remote.open_source`: the footer, unless the :class:`~storage.remote.FooterCache`
has it, and the identity HEAD, at once), check it is the file planned, parse the footer and
announce the split's column-chunk ranges (requested at once, up to the read options'
``readahead_bytes``). The reader then finds its first bytes arriving or arrived: a split
costs no round trip of its own once the one before it took longer than a round trip.

Only a remote Parquet file read in ``prefetch`` mode is warmed (local files cost no round
trips; the other modes fetch when pyarrow reads). A warm-up that fails is forgotten: the
reader opens the file itself and raises the failure with its usual message. A warm-up never
claimed (its lease handed back, its split served from the worker's cache, its worker
stopping) is closed by :meth:`ReadAhead.discard` or, failing that, when more than
``max_entries`` are held; it costs the bytes fetched, never a wrong row: a claim matches the
split (path, size, row groups, piece) and the columns read exactly.

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence

import pyarrow.fs as pafs

from storage import orc
from storage.filesystem import fsspec_filesystem_of
from storage.remote import READ_WAITS, FooterCache, ReadOptions, Source
from storage.table import SplitInfo

__all__ = ["ReadAhead"]

logger = logging.getLogger(__name__)

_Key = tuple[str, str, int, tuple[int, ...], int, int]


def _key(split: SplitInfo) -> _Key:
    return (
        split.split_id,
        split.path,
        split.file_size,
        tuple(split.row_groups),
        split.row_offset,
        split.row_limit,
    )


class ReadAhead:
    """Splits opened ahead of their reader, and the footer cache their openings share.

    Thread-safe: ``_lock`` guards the entries; warm-ups run on ``threads`` threads of their
    own (each mostly waits for its footer), so :meth:`warm` never blocks its caller.

    Args:
        footers: the footers of remote files, shared by every split read through this
            object (None: a new cache of 64 MiB).
        max_entries: warm-ups held unclaimed at most; the oldest is closed beyond that.
        threads: warm-ups running at once.
    """

    def __init__(
        self, footers: FooterCache | None = None, max_entries: int = 16, threads: int = 4
    ) -> None:
        self.footers = footers if footers is not None else FooterCache()
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[
            _Key, tuple[tuple[str, ...], concurrent.futures.Future[Source]]
        ] = OrderedDict()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max(1, threads), thread_name_prefix="dpp-split-ahead"
        )
        self.warmed = 0  # warm-ups started
        self.claimed = 0  # warm-ups a reader used

    def warm(
        self,
        split: SplitInfo,
        filesystem: pafs.FileSystem,
        file_columns: Sequence[str],
        options: ReadOptions,
    ) -> bool:
        """Starts opening ``split`` to read ``file_columns`` (the columns the file itself
        provides: projected and filter columns, partition columns excluded) and returns
        whether it did (only a remote Parquet file in ``prefetch`` mode is warmed)."""
        if (
            options.mode != "prefetch"
            or split.path.lower().endswith(orc.ORC_SUFFIXES)
            or fsspec_filesystem_of(filesystem) is None
        ):
            return False
        columns = tuple(file_columns)
        future = self._executor.submit(self._open, split, filesystem, columns, options)
        evicted = []
        with self._lock:
            old = self._entries.pop(_key(split), None)
            if old is not None:
                evicted.append(old[1])
            self._entries[_key(split)] = (columns, future)
            while len(self._entries) > self.max_entries:
                evicted.append(self._entries.popitem(last=False)[1][1])
            self.warmed += 1
        for stale in evicted:
            _close_when_done(stale)
        return True

    def claim(self, split: SplitInfo, file_columns: Sequence[str]) -> Source | None:
        """The opened source of a warmed ``split`` read for ``file_columns`` (waiting for its
        warm-up to finish), now the caller's to close; None if it was not warmed, for other
        columns, or its warm-up failed."""
        with self._lock:
            entry = self._entries.pop(_key(split), None)
        if entry is None:
            return None
        columns, future = entry
        if columns != tuple(file_columns):
            _close_when_done(future)
            return None
        try:
            source: Source = READ_WAITS.wait(future)
        except Exception as exc:  # the reader opens the file again and reports it properly
            logger.debug("reading split %s ahead failed: %s", split.split_id, exc)
            return None
        with self._lock:
            self.claimed += 1
        return source

    def discard(self, split: SplitInfo) -> None:
        """Closes ``split``'s warm-up if nobody claimed it (its lease ended without a read)."""
        with self._lock:
            entry = self._entries.pop(_key(split), None)
        if entry is not None:
            _close_when_done(entry[1])

    def close(self) -> None:
        """Closes every unclaimed warm-up and stops the threads."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for _, future in entries:
            _close_when_done(future)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _open(
        self,
        split: SplitInfo,
        filesystem: pafs.FileSystem,
        file_columns: tuple[str, ...],
        options: ReadOptions,
    ) -> Source:
        from storage.reader import open_split

        with READ_WAITS.in_background():
            return open_split(split, filesystem, file_columns, options, self.footers)


def _close_when_done(future: concurrent.futures.Future[Source]) -> None:
    """Closes a warm-up's source once it exists (at once when it does already)."""
    if future.cancel():
        return

    def close(done: concurrent.futures.Future[Source]) -> None:
        if not done.cancelled() and done.exception() is None:
            done.result().close()

    future.add_done_callback(close)
