"""The worker: leases splits from the master and turns them into ready frames for ranks.

Owns the orchestration ``acquire split -> produce its frames -> bounded buffer -> report``, run
by several pipeline threads (pyarrow and polars release the GIL, so threads overlap I/O and
compute), plus the heartbeat thread, the frame buffers, draining and the statistics. Producing
one split's frames (read, filter, transform, cut, dedup, encode) is
:func:`dpp_server.produce.produce_split`, a plain generator this module calls; for a stats
session (``dpp stats``) it calls :func:`dpp_server.produce_stats.sketch_split` instead and hands
the split's sketches to the master (no frames). Clients drain the
buffers through ``worker_service.py``; this module imports no grpc and reaches the master only
through the :class:`MasterLink` protocol.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from dpp_proto.wire import FrameEncoder, WireOptions
from dpp_server.budget import DEFAULT_MEMORY_MB, MemoryPlan
from dpp_server.cache import SplitCache
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, frame_header, produce_split
from dpp_server.produce_stats import StatsPipeline, sketch_split
from dpp_server.records import StageSeconds, WorkerCounters
from dpp_server.share import ShareWindow
from dpp_server.spec import Spec
from storage.readahead import ReadAhead
from storage.remote import ReadOptions

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Settings of a worker.

    Attributes:
        pipeline_threads: splits processed at once. More overlaps reads with transforms and
            uses more cores; each thread holds up to one read chunk and its transformed copy.
        max_buffer_bytes: frame bytes the worker buffers for all clients together. Each
            (session, rank) gets an equal share (at least one frame), so one session can never
            take the whole buffer; pipeline threads wait while their share is full. More
            absorbs consumer jitter; less bounds memory.
        read_batch_rows: rows per record batch read from storage and transformed at once.
            Larger amortises per-call overhead; smaller bounds memory per thread. With
            ``shuffle`` a read chunk is the unit of the seeded row order, so all workers of a
            cluster must use one value for re-produced splits to repeat their batches.
        idle_sleep_s: wait before asking the master again when it has no work.
        wire_compression: ``lz4`` or ``zstd`` compresses every frame (Arrow IPC buffer
            compression; empty: none). Pays only when the trainers' link is slower than
            about 1 Gbit/s; costs worker and trainer CPU (docs/benchmarks.md).
        memory_mb: resident memory budget of the whole worker process (its ``VmRSS``), in
            MB (0: none). The frame buffers and each thread's read sizes are derived from it
            (:mod:`dpp_server.budget`); a row group that cannot fit fails its split with an
            error naming the file and the row group's size. Less holds less and decodes in
            smaller steps (more per-call overhead); a budget too small for the pipeline
            threads is refused at start, naming the least that works.
        cache_mb: local disk kept for transformed splits, reused by later epochs and jobs
            over the same splits and features (0: no cache; :mod:`dpp_server.cache`). More
            serves more epochs and jobs from disk; it costs disk and the write on a miss.
        cache_dir: the cache's folder (empty: a new temporary folder per process). Name one
            to keep the cache across worker restarts; never share one between workers.
        share_window_mb: memory kept for splits produced for a share group (sessions whose
            spec sets ``share``; :mod:`dpp_server.share`) until the group's other sessions
            read them (0: none: each session produces its own). More lets jobs further
            apart share; a session that falls further behind than it produces its own.
        consumer_timeout_s: a (session, rank) whose client took no frame (and had no stream
            open while its buffer was empty) for this long is abandoned: its frames are
            dropped, its pipeline threads released and its splits handed back to the master
            (a live client that comes back gets them produced again). Shorter frees a crashed
            trainer's memory and threads sooner; too short re-produces the splits of a
            trainer that merely paused.
        max_streams: client streams served at once; one more is refused at once with
            RESOURCE_EXHAUSTED (its client re-dials with backoff). Each open stream holds a
            server thread (mostly asleep).
        remote_read: how Parquet files on an object store are read: ``prefetch`` (a split's
            coalesced column-chunk ranges requested concurrently ahead of decoding, about
            two round trips per split), ``pre_buffer`` (pyarrow's coalescing, ranges one
            round trip after another) or ``readahead`` (fsspec's block cache); measured in
            docs/tables.md. Local files ignore it.
        remote_hole_size_limit_bytes: column chunks closer than this are fetched in one
            request, the gap included. More means fewer requests, more unread bytes fetched.
        remote_readahead_bytes: bytes a split's reader requests ahead of decoding
            (``prefetch``). More hides more latency; it bounds the memory each pipeline
            thread holds in fetched ranges (per split: the one decoding and each read ahead).
        remote_lookahead_splits: leases each pipeline thread takes ahead of the split it is
            producing, while that split reads from an object store in ``prefetch`` mode; the
            next split's footer and column chunks are fetched while the current one decodes
            (:mod:`storage.readahead`), hiding its round trips. 0 turns it off; more hides
            more latency but holds splits other workers could take, and their fetched bytes.
            A lease held ahead is handed back when the worker drains; if it dies, the lease
            expires with it as any other.
    """

    pipeline_threads: int = 2
    max_buffer_bytes: int = 256 << 20
    read_batch_rows: int = 65_536
    idle_sleep_s: float = 0.05
    wire_compression: str = ""
    memory_mb: int = DEFAULT_MEMORY_MB
    cache_mb: int = 0
    cache_dir: str = ""
    share_window_mb: int = 256
    consumer_timeout_s: float = 30.0
    max_streams: int = 512
    remote_read: str = ReadOptions.mode
    remote_hole_size_limit_bytes: int = ReadOptions.hole_size_limit_bytes
    remote_readahead_bytes: int = ReadOptions.readahead_bytes
    remote_lookahead_splits: int = 1

    def __post_init__(self) -> None:
        if self.wire_compression not in ("", "lz4", "zstd"):
            raise ValueError(
                f"wire_compression {self.wire_compression!r} is not lz4, zstd or empty (none)"
            )
        if not 0 <= self.remote_lookahead_splits <= 4:
            raise ValueError(
                f"remote_lookahead_splits must be 0..4, got {self.remote_lookahead_splits}"
            )
        self.read_options()  # validates the remote_* fields

    def read_options(self) -> ReadOptions:
        """The storage layer's read settings these fields make."""
        return ReadOptions(
            mode=self.remote_read,
            hole_size_limit_bytes=self.remote_hole_size_limit_bytes,
            readahead_bytes=self.remote_readahead_bytes,
        )


#: How often a producer waiting on a full buffer reports its waiting time (``wait_consumer_s``).
_WAIT_REPORT_S = 0.5
#: Every this many heartbeats the cached split ids go to the master even if unchanged.
_CACHE_RESEND_BEATS = 30


@dataclasses.dataclass(frozen=True)
class Registration:
    worker_id: str
    heartbeat_interval_s: float
    lease_timeout_s: float


class MasterLink(Protocol):
    """How a worker talks to the master; ``worker_service.GrpcMasterLink`` is the real one.
    Implementations retry transient failures themselves and raise on anything else."""

    def register(self, address: str, pipeline_threads: int) -> Registration: ...

    def heartbeat(
        self,
        worker_id: str,
        stage_seconds: StageSeconds,
        counters: WorkerCounters,
        cached: Mapping[str, Sequence[str]] | None = None,
    ) -> bool:
        """Returns False when the master does not know the worker. ``cached``: the split ids
        the worker's cache holds per output digest (the full set), or None: unchanged since
        the last heartbeat."""
        ...

    def acquire_split(self, worker_id: str, skip: list[tuple[str, int]]) -> LeaseGrant | None: ...

    def report_split_progress(
        self, worker_id: str, lease: LeaseGrant, done: bool, error: str
    ) -> bool: ...

    def report_split_stats(self, worker_id: str, lease: LeaseGrant, payload: bytes) -> bool: ...

    def get_spec(self, session_id: str) -> Spec: ...

    def unregister(self, worker_id: str) -> None: ...


class FrameBuffer:
    """Frames ready for one (session, rank), bounded by bytes, with its consumer's liveness.

    Thread-safe: ``_cond`` guards every field. Producers (pipeline threads) wait in :meth:`put`
    while the buffer is full; one consumer (a client stream) takes frames in order with
    :meth:`take`. :meth:`full` and :meth:`put` use one rule (:meth:`_full`), so a pipeline
    thread that skipped no full stream when it asked for a split does not then wait on it.

    The worker shrinks ``max_bytes`` to this buffer's share of its budget as buffers come and
    go (:meth:`set_max_bytes`), and closes a buffer whose consumer went away
    (:meth:`idle_s`): blocked producers are released and the frames dropped.

    One consumer at a time: a (session, rank) is one trainer, which streams from each worker
    once. A stream that :meth:`attach` es supersedes the ones before it, which then get no
    more frames. Without that, the stream of a trainer that just died (closed, or killed and
    resumed from a checkpoint) would keep taking frames until the worker noticed the
    cancellation, and the frames it took would be lost: the resumed trainer then waited for
    the loader's liveness net (``reproduce_after_s``) to have them produced again. Worked
    example:

    1. Trainer T1 streams from W with token 1, consumes, checkpoints, and dies; its stream's
       server thread is still waiting in :meth:`take`.
    2. T2 restores the checkpoint: the master revokes the leases, W leases a split again and
       puts its first frame F here.
    3. T2's stream attaches (token 2). T1's thread wakes with F waiting, but token 1 is no
       longer the consumer (or its RPC is no longer active): it takes nothing and ends. T2's
       stream takes F.
    4. A frame a stream took but could not send (its RPC ended at the ``yield``) is put back
       at the front with :meth:`unget`, for the next consumer, in order.
    """

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._cond = threading.Condition()
        # Each frame with the lease it belongs to (None in tests), for handing leases back.
        self._frames: collections.deque[tuple[bytes, LeaseGrant | None]] = collections.deque()
        self._bytes = 0
        self._largest = 0  # the largest frame put so far: :meth:`full`'s guess of the next
        self._closed = False
        self._consumer = 0  # the token of the newest stream: the only one that takes frames
        self._attached = 0  # streams attached and not yet detached
        self._last_active = clock()

    def _full(self, frame_bytes: int) -> bool:
        """The one rule: a frame waits while others are buffered and it would overflow. A
        frame larger than the whole budget still goes in once the buffer is empty, so
        progress is always possible."""
        return self._bytes > 0 and self._bytes + frame_bytes > self.max_bytes

    def put(
        self,
        frame: bytes,
        lease: LeaseGrant | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> bool:
        """Appends a frame, waiting while the buffer is full.

        Args:
            lease: the lease the frame belongs to, handed back if the buffer is abandoned.
            on_wait: called with seconds waited, every ``_WAIT_REPORT_S`` while waiting, so
                the time spent waiting on the consumer is visible while it lasts.

        Returns:
            False when the buffer was closed (abandoned or shutting down): the frame is
            dropped and the producer should stop.
        """
        with self._cond:
            while not self._closed and self._full(len(frame)):
                started = time.perf_counter()
                self._cond.wait(_WAIT_REPORT_S)
                if on_wait is not None:
                    on_wait(time.perf_counter() - started)
            if self._closed:
                return False
            if not self._frames:
                self._last_active = self._clock()  # the consumer's clock starts now
            self._frames.append((frame, lease))
            self._bytes += len(frame)
            self._largest = max(self._largest, len(frame))
            self._cond.notify_all()
            return True

    def attach(self) -> int:
        """Makes a new stream the consumer; returns its token for :meth:`take`. Pair it with
        one :meth:`detach` when the stream ends."""
        with self._cond:
            self._consumer += 1
            self._attached += 1
            self._last_active = self._clock()
            self._cond.notify_all()  # a superseded stream waiting in take() ends now
            return self._consumer

    def detach(self) -> None:
        """A stream that attached stopped reading (its consumer's away-clock starts)."""
        with self._cond:
            self._attached = max(0, self._attached - 1)
            self._last_active = self._clock()

    def is_consumer(self, token: int) -> bool:
        with self._cond:
            return token == self._consumer

    def take(
        self, timeout_s: float, token: int | None = None, alive: Callable[[], bool] | None = None
    ) -> tuple[bytes, LeaseGrant | None] | None:
        """Takes the oldest frame and its lease, or returns None after ``timeout_s`` without
        one (at once when the buffer is closed or the caller superseded).

        Args:
            token: the caller's :meth:`attach` token; None for a caller that never attached
                (tests). A superseded token gets None at once.
            alive: whether the caller can still deliver a frame (its RPC is active); checked
                under the lock right before a frame is taken, so a dead stream takes none.
        """
        with self._cond:
            current = token is None or token == self._consumer
            if not self._frames and not self._closed and current:
                self._cond.wait(timeout_s)
            if not self._frames or (token is not None and token != self._consumer):
                return None
            if alive is not None and not alive():
                return None
            frame, lease = self._frames.popleft()
            self._bytes -= len(frame)
            self._last_active = self._clock()
            self._cond.notify_all()
            return frame, lease

    def get(
        self, timeout_s: float, token: int | None = None, alive: Callable[[], bool] | None = None
    ) -> bytes | None:
        """:meth:`take` without the lease."""
        item = self.take(timeout_s, token, alive)
        return None if item is None else item[0]

    def unget(self, frame: bytes, lease: LeaseGrant | None = None) -> None:
        """Puts back, at the front, a frame taken by :meth:`take` that could not be sent."""
        with self._cond:
            if self._closed:
                return  # abandoned meanwhile: its lease was handed back with the rest
            self._frames.appendleft((frame, lease))
            self._bytes += len(frame)
            self._cond.notify_all()

    def wake(self) -> None:
        """Wakes a consumer waiting in :meth:`take` (its RPC ended: it should stop waiting)."""
        with self._cond:
            self._cond.notify_all()

    def full(self) -> bool:
        """Whether a frame as large as the largest so far would wait in :meth:`put`."""
        with self._cond:
            return self._full(self._largest)

    def set_max_bytes(self, max_bytes: int) -> None:
        with self._cond:
            self.max_bytes = max_bytes
            self._cond.notify_all()

    def fill(self) -> tuple[int, float]:
        """Bytes buffered and their share of ``max_bytes`` (for metrics)."""
        with self._cond:
            return self._bytes, self._bytes / self.max_bytes if self.max_bytes else 0.0

    def empty(self) -> bool:
        with self._cond:
            return not self._frames

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def idle_s(self) -> float:
        """Seconds the consumer has been away: 0 while a stream is attached and has taken
        everything; otherwise the time since a stream last took a frame, attached or
        detached, or since a frame arrived in an empty buffer."""
        with self._cond:
            if self._attached and not self._frames:
                return 0.0
            return self._clock() - self._last_active

    def close(self) -> list[LeaseGrant]:
        """Releases blocked producers and drops the frames (abandoned, or shutting down).

        Returns:
            The leases whose frames were dropped, once each, to hand back to the master.
        """
        with self._cond:
            self._closed = True
            leases = {id(lease): lease for _, lease in self._frames if lease is not None}
            self._frames.clear()
            self._bytes = 0
            self._cond.notify_all()
            return list(leases.values())


class _ActiveSplits:
    """A count a drain waits to see at zero (splits being produced, client streams open).
    Thread-safe: ``_cond`` guards ``_count``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    def add(self, delta: int) -> None:
        with self._cond:
            self._count += delta
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, max(timeout_s, 0.0))


class _Stats:
    """Cumulative stage seconds and counters; the :class:`~dpp_server.produce.StageRecorder` of
    every pipeline thread. Thread-safe: ``_lock`` guards both dicts."""

    def __init__(self, observe: Callable[[str, float], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = collections.defaultdict(float)
        self._counts: dict[str, int] = collections.defaultdict(int)
        self._observe = observe  # metrics hook (dpp_server/metrics.py), thread-safe itself

    def add_seconds(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] += seconds
        if self._observe is not None:
            self._observe(stage, seconds)

    def add_count(self, name: str, n: int) -> None:
        with self._lock:
            self._counts[name] += n
        if self._observe is not None:
            self._observe(name, n)

    def snapshot(self) -> tuple[StageSeconds, WorkerCounters]:
        with self._lock:
            fields = {f.name for f in dataclasses.fields(StageSeconds)}
            seconds = StageSeconds(**{k: v for k, v in self._seconds.items() if k in fields})
            names = {f.name for f in dataclasses.fields(WorkerCounters)}
            counts = WorkerCounters(**{k: v for k, v in self._counts.items() if k in names})
        return seconds, counts


class Worker:
    """Runs the pipeline threads and the heartbeat thread of one worker process.

    Thread-safe: ``_lock`` guards ``_buffers``, ``_sessions`` and ``_stats_pipelines``;
    statistics have their own lock.
    """

    def __init__(
        self,
        link: MasterLink,
        address: str,
        config: WorkerConfig | None = None,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.config = config or WorkerConfig()
        self.memory = MemoryPlan.of(
            self.config.memory_mb, self.config.pipeline_threads, self.config.max_buffer_bytes
        )
        self.address = address
        self._link = link
        self._lock = threading.Lock()
        self._buffers: dict[tuple[str, int], FrameBuffer] = {}
        self._sessions: dict[str, SessionPipeline] = {}
        self._stats_pipelines: dict[str, StatsPipeline] = {}
        self._stats = _Stats(observe)
        self.cache: SplitCache | None = None
        if self.config.cache_mb > 0:
            directory = self.config.cache_dir or tempfile.mkdtemp(prefix="dpp-cache-")
            self.cache = SplitCache(directory, self.config.cache_mb << 20, self._stats.add_count)
        self.share: ShareWindow | None = None
        if self.config.share_window_mb > 0:
            self.share = ShareWindow(self.config.share_window_mb << 20, self._stats.add_count)
        # Splits leased ahead and opened early (remote reads); their footers, cached per file.
        lookahead = self.config.pipeline_threads * self.config.remote_lookahead_splits
        self.read_ahead = ReadAhead(max_entries=2 * lookahead + 2, threads=max(1, lookahead))
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._active = _ActiveSplits()
        # Client streams open now (worker_service counts them): a drain with none left has
        # nobody to hand its buffered frames to.
        self.streams = _ActiveSplits()
        self._threads: list[threading.Thread] = []
        self._registration: Registration | None = None

    @property
    def worker_id(self) -> str:
        return self._registration.worker_id if self._registration else ""

    def start(self) -> None:
        """Registers with the master and starts the threads."""
        self._registration = self._link.register(self.address, self.config.pipeline_threads)
        logger.info("worker %s serving at %s", self.worker_id, self.address)
        self._threads = [
            threading.Thread(target=self._heartbeat_loop, name="dpp-heartbeat", daemon=True),
            threading.Thread(target=self._sweep_loop, name="dpp-buffer-sweeper", daemon=True),
        ] + [
            threading.Thread(target=self._pipeline_loop, name=f"dpp-pipeline-{i}", daemon=True)
            for i in range(self.config.pipeline_threads)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops taking splits and releases every thread."""
        self._stop.set()
        with self._lock:
            buffers = list(self._buffers.values())
        for buffer in buffers:
            buffer.close()
        for thread in self._threads:
            thread.join(timeout_s)
        self.read_ahead.close()

    def drain(self, timeout_s: float = 30.0, unattended_s: float = 2.0) -> None:
        """Leaves gracefully (on SIGTERM): stops taking splits, finishes the ones in hand,
        waits for clients to take the buffered frames, then unregisters, which hands back
        whatever is unfinished or unacknowledged. Bounded by ``timeout_s``; it also stops
        waiting once no client has streamed for ``unattended_s`` (nobody would take the
        frames: the splits are handed back instead)."""
        self._draining.set()
        deadline = time.monotonic() + timeout_s
        logger.info("worker %s draining (up to %.0fs)", self.worker_id, timeout_s)
        attended = time.monotonic()
        finished = False
        while time.monotonic() < deadline:
            with self._lock:
                buffers = list(self._buffers.values())
            if self._active.wait_idle(0) and all(b.empty() for b in buffers):
                finished = True
                break
            if self.streams.wait_idle(0):
                if time.monotonic() - attended > unattended_s:
                    break
            else:
                attended = time.monotonic()
            time.sleep(0.05)
        try:
            self._link.unregister(self.worker_id)
        except Exception:
            logger.exception("unregistering from the master failed; leases will expire instead")
        logger.info(
            "worker %s drained (%s)",
            self.worker_id,
            "all splits finished and taken" if finished else "splits handed back",
        )
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def buffer(self, session_id: str, rank: int) -> FrameBuffer:
        """The frame buffer of a (session, rank), created on first use by either side."""
        with self._lock:
            key = (session_id, rank)
            buffer = self._buffers.get(key)
            if buffer is None:
                buffer = self._buffers[key] = FrameBuffer(self.memory.buffer_bytes)
                self._share_budget()
            return buffer

    def _share_budget(self) -> None:
        """Gives every buffer an equal share of the buffer budget (``max_buffer_bytes``, or
        less under ``memory_mb``: :mod:`dpp_server.budget`). Holds ``_lock``."""
        share = self.memory.buffer_bytes // max(1, len(self._buffers))
        for buffer in self._buffers.values():
            buffer.set_max_bytes(share)

    def sweep(self) -> int:
        """Abandons the buffers whose consumer stayed away for ``consumer_timeout_s``: drops
        their frames, releases their producers and hands their splits back to the master.
        Idle empty buffers (and compiled pipelines of sessions with none left) are forgotten,
        so a worker's state stays flat however many sessions it served. Called every second
        by the sweeper thread. Returns the number of buffers removed."""
        timeout_s = self.config.consumer_timeout_s
        with self._lock:
            stale = {k: b for k, b in self._buffers.items() if b.idle_s() > timeout_s}
            for key in stale:
                del self._buffers[key]
            live_sessions = {session_id for session_id, _ in self._buffers}
            for session_id in [s for s in self._sessions if s not in live_sessions]:
                del self._sessions[session_id]
            if stale:
                self._share_budget()
        for (session_id, rank), buffer in stale.items():
            buffered, _ = buffer.fill()
            leases = buffer.close()
            if buffered or leases:
                logger.warning(
                    "session %s rank %d: no client took a frame for %.0fs (consumer_timeout_s):"
                    " dropped %d buffered bytes, handing %d split(s) back to the master",
                    session_id,
                    rank,
                    timeout_s,
                    buffered,
                    len(leases),
                )
            for lease in leases:
                self._release(lease)
        return len(stale)

    def stats(self) -> tuple[StageSeconds, WorkerCounters]:
        return self._stats.snapshot()

    def buffer_fill(self) -> tuple[int, float]:
        """Bytes buffered over all (session, rank) buffers, and the fullest one's fill."""
        with self._lock:
            fills = [b.fill() for b in self._buffers.values()]
        return sum(f[0] for f in fills), max((f[1] for f in fills), default=0.0)

    # -- threads --------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        assert self._registration is not None  # set in start() before the thread runs
        sent: int | None = None  # the cache generation the master last received
        beats = 0
        while not self._stop.wait(self._registration.heartbeat_interval_s):
            seconds, counters = self._stats.snapshot()
            cached: dict[str, list[str]] | None = None
            generation = 0
            if self.cache is None:
                cached = {} if sent is None else None
            else:
                generation, held = self.cache.held()
                # Resent now and then as well: a master restored from its journal knows the
                # worker but not its cache.
                if generation != sent or beats % _CACHE_RESEND_BEATS == 0:
                    cached = held
            beats += 1
            try:
                if not self._link.heartbeat(self.worker_id, seconds, counters, cached):
                    logger.warning("master forgot worker %s; registering again", self.worker_id)
                    self._registration = self._link.register(
                        self.address, self.config.pipeline_threads
                    )
                    sent = None
                elif cached is not None:
                    sent = generation
            except Exception:
                logger.exception("heartbeat to the master failed; will retry")

    def _sweep_loop(self) -> None:
        while not self._stop.wait(min(1.0, self.config.consumer_timeout_s / 4)):
            try:
                self.sweep()
            except Exception:
                logger.exception("sweeping abandoned frame buffers failed; will retry")

    def _pipeline_loop(self) -> None:
        # Leases taken ahead of the one being produced, not started yet (read-ahead across
        # splits, remote reads only: :meth:`_lease_ahead`). The master sees them as leased to
        # this worker like any other: produced next, handed back on drain, or expiring with
        # the worker if it dies (on stop they go back with the unregistering).
        ahead: collections.deque[LeaseGrant] = collections.deque()
        while not self._stop.is_set():
            if self._draining.is_set():
                while ahead:
                    held = ahead.popleft()
                    self.read_ahead.discard(held.split)
                    self._release(held)
                self._stop.wait(0.1)
                continue
            lease = ahead.popleft() if ahead else self._acquire(wait_idle=True)
            if lease is None:
                continue
            if self._is_stats_session(lease.session_id):
                self._run_stats_lease(lease)
            else:
                self._lease_ahead(lease, ahead)
                self._run_lease(lease)
            self.read_ahead.discard(lease.split)  # opened ahead but never read: close it

    def _acquire(self, wait_idle: bool) -> LeaseGrant | None:
        """Asks the master for a split, skipping the streams whose buffer is full. With
        ``wait_idle``, sleeps ``idle_sleep_s`` when there is none (time counted as idle)."""
        started = time.perf_counter()
        try:
            with self._lock:
                skip = [key for key, buffer in self._buffers.items() if buffer.full()]
            lease = self._link.acquire_split(self.worker_id, skip)
        except Exception:
            logger.exception("acquiring a split failed; will retry")
            lease = None
            if wait_idle:
                self._stop.wait(1.0)
        if lease is None and wait_idle:
            self._stop.wait(self.config.idle_sleep_s)
        self._stats.add_seconds("idle_s", time.perf_counter() - started)
        return lease

    def _lease_ahead(self, lease: LeaseGrant, ahead: collections.deque[LeaseGrant]) -> None:
        """Read-ahead across splits: while ``lease`` reads from an object store, takes up to
        ``remote_lookahead_splits`` more leases and starts fetching their footers and column
        chunks, so the next split's round trips overlap this one's decoding. Local reads take
        nothing ahead (their round trips cost microseconds; holding splits would only keep
        them from other workers)."""
        limit = self.config.remote_lookahead_splits
        try:
            if limit == 0 or not self._session(lease.session_id).reads_ahead:
                return
        except Exception:
            return  # the spec cannot be fetched: _run_lease reports it
        while len(ahead) < limit and not self._draining.is_set() and not self._stop.is_set():
            following = self._acquire(wait_idle=False)
            if following is None:
                return
            ahead.append(following)
            try:
                if not self._is_stats_session(following.session_id):
                    self._session(following.session_id).read_ahead_split(following)
            except Exception:
                logger.debug("reading split %s ahead failed", following.split.split_id)

    def _run_lease(self, lease: LeaseGrant) -> None:
        buffer = self.buffer(lease.session_id, lease.rank)
        produced = lease.start_batch
        self._active.add(1)
        try:
            session = self._session(lease.session_id)
            for frame in produce_split(session, lease, self._stats):
                if not buffer.put(frame, lease, self._waited_on_consumer):
                    if not self._stop.is_set():
                        self._release(lease)  # abandoned: nobody reads this (session, rank)
                    return
                produced += 1
                if self._stop.is_set():
                    return  # the lease expires or is released by unregister; nothing is lost
        except Exception as exc:
            message = (
                f"worker {self.worker_id} failed on split {lease.split.split_id} "
                f"({lease.split.path}, row groups {list(lease.split.row_groups)}): "
                f"{type(exc).__name__}: {exc}"
            )
            logger.exception("%s", message)
            header = frame_header(lease, produced, last=True, error=message)
            buffer.put(FrameEncoder.encode_empty(header), lease)
            self._report(lease, message)
            return
        finally:
            self._active.add(-1)
        self._report(lease, "")
        self._stats.add_count("splits_done", 1)
        self._stats.add_count("rows_scanned", lease.split.num_rows)

    def _is_stats_session(self, session_id: str) -> bool:
        """Whether the session measures instead of streaming (``dpp stats``). A spec that
        cannot be fetched counts as a training session, whose error path reports it."""
        try:
            return self._session(session_id).spec.stats is not None
        except Exception:
            return False

    def _run_stats_lease(self, lease: LeaseGrant) -> None:
        """Sketches a split of a stats session and hands the payload to the master, which
        keeps it as the split's acknowledgement (nothing goes to the frame buffers)."""
        self._active.add(1)
        try:
            try:
                with self._lock:
                    pipeline = self._stats_pipelines.get(lease.session_id)
                if pipeline is None:
                    spec = self._session(lease.session_id).spec
                    pipeline = StatsPipeline.compile(
                        spec, self.config.read_batch_rows, self.config.read_options()
                    )
                    with self._lock:
                        pipeline = self._stats_pipelines.setdefault(lease.session_id, pipeline)
                payload = sketch_split(pipeline, lease, self._stats)
            except Exception as exc:
                message = (
                    f"worker {self.worker_id} failed on split {lease.split.split_id} "
                    f"({lease.split.path}, row groups {list(lease.split.row_groups)}): "
                    f"{type(exc).__name__}: {exc}"
                )
                logger.exception("%s", message)
                self._report(lease, message)
                return
            if self._stop.is_set():
                return  # the lease expires or is released by unregister; nothing is lost
            self._hand_in_stats(lease, payload)
        finally:
            self._active.add(-1)
        self._stats.add_count("splits_done", 1)
        self._stats.add_count("rows_scanned", lease.split.num_rows)

    def _hand_in_stats(self, lease: LeaseGrant, payload: bytes, attempts: int = 5) -> None:
        """Sends a split's sketches to the master, a few times over: a payload bigger than
        gRPC's retry buffer is not retried by the channel. If it never arrives, the split is
        reported failed, so the stats session ends with an error instead of waiting forever."""
        for attempt in range(attempts):
            try:
                if not self._link.report_split_stats(self.worker_id, lease, payload):
                    logger.warning(
                        "lease on split %s was taken back meanwhile; its sketches were dropped",
                        lease.split.split_id,
                    )
                return
            except Exception:
                logger.exception(
                    "handing split %s's sketches to the master failed (attempt %d of %d)",
                    lease.split.split_id,
                    attempt + 1,
                    attempts,
                )
                if self._stop.wait(min(2.0**attempt, 10.0)):
                    return
        self._report(
            lease,
            f"worker {self.worker_id} could not hand in split {lease.split.split_id}'s "
            f"sketches after {attempts} attempts; see its log",
        )

    def _waited_on_consumer(self, seconds: float) -> None:
        self._stats.add_seconds("wait_consumer_s", seconds)

    def _release(self, lease: LeaseGrant) -> None:
        """Hands a lease back unfinished (its frames will not reach the client): the master
        makes the split pending again, from its acknowledged batches. Only logged when the
        master cannot be reached: the worker's heartbeats keep the lease, and the trainer's
        re-production request or the session's expiry frees it then."""
        try:
            self._link.report_split_progress(self.worker_id, lease, False, "")
        except Exception:
            logger.exception("handing split %s back to the master failed", lease.split.split_id)

    def _report(self, lease: LeaseGrant, error: str) -> None:
        """Tells the master a split is produced (or failed). A report that cannot reach the
        master is only logged: the trainer's acknowledgements complete the split anyway."""
        try:
            if not self._link.report_split_progress(self.worker_id, lease, True, error):
                # Another worker holds the split now; the client drops whichever copy of a
                # batch arrives second.
                logger.warning("lease on split %s was taken back meanwhile", lease.split.split_id)
        except Exception:
            logger.exception("reporting split %s to the master failed", lease.split.split_id)

    def _session(self, session_id: str) -> SessionPipeline:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is not None:
            return session
        spec = self._link.get_spec(session_id)
        session = SessionPipeline.compile(
            spec,
            self.config.read_batch_rows,
            WireOptions(compression=self.config.wire_compression or None),
            max_batch_bytes=self.memory.max_batch_bytes,
            max_row_group_bytes=self.memory.max_row_group_bytes,
            cache=self.cache,
            read_options=self.config.read_options(),
            share=self.share,
            read_ahead=self.read_ahead,
        )
        with self._lock:
            return self._sessions.setdefault(session_id, session)
