"""The worker's memory budget: how ``--memory-mb`` becomes buffer and read sizes.

Owns :class:`MemoryPlan` (a pure function of the settings) and :func:`configure_allocators`
(the process-wide allocator choices that let freed memory go back to the kernel). Must never
import grpc, torch or the master.

The budget is the whole worker process's resident memory (``VmRSS``), not only its buffers.
It is divided so (1 pipeline thread, ``--memory-mb 512``)::

    512 MB = 160  process base: interpreter, pyarrow, polars, grpc, thread stacks (measured
                  idle: 140-175 MB)
           +  88  frame buffers: a quarter of the rest, the cap of each (session, rank) buffer
           + 264  pipeline threads, shared equally: each holds a row group's compressed column
                  chunks (pre-buffered), a few decoded batches ahead (read-ahead), the filtered,
                  transformed and cut copies, and a frame being encoded. A decoded batch is
                  sized to 1/8 of the thread's share, a row group's compressed chunks may take
                  up to 1/2 of it (larger: :class:`~storage.errors.RowGroupTooLargeError`).

A plan never raises what the operator set explicitly: ``--buffer-mb`` and
``--read-batch-rows`` remain upper bounds. With ``shuffle``, a read chunk is the unit of the
seeded order, so its rows are ``read_batch_rows`` whatever the budget (see
:mod:`dpp_server.produce`); only the row-group check applies then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import os

import pyarrow as pa

__all__ = ["BASE_MB", "MemoryPlan", "configure_allocators", "keep_freed_memory"]

logger = logging.getLogger(__name__)

#: What the worker process holds before any session: measured idle 140-175 MB.
BASE_MB = 160
#: The least a plan leaves for buffers and threads together.
_MIN_WORKING_MB = 32
_MB = 1 << 20


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Sizes derived from a worker's memory budget. Immutable; shared freely.

    Attributes:
        memory_mb: the budget (0: none; every size below is then 0, meaning unbounded).
        buffer_bytes: cap of each (session, rank) frame buffer.
        thread_bytes: working memory of one pipeline thread.
    """

    memory_mb: int
    buffer_bytes: int
    thread_bytes: int

    @classmethod
    def of(cls, memory_mb: int, pipeline_threads: int, max_buffer_bytes: int) -> MemoryPlan:
        """The plan for a budget; ``max_buffer_bytes`` caps the frame buffers further.

        Raises:
            ValueError: the budget leaves less than 32 MB above the process base (the message
                names the flag and the least budget that works).
        """
        if memory_mb <= 0:
            return cls(0, max_buffer_bytes, 0)
        working_mb = memory_mb - BASE_MB
        if working_mb < _MIN_WORKING_MB:
            raise ValueError(
                f"--memory-mb {memory_mb} leaves {working_mb} MB above the worker's base of "
                f"{BASE_MB} MB (interpreter and libraries); give at least "
                f"{BASE_MB + _MIN_WORKING_MB} MB, or 0 for no budget"
            )
        working = working_mb * _MB
        buffers = min(max_buffer_bytes, working // 4)
        return cls(memory_mb, buffers, (working - buffers) // max(pipeline_threads, 1))

    @property
    def max_batch_bytes(self) -> int:
        """Decoded bytes of one read batch (0: unbounded)."""
        return self.thread_bytes // 8

    @property
    def max_row_group_bytes(self) -> int:
        """Compressed bytes of one row group's chunks that a thread may hold (0: unbounded)."""
        return self.thread_bytes // 2


#: glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Without a budget: allocations below this come from the heap (glibc's own maximum for the
#: mmap threshold on 64-bit), and the heap is trimmed only when this much is free at its top.
_MMAP_THRESHOLD_BYTES = 32 << 20
_TRIM_THRESHOLD_BYTES = 512 << 20


def keep_freed_memory() -> None:
    """Without a budget, keeps freed memory mapped for reuse instead of handing it back to
    the kernel at once; once per worker process, before production starts.

    Why: every 4 MB frame, numpy array and decoded Arrow buffer of a worker is allocated
    fresh. With the allocators' defaults (glibc maps blocks above its threshold anew and
    trims the heap soon; Arrow's mimalloc purges freed pages after 10 ms) each such block is
    faulted in and zeroed by the kernel again: 0.7-1.1M minor page faults and 2.3-4.5 kernel
    core-s per 1M rows of the DLRM job, a third of the worker's CPU. Kept, the same job takes
    0.16-0.22M faults and 0.75 kernel core-s; the peak RSS moves by 2-4% (the resident size
    then stays near the peak instead of falling back between splits:
    ``docs/worker-efficiency.md``). Under a budget :func:`configure_allocators` does the
    opposite on purpose (returning memory at once), and this is not called.

    mimalloc reads ``MIMALLOC_PURGE_DELAY`` once, early: ``python -m dpp_server worker``
    sets it before pyarrow loads (``dpp_server/__main__.py``); set here too for a worker
    started otherwise, where it applies if mimalloc has not read it yet.
    """
    os.environ.setdefault("MIMALLOC_PURGE_DELAY", "-1")
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    mallopt = getattr(ctypes.CDLL(libc_name), "mallopt", None)
    if mallopt is not None:  # glibc; other libcs keep their own policy
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)


def configure_allocators(memory_mb: int) -> str:
    """Makes freed memory return to the kernel soon, once per worker process.

    Arrow's default pool (mimalloc) and glibc's per-thread arenas keep freed pages for reuse,
    which a budget cannot see: the worker then peaks far above what it holds. Under a budget,
    Arrow allocates from jemalloc with its decay set to 0 (freed pages are returned at once)
    and glibc keeps 2 arenas. Without a budget, freed memory is kept for reuse instead
    (:func:`keep_freed_memory`).

    Returns:
        The Arrow pool's backend name now in use.
    """
    if memory_mb <= 0:
        keep_freed_memory()
        return str(pa.default_memory_pool().backend_name)
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
        pa.set_memory_pool(pool)
    except (NotImplementedError, pa.ArrowException):
        logger.info("pyarrow has no jemalloc here; keeping %s", pa.default_memory_pool())
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is not None:
            mallopt(-8, 2)  # M_ARENA_MAX: glibc's per-thread arenas hold freed memory
    return str(pa.default_memory_pool().backend_name)
