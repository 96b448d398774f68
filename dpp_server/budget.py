"""The worker's memory budget: how ``--memory-mb`` becomes buffer and read sizes.

Owns :class:`MemoryPlan` (a pure function of the settings), :func:`prepare_environment` (the
allocator settings a worker process needs before pyarrow or polars load) and
:func:`configure_allocators` (glibc's, at start). Must never import grpc, torch or the master;
pyarrow only inside functions, so :mod:`dpp_server.__main__` can call
:func:`prepare_environment` before anything loads it.

The budget is the whole worker process's resident memory (``VmRSS``: the interpreter and its
libraries' code pages included, not only buffers). It is off by default (0): measured on
the DLRM job, a worker held to 512 MB spends 1.3-1.6x the CPU per row of one without a
budget (the allocators hand freed pages back and fault them in again; smaller decode steps),
so the default keeps throughput per core and an operator who needs a bound sets one. A
budget is divided so (1 pipeline thread, ``--memory-mb 512``)::

    512 MB = 168  process base: interpreter, pyarrow, polars, grpc, thread stacks and the
                  library code pages a running pipeline touches (measured: a worker idles
                  at 142-145 MB, and at its peak 93 MB of its resident set is code)
           +  57  frame buffers: a sixth of the rest (at least 8 MB), the cap of each
                  (session, rank) buffer (``--buffer-mb`` stays an upper bound)
           + 287  pipeline threads, shared equally. A thread holds a fixed part, 60 MB (one
                  row group's column chunks decompressed, as its column readers hold their
                  pages, and dictionaries; the cut batch, the frame being encoded and gRPC's
                  copy of it), and per decoded batch :data:`BATCH_FACTOR` times its bytes
                  (the batch read ahead, polars' copies of the transform, the wire batch:
                  measured 6-9x). So a decoded batch is sized to ``(share - 60 MB) / 10``
                  (here 23 MB, about 11k DLRM rows); a row group whose column chunks,
                  decompressed, exceed half the share is refused
                  (:class:`~storage.errors.RowGroupTooLargeError`).

A worker whose threads cannot get :data:`MIN_THREAD_MB` each refuses to start, naming the
least budget that works for its thread count. A plan never raises what the operator set
explicitly: ``--buffer-mb`` and ``--read-batch-rows`` remain upper bounds.

What the allocators do under a budget (measured on the DLRM job, docs/worker-efficiency.md):
freed memory must go back to the kernel, else a budget sizes what the worker *uses* while its
resident set keeps what it *used*. pyarrow's default pool (mimalloc) and its jemalloc (1 s
decay) each kept 70-100 MB of freed pages; polars' own jemalloc kept 30-50 MB more.
``pa.jemalloc_set_decay_ms`` only changes arenas created later, so the settings travel as
environment variables read when each allocator starts: Arrow's jemalloc with a 50 ms decay
(0 cost a third more worker CPU in page faults), polars' with 0 (no measurable cost).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import os
from collections.abc import MutableMapping, Sequence

__all__ = [
    "ALLOCATOR_ENVIRONMENT",
    "BASE_MB",
    "BATCH_FACTOR",
    "BUFFER_SHARE",
    "DEFAULT_MEMORY_MB",
    "MIN_THREAD_MB",
    "THREAD_FIXED_MB",
    "MemoryPlan",
    "configure_allocators",
    "keep_freed_memory",
    "prepare_environment",
]

logger = logging.getLogger(__name__)

#: The worker's budget unless ``--memory-mb`` (``DPP_MEMORY_MB``) says otherwise: none (see
#: the module docstring for why).
DEFAULT_MEMORY_MB = 0
#: What the worker process holds before its pipeline threads' data: the idle process
#: (142-145 MB measured) plus the code pages production touches (20-30 MB).
BASE_MB = 168
#: The fixed part of one pipeline thread's working memory (see the module docstring).
THREAD_FIXED_MB = 60
#: The least working memory a pipeline thread may get: its fixed part and a few MB of decoded
#: batches (the reader's least step is 512 rows). One thread under ``--memory-mb 256`` gets
#: 74 MB (700-row DLRM steps); its worker peaked at 253-256 MB.
MIN_THREAD_MB = 64
#: The frame buffers get this fraction (1/BUFFER_SHARE) of what the base leaves.
BUFFER_SHARE = 6
#: Bytes a pipeline thread holds per decoded byte of its read batch.
BATCH_FACTOR = 10
#: The least frame buffer budget: a few frames of a 4,096-row DLRM batch (2-4 MB each).
_MIN_BUFFERS_MB = 8
_MB = 1 << 20

#: Allocator settings for a worker under a budget, read by each allocator when it starts.
ALLOCATOR_ENVIRONMENT = {
    # pyarrow: jemalloc rather than mimalloc, whose freed segments stay resident.
    "ARROW_DEFAULT_MEMORY_POOL": "jemalloc",
    "JE_ARROW_MALLOC_CONF": "dirty_decay_ms:50,muzzy_decay_ms:0",
    # polars' jemalloc (its symbols are prefixed _rjem_).
    "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",
    # glibc: two arenas (per-thread arenas each keep their freed memory).
    "MALLOC_ARENA_MAX": "2",
}


def prepare_environment(
    argv: Sequence[str], environ: MutableMapping[str, str] | None = None
) -> bool:
    """Sets :data:`ALLOCATOR_ENVIRONMENT` for a ``dpp worker`` command line under a budget.

    Must run before pyarrow and polars load (each allocator reads its settings once, when it
    starts): ``python -m dpp_server`` calls it first thing. A variable the operator already
    set is kept. ``argv`` is the command line after the program (``worker --memory-mb 256``);
    the budget is ``--memory-mb``, else ``DPP_MEMORY_MB``, else :data:`DEFAULT_MEMORY_MB`.

    Returns:
        Whether the command is a worker under a budget (and the variables were set).
    """
    env = os.environ if environ is None else environ
    command = next((a for a in argv if not a.startswith("-")), "")
    if command != "worker":
        return False
    if _budget_mb(argv, env) <= 0:
        # No budget: Arrow's mimalloc keeps freed pages for reuse (keep_freed_memory says why).
        env.setdefault("MIMALLOC_PURGE_DELAY", "-1")
        return False
    for name, value in ALLOCATOR_ENVIRONMENT.items():
        env.setdefault(name, value)
    return True


def _budget_mb(argv: Sequence[str], env: MutableMapping[str, str]) -> int:
    """The ``--memory-mb`` a worker command line will get (the CLI validates it later)."""
    raw = env.get("DPP_MEMORY_MB", str(DEFAULT_MEMORY_MB))
    for i, arg in enumerate(argv):
        if arg == "--memory-mb" and i + 1 < len(argv):
            raw = argv[i + 1]
        elif arg.startswith("--memory-mb="):
            raw = arg.split("=", 1)[1]
    try:
        return int(raw)
    except ValueError:
        return DEFAULT_MEMORY_MB  # the CLI refuses it with its own message


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
            ValueError: the budget cannot give each pipeline thread :data:`MIN_THREAD_MB`
                above the process base and the frame buffers (the message names the flag,
                the least budget that works for this many threads, and the other ways out).
        """
        if memory_mb <= 0:
            return cls(0, max_buffer_bytes, 0)
        plan = cls._divide(memory_mb, pipeline_threads, max_buffer_bytes)
        if plan is None:
            threads = max(pipeline_threads, 1)
            least = next(
                m
                for m in range(memory_mb + 1, memory_mb + 64 * 1024)
                if cls._divide(m, threads, max_buffer_bytes) is not None
            )
            raise ValueError(
                f"--memory-mb {memory_mb} is too small for {threads} pipeline thread(s): the "
                f"worker process itself takes {BASE_MB} MB (interpreter, libraries), its frame "
                f"buffers at least {_MIN_BUFFERS_MB} MB and each thread at least "
                f"{MIN_THREAD_MB} MB; give at least {least} MB, fewer --pipeline-threads, "
                "or 0 for no budget"
            )
        return plan

    @classmethod
    def _divide(
        cls, memory_mb: int, pipeline_threads: int, max_buffer_bytes: int
    ) -> MemoryPlan | None:
        """The plan, or None when a thread would get less than :data:`MIN_THREAD_MB`."""
        working = (memory_mb - BASE_MB) * _MB
        buffers = min(max_buffer_bytes, max(working // BUFFER_SHARE, _MIN_BUFFERS_MB * _MB))
        thread = (working - buffers) // max(pipeline_threads, 1)
        if thread < MIN_THREAD_MB * _MB:
            return None
        return cls(memory_mb, buffers, thread)

    @property
    def max_batch_bytes(self) -> int:
        """Decoded bytes of one read batch (0: unbounded): what a thread's share leaves
        above its fixed part, :data:`BATCH_FACTOR` times over."""
        if not self.thread_bytes:
            return 0
        return max(1, (self.thread_bytes - THREAD_FIXED_MB * _MB) // BATCH_FACTOR)

    @property
    def max_row_group_bytes(self) -> int:
        """Bytes of one row group's column chunks, decompressed, that a thread may hold (0:
        unbounded): a column reader keeps its current page decompressed, and a warehouse
        table's pages are often as large as its column chunks."""
        return self.thread_bytes // 2


#: glibc ``mallopt`` parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


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
    """Makes freed memory return to the kernel soon, once per worker process, at start.

    Under a budget, Arrow's pool must be jemalloc (set by :func:`prepare_environment` before
    pyarrow loaded; a worker started in a process that loaded it earlier switches here, with
    pyarrow's decay setting, which only reaches arenas created later). glibc keeps 2 arenas
    and serves every block of 1 MB or more (frames, numpy arrays) from its own mapping,
    returned at ``free``: glibc otherwise raises that threshold to the largest block freed so
    far, and 2-8 MB frames then stay in its heaps. Without a budget, freed memory is kept for
    reuse instead (:func:`keep_freed_memory`).

    Returns:
        The Arrow pool's backend name now in use.
    """
    import pyarrow as pa

    if memory_mb <= 0:
        keep_freed_memory()
        return str(pa.default_memory_pool().backend_name)
    if pa.default_memory_pool().backend_name != "jemalloc":
        try:
            pool = pa.jemalloc_memory_pool()
            pa.jemalloc_set_decay_ms(50)
            pa.set_memory_pool(pool)
        except (NotImplementedError, pa.ArrowException):
            logger.info("pyarrow has no jemalloc here; keeping %s", pa.default_memory_pool())
    libc_name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc_name), "mallopt", None) if libc_name else None
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, 2)
        mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        mallopt(_M_TRIM_THRESHOLD, 4 << 20)
    return str(pa.default_memory_pool().backend_name)
