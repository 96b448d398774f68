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
import threading
import time
from collections.abc import Callable
from typing import Protocol

from dpp_proto.wire import FrameEncoder, WireOptions
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, frame_header, produce_split
from dpp_server.produce_stats import StatsPipeline, sketch_split
from dpp_server.records import StageSeconds, WorkerCounters
from dpp_server.spec import Spec
from storage.remote import ReadOptions

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Settings of a worker.

    Attributes:
        pipeline_threads: splits processed at once. More overlaps reads with transforms and
            uses more cores; each thread holds up to one read chunk and its transformed copy.
        max_buffer_bytes: frames buffered per (session, rank) before pipeline threads wait for
            the client. More absorbs consumer jitter; less bounds memory.
        read_batch_rows: rows per record batch read from storage and transformed at once.
            Larger amortises per-call overhead; smaller bounds memory per thread. With
            ``shuffle`` a read chunk is the unit of the seeded row order, so all workers of a
            cluster must use one value for re-produced splits to repeat their batches.
        idle_sleep_s: wait before asking the master again when it has no work.
        wire_compression: ``lz4`` or ``zstd`` compresses every frame (Arrow IPC buffer
            compression; empty: none). Pays only when the trainers' link is slower than
            about 1 Gbit/s; costs worker and trainer CPU (docs/benchmarks.md).
        remote_read: how Parquet files on an object store are read: ``prefetch`` (a split's
            coalesced column-chunk ranges requested concurrently ahead of decoding, about
            two round trips per split), ``pre_buffer`` (pyarrow's coalescing, ranges one
            round trip after another) or ``readahead`` (fsspec's block cache); measured in
            docs/tables.md. Local files ignore it.
        remote_hole_size_limit_bytes: column chunks closer than this are fetched in one
            request, the gap included. More means fewer requests, more unread bytes fetched.
        remote_readahead_bytes: bytes a split's reader requests ahead of decoding
            (``prefetch``). More hides more latency; it bounds the memory each pipeline
            thread holds in fetched ranges.
    """

    pipeline_threads: int = 2
    max_buffer_bytes: int = 256 << 20
    read_batch_rows: int = 65_536
    idle_sleep_s: float = 0.05
    wire_compression: str = ""
    remote_read: str = ReadOptions.mode
    remote_hole_size_limit_bytes: int = ReadOptions.hole_size_limit_bytes
    remote_readahead_bytes: int = ReadOptions.readahead_bytes

    def __post_init__(self) -> None:
        if self.wire_compression not in ("", "lz4", "zstd"):
            raise ValueError(
                f"wire_compression {self.wire_compression!r} is not lz4, zstd or empty (none)"
            )
        self.read_options()  # validates the remote_* fields

    def read_options(self) -> ReadOptions:
        """The storage layer's read settings these fields make."""
        return ReadOptions(
            mode=self.remote_read,
            hole_size_limit_bytes=self.remote_hole_size_limit_bytes,
            readahead_bytes=self.remote_readahead_bytes,
        )


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
        self, worker_id: str, stage_seconds: StageSeconds, counters: WorkerCounters
    ) -> bool: ...

    def acquire_split(self, worker_id: str, skip: list[tuple[str, int]]) -> LeaseGrant | None: ...

    def report_split_progress(
        self, worker_id: str, lease: LeaseGrant, done: bool, error: str
    ) -> bool: ...

    def report_split_stats(self, worker_id: str, lease: LeaseGrant, payload: bytes) -> bool: ...

    def get_spec(self, session_id: str) -> Spec: ...

    def unregister(self, worker_id: str) -> None: ...


class FrameBuffer:
    """Frames ready for one (session, rank), bounded by bytes.

    Thread-safe: ``_cond`` guards ``_frames`` and ``_bytes``. Producers (pipeline threads)
    block in :meth:`put` while the buffer is full; one consumer (a client stream) takes frames
    in order with :meth:`get`.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._frames: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._closed = False

    def put(self, frame: bytes) -> None:
        """Appends a frame, waiting while the buffer is full. A frame larger than the whole
        budget is still accepted once the buffer is empty, so progress is always possible."""
        with self._cond:
            while self._bytes and self._bytes + len(frame) > self.max_bytes and not self._closed:
                self._cond.wait()
            self._frames.append(frame)
            self._bytes += len(frame)
            self._cond.notify_all()

    def get(self, timeout_s: float) -> bytes | None:
        """Takes the oldest frame, or returns None after ``timeout_s`` without one."""
        with self._cond:
            if not self._frames:
                self._cond.wait(timeout_s)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._bytes -= len(frame)
            self._cond.notify_all()
            return frame

    def full(self) -> bool:
        with self._cond:
            return self._bytes >= self.max_bytes

    def fill(self) -> tuple[int, float]:
        """Bytes buffered and their share of ``max_bytes`` (for metrics)."""
        with self._cond:
            return self._bytes, self._bytes / self.max_bytes if self.max_bytes else 0.0

    def empty(self) -> bool:
        with self._cond:
            return not self._frames

    def close(self) -> None:
        """Releases blocked producers (on shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


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
        self.address = address
        self._link = link
        self._lock = threading.Lock()
        self._buffers: dict[tuple[str, int], FrameBuffer] = {}
        self._sessions: dict[str, SessionPipeline] = {}
        self._stats_pipelines: dict[str, StatsPipeline] = {}
        self._stats = _Stats(observe)
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
            threading.Thread(target=self._heartbeat_loop, name="dpp-heartbeat", daemon=True)
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
                buffer = self._buffers[key] = FrameBuffer(self.config.max_buffer_bytes)
            return buffer

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
        while not self._stop.wait(self._registration.heartbeat_interval_s):
            seconds, counters = self._stats.snapshot()
            try:
                if not self._link.heartbeat(self.worker_id, seconds, counters):
                    logger.warning("master forgot worker %s; registering again", self.worker_id)
                    self._registration = self._link.register(
                        self.address, self.config.pipeline_threads
                    )
            except Exception:
                logger.exception("heartbeat to the master failed; will retry")

    def _pipeline_loop(self) -> None:
        while not self._stop.is_set():
            if self._draining.is_set():
                self._stop.wait(0.1)
                continue
            started = time.perf_counter()
            try:
                with self._lock:
                    skip = [key for key, buffer in self._buffers.items() if buffer.full()]
                lease = self._link.acquire_split(self.worker_id, skip)
            except Exception:
                logger.exception("acquiring a split failed; will retry")
                lease = None
                self._stop.wait(1.0)
            if lease is None:
                self._stop.wait(self.config.idle_sleep_s)
                self._stats.add_seconds("idle_s", time.perf_counter() - started)
                continue
            self._stats.add_seconds("idle_s", time.perf_counter() - started)
            if self._is_stats_session(lease.session_id):
                self._run_stats_lease(lease)
            else:
                self._run_lease(lease)

    def _run_lease(self, lease: LeaseGrant) -> None:
        buffer = self.buffer(lease.session_id, lease.rank)
        produced = lease.start_batch
        self._active.add(1)
        try:
            session = self._session(lease.session_id)
            for frame in produce_split(session, lease, self._stats):
                waited = time.perf_counter()
                buffer.put(frame)
                self._stats.add_seconds("wait_consumer_s", time.perf_counter() - waited)
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
            buffer.put(FrameEncoder.encode_empty(header))
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
            read_options=self.config.read_options(),
        )
        with self._lock:
            return self._sessions.setdefault(session_id, session)
