"""A worker's share window: splits produced for a share group, kept in memory for its members.

Owns :class:`ShareWindow`. Sessions that set ``share`` and shape the same rows (one
:func:`~dpp_server.cache.output_digest`) form a share group in the master, which steers their
leases of a split to the worker that produced it for another member
(:meth:`dpp_server.master.Master.acquire_split`). This window is where that worker keeps the
split's transformed rows (the Arrow batches themselves, before shuffle, batching, dedup
sections and framing, which stay per session) until the other members' leases read them, so
a split is read and transformed once for the whole group. Must never import grpc or torch.

The window is bounded, and that bound is what keeps a slow job from stalling a fast one:

- At most ``max_bytes`` of entries; a new entry evicts the oldest produced first (FIFO: the
  oldest is the one every member most likely read already). A member that falls further
  behind than the window finds its entries gone and produces the split itself (or reads it
  from the disk cache, :mod:`dpp_server.cache`): never a missing or repeated row, only work
  done again.
- An entry is published only once the whole split was produced, by a producer that does not
  wait for its own trainer meanwhile (:func:`dpp_server.produce._transformed` collects the
  split first), so a member waiting for a split being produced (single flight,
  :meth:`ShareWindow.claim`) waits for production only, never for another job's trainer,
  and at most ``wait_s``.
- An entry is dropped once no reader is expected: each lease carries the number of the
  group's other members the master still expects to read the split here
  (``share_readers``), and each read sets the entry's count to it.

Worked example (window 100 MB, a group of jobs A, B, C on one spec, one worker): A's lease of
split S0 misses, claims S0 and produces it (30 MB, published). The master steers B's and C's
leases of S0 to this worker: two hits (the lease said 2 readers), then S0 is dropped. C falls behind
by 5 splits of 30 MB: S1 is evicted when S4 is published; C's lease of S1 misses and C
produces S1 itself (and publishes it: a hit for no one, evicted in turn).

Thread-safety: ``_lock`` guards the entries, the byte total and the claims; entries hold
immutable Arrow batches, read by several threads at once.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa

__all__ = ["ShareClaim", "ShareWindow"]


@dataclasses.dataclass
class _Entry:
    chunks: tuple[Any, ...]  # transformed chunks (pa.RecordBatch), or encoded frames (bytes)
    nbytes: int
    readers: int  # reads left before the entry is dropped


class ShareClaim:
    """The right to produce one key for the window: :meth:`publish` or :meth:`abort` it
    (exactly once; either wakes whoever waits in :meth:`ShareWindow.claim`). For one thread."""

    def __init__(self, window: ShareWindow, key: str) -> None:
        self._window, self.key = window, key
        self._closed = False

    def publish(self, chunks: tuple[pa.RecordBatch, ...], nbytes: int, readers: int) -> None:
        """Files the produced split: ``readers`` further leases may read it."""
        if not self._closed:
            self._closed = True
            self._window._publish(self.key, chunks, nbytes, readers)

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._window._release(self.key)


class ShareWindow:
    """Produced splits of share groups in memory, FIFO under ``max_bytes``.

    Args:
        max_bytes: the window's size (``WorkerConfig.share_window_mb``).
        count: where ``share_hits``, ``share_misses``, ``share_evictions`` and
            ``share_bytes_read`` are counted (the worker's statistics).
    """

    def __init__(self, max_bytes: int, count: Callable[[str, int], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self._count = count or (lambda name, n: None)
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._bytes = 0
        self._producing: dict[str, threading.Event] = {}

    @staticmethod
    def key(split_id: str, digest: str) -> str:
        return f"{split_id}-{digest}"

    def claim(
        self, key: str, readers: int, wait_s: float
    ) -> tuple[pa.RecordBatch, ...] | ShareClaim:
        """The split's chunks when the window holds them (a hit; the entry is kept for
        ``readers`` more leases, the lease's ``share_readers``); else the claim to produce
        them (a miss). When another thread is producing this key right
        now, waits up to ``wait_s`` for it to publish (single flight), then claims it
        alone: the caller then produces the split a second time rather than wait longer."""
        with self._lock:
            entry = self._take(key, readers)
            event = None
            if entry is None:
                event = self._producing.get(key)
                if event is None:
                    self._producing[key] = threading.Event()
        if entry is None and event is not None and event.wait(wait_s):
            with self._lock:
                entry = self._take(key, readers)
                if entry is None:
                    self._producing.setdefault(key, threading.Event())
        elif entry is None and event is not None:
            with self._lock:
                self._producing.setdefault(key, threading.Event())
        if entry is not None:
            self._count("share_hits", 1)
            self._count("share_bytes_read", entry.nbytes)
            return entry.chunks
        self._count("share_misses", 1)
        return ShareClaim(self, key)

    def frames(self, key: str, readers: int) -> tuple[bytes, ...] | None:
        """A split's encoded frames kept by :meth:`put_frames` (a hit, counted; the entry is
        kept for ``readers`` more leases), or None. No single flight: a member that misses
        batches the split's shared rows itself."""
        with self._lock:
            entry = self._take(key, readers)
        if entry is None:
            return None
        self._count("share_hits", 1)
        self._count("share_bytes_read", entry.nbytes)
        return entry.chunks

    def put_frames(self, key: str, frames: tuple[bytes, ...], readers: int) -> None:
        """Keeps a split's encoded frames (all of them, batch 0 to the end frame) for the
        ``readers`` members expected to read them with the same batch size, order and wire
        options; the rows stay kept for the others."""
        self._publish(key, frames, sum(len(f) for f in frames), readers)

    def touch(self, key: str, readers: int) -> None:
        """Sets ``key``'s expected readers to ``readers`` (the lease's count) without reading
        it: a member read the split through the other entry (rows or frames)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.readers = readers
                if readers <= 0:
                    del self._entries[key]
                    self._bytes -= entry.nbytes

    def stats(self) -> tuple[int, int]:
        """Entries and bytes held."""
        with self._lock:
            return len(self._entries), self._bytes

    # -- internals --------------------------------------------------------------------------

    def _take(self, key: str, readers: int) -> _Entry | None:
        """One read of ``key``'s entry; ``readers`` more are expected (the lease's count, which
        replaces the entry's: the master knows which members read it already), and it is
        dropped when none is. Holds ``_lock``."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.readers = readers
            if entry.readers <= 0:
                del self._entries[key]
                self._bytes -= entry.nbytes
        return entry

    def _publish(self, key: str, chunks: tuple[Any, ...], nbytes: int, readers: int) -> None:
        evicted = 0
        with self._lock:
            if readers > 0 and nbytes <= self.max_bytes:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= old.nbytes
                self._entries[key] = _Entry(chunks, nbytes, readers)
                self._bytes += nbytes
                while self._bytes > self.max_bytes:
                    _, victim = self._entries.popitem(last=False)
                    self._bytes -= victim.nbytes
                    evicted += 1
            event = self._producing.pop(key, None)
        if event is not None:
            event.set()
        if evicted:
            self._count("share_evictions", evicted)

    def _release(self, key: str) -> None:
        with self._lock:
            event = self._producing.pop(key, None)
        if event is not None:
            event.set()
