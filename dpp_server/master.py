"""The master: plans sessions, hands splits to workers on demand, tracks workers.

Owns the session registry, the per-(session, epoch, rank) split queues (through the
:class:`~dpp_server.state.Ledger`) and the worker registry with heartbeats. Imports no grpc:
``master_service.py`` is the thin gRPC face that decodes requests, calls this class and encodes
the answers.

Glossary (these words, and no synonyms, everywhere in dpp):
    table: a Hive-partitioned Parquet dataset under one URI (``ds=2026-01-01/part-0.parquet``).
    partition: one Hive folder of a table; pruned by the session's partition filter.
    row group: Parquet's unit of reading; the smallest thing a split holds.
    split: a run of whole row groups of one file, with a stable id; the unit of work.
    session: one training job's request: a spec (table, filters, features, batch size, epochs,
        seed) and the plan of splits made from it.
    epoch: one pass over every split of a session.
    rank: one trainer process (consumer) of a session; each rank gets disjoint splits.
    worker: a stateless process that reads, filters and transforms splits into batches and
        streams them to ranks.
    lease: the right of one worker to produce one split's batches, until it finishes, fails, or
        stops heartbeating.
    batch: ``batch_size`` rows ready for the trainer; batches of a split are numbered from 0.
    frame: one batch (or an end-of-split marker) on the wire.

The delivery protocol, as a worked example (one session, world_size 1, two workers):

    1. A client calls ``create_session(spec)``. The master validates the spec against the
       table's schema, lists files, reads footers concurrently, and plans splits S0..S9.
    2. The client calls ``begin_epoch(session, rank=0, epoch=0)`` and learns it will receive
       S0..S9 (in the epoch's seeded order). From now on those splits are pending.
    3. Worker W1 calls ``acquire_split``: it gets a lease on S0 (start_batch 0); W2 gets S1.
    4. W1 reads S0, cuts batches 0, 1, 2 and buffers their frames for (session, rank 0),
       reporting progress; the client streams them from W1. W1 reports S0 done and leases S2.
    5. W2 dies while producing S1. It stops heartbeating; after ``lease_timeout_s`` the master
       drops W2 and releases its lease: S1 goes back to the front of the pending queue.
    6. W1 leases S1 and produces it again from batch 0. The client drops the batches of S1 it
       already has (it keys batches by split id and batch number), so each row arrives once.
    7. When the client holds every batch of S0..S9 the epoch is complete on its side.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from dpp_proto import spec_pb2
from dpp_server import state
from dpp_server.errors import ConflictError, NotFoundError, OutOfRangeError
from dpp_server.spec import Spec, check_against_schema, spec_from_proto, spec_to_proto
from storage import SplitInfo, Table, check_columns, parse_filter

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MasterConfig:
    """Settings of a master.

    Attributes:
        heartbeat_interval_s: how often workers heartbeat. Shorter detects dead workers sooner
            at the cost of more RPCs.
        lease_timeout_s: a worker silent this long is dropped and its leases released. Shorter
            recovers faster; too short drops slow-but-alive workers (their splits are then
            produced twice, which the client deduplicates but costs work).
        acquire_retry_ms: how long a worker waits before asking again when there is no work.
        plan_concurrency: footers read at once while planning. Higher hides object-store
            latency; each in-flight read holds a file handle and a footer in memory.
    """

    heartbeat_interval_s: float = 1.0
    lease_timeout_s: float = 10.0
    acquire_retry_ms: int = 50
    plan_concurrency: int = 32


@dataclasses.dataclass(frozen=True)
class StageSeconds:
    """Cumulative seconds a worker's pipeline threads spent per stage."""

    read_s: float = 0.0
    filter_s: float = 0.0
    transform_s: float = 0.0
    batch_s: float = 0.0
    serialize_s: float = 0.0
    wait_consumer_s: float = 0.0
    idle_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class WorkerCounters:
    """Cumulative counters of a worker."""

    rows_read: int = 0
    rows_out: int = 0
    batches_out: int = 0
    bytes_out: int = 0
    splits_done: int = 0


@dataclasses.dataclass
class WorkerRecord:
    """What the master knows of one live worker. Guarded by the Master's lock."""

    worker_id: str
    address: str
    pipeline_threads: int
    last_heartbeat: float
    stage_seconds: StageSeconds = dataclasses.field(default_factory=StageSeconds)
    counters: WorkerCounters = dataclasses.field(default_factory=WorkerCounters)


@dataclasses.dataclass(frozen=True)
class LeaseGrant:
    """A lease handed to a worker."""

    session_id: str
    epoch: int
    rank: int
    split: SplitInfo
    start_batch: int


@dataclasses.dataclass(frozen=True)
class SessionView:
    """A read-only description of a session."""

    session_id: str
    session_name: str
    spec: Spec
    spec_bytes: bytes
    plan: state.PlanSummary


@dataclasses.dataclass(frozen=True)
class StreamView:
    """Progress of one (epoch, rank) of a session."""

    epoch: int
    rank: int
    splits_total: int
    splits_pending: int
    splits_leased: int
    splits_done: int


class Master:
    """Plans sessions and assigns splits. Thread-safe: every public method takes ``_lock``,
    which guards the ledger and the worker registry; planning (slow I/O) runs outside it."""

    def __init__(
        self,
        config: MasterConfig | None = None,
        journal: state.Journal | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or MasterConfig()
        self._journal = journal or state.MemoryJournal()
        self._clock = clock
        self._lock = threading.Lock()
        self._ledger = state.replay(self._journal.replay())
        self._specs: dict[str, Spec] = {
            sid: spec_from_proto(_parse_spec(s.spec_bytes))
            for sid, s in self._ledger.sessions.items()
        }
        self._workers: dict[str, WorkerRecord] = {}
        self._worker_seq = itertools.count(1)
        # Round-robin cursor over (session, epoch, rank) streams, so that no stream starves.
        self._cursor = 0

    # -- sessions -------------------------------------------------------------------------

    def create_session(
        self, spec_proto: spec_pb2.SessionSpec, session_name: str = ""
    ) -> tuple[SessionView, bool]:
        """Validates and plans a session, or joins the session of the same name and spec.

        Returns:
            The session and whether an existing one was joined.

        Raises:
            SpecError: the spec is invalid (the message names the field).
            NotFoundError / TableNotFoundError: the table does not exist.
            ConflictError: ``session_name`` is taken by a session with another spec.
        """
        spec = spec_from_proto(spec_proto)
        # The canonical form (defaults written out), so equivalent specs join the same session.
        spec_bytes = spec_to_proto(spec).SerializeToString(deterministic=True)
        if session_name:
            with self._lock:
                joined = self._join(session_name, spec_bytes)
            if joined is not None:
                return joined, True
        table = Table.open(spec.table_uri, spec.storage_options)
        check_against_schema(spec, table.schema)
        partition_filter = row_filter = None
        if spec.partition_filter:
            partition_filter = parse_filter(spec.partition_filter, "partition_filter")
            check_columns(partition_filter, table.partition_columns)
        if spec.row_filter:
            row_filter = parse_filter(spec.row_filter, "row_filter")
            check_columns(row_filter, table.schema.names)
        plan = table.plan_splits(
            spec.target_split_rows,
            partition_filter=partition_filter,
            row_filter=row_filter,
            max_concurrency=self.config.plan_concurrency,
        )
        summary = state.PlanSummary(
            num_splits=len(plan.splits),
            num_files=plan.num_files,
            num_row_groups=plan.num_row_groups,
            num_rows=plan.num_rows,
            num_partitions=plan.num_partitions,
            planning_seconds=plan.planning_seconds,
        )
        session_id = "s-" + uuid.uuid4().hex[:12]
        with self._lock:
            if session_name:
                # Another rank may have planned the same session while we did.
                joined = self._join(session_name, spec_bytes)
                if joined is not None:
                    return joined, True
            self._record(
                state.SessionCreated(
                    session_id=session_id,
                    session_name=session_name,
                    spec_bytes=spec_bytes,
                    splits=tuple(plan.splits),
                    plan=summary,
                )
            )
            self._specs[session_id] = spec
        logger.info(
            "session %s planned: %d splits, %d files, %d rows in %.2fs",
            session_id,
            summary.num_splits,
            summary.num_files,
            summary.num_rows,
            summary.planning_seconds,
        )
        return self._view(session_id), False

    def _join(self, session_name: str, spec_bytes: bytes) -> SessionView | None:
        session_id = self._ledger.sessions_by_name.get(session_name)
        if session_id is None:
            return None
        if self._ledger.sessions[session_id].spec_bytes != spec_bytes:
            raise ConflictError(
                f"session name {session_name!r} is already used by session {session_id} with a "
                "different spec; pass the same spec to join it, or another session_name"
            )
        return self._view(session_id)

    def get_session(self, session_id: str) -> tuple[SessionView, list[StreamView]]:
        """The session and the progress of each begun (epoch, rank)."""
        with self._lock:
            session = self._session(session_id)
            streams = [
                StreamView(
                    epoch=epoch,
                    rank=rank,
                    splits_total=len(s.split_indices),
                    splits_pending=len(s.pending),
                    splits_leased=len(s.leased),
                    splits_done=len(s.done),
                )
                for (epoch, rank), s in sorted(session.streams.items())
            ]
            return self._view(session_id), streams

    def begin_epoch(self, session_id: str, rank: int, epoch: int) -> tuple[list[str], int]:
        """Opens an epoch for a rank (idempotent) and returns its split ids and the session's
        number of epochs.

        Raises:
            NotFoundError: unknown session.
            OutOfRangeError: a rank outside world_size, or an epoch past the last.
        """
        with self._lock:
            session = self._session(session_id)
            spec = self._specs[session_id]
            if rank >= spec.world_size:
                raise OutOfRangeError(
                    f"session {session_id} has world_size {spec.world_size}; rank {rank} is "
                    f"outside 0..{spec.world_size - 1}"
                )
            if epoch >= spec.epochs:
                raise OutOfRangeError(
                    f"session {session_id} has {spec.epochs} epoch(s); epoch {epoch} is past "
                    "the last"
                )
            stream = session.streams.get((epoch, rank))
            if stream is None:
                order = state.split_order(len(session.splits), epoch, spec.seed, spec.shuffle)
                indices = state.rank_share(order, rank, spec.world_size)
                self._record(state.EpochBegun(session_id, epoch, rank, indices))
                stream = session.streams[(epoch, rank)]
            return [session.splits[i].split_id for i in stream.split_indices], spec.epochs

    # -- workers --------------------------------------------------------------------------

    def register_worker(self, address: str, pipeline_threads: int) -> str:
        """Adds a worker and returns its id."""
        with self._lock:
            worker_id = f"w-{next(self._worker_seq)}-{uuid.uuid4().hex[:6]}"
            self._workers[worker_id] = WorkerRecord(
                worker_id, address, pipeline_threads, last_heartbeat=self._clock()
            )
        logger.info("worker %s registered at %s", worker_id, address)
        return worker_id

    def heartbeat(
        self, worker_id: str, stage_seconds: StageSeconds, counters: WorkerCounters
    ) -> bool:
        """Records a heartbeat. Returns False when the worker is unknown (it must register
        again, e.g. after it timed out)."""
        with self._lock:
            self._expire_workers()
            record = self._workers.get(worker_id)
            if record is None:
                return False
            record.last_heartbeat = self._clock()
            record.stage_seconds = stage_seconds
            record.counters = counters
            return True

    def list_workers(self) -> list[tuple[WorkerRecord, float]]:
        """Live workers with seconds since their last heartbeat, ordered by id."""
        with self._lock:
            self._expire_workers()
            now = self._clock()
            return [
                (dataclasses.replace(w), now - w.last_heartbeat)
                for w in sorted(self._workers.values(), key=lambda w: w.worker_id)
            ]

    def expire_workers(self) -> list[str]:
        """Drops workers silent for longer than the lease timeout and releases their leases.
        Returns the dropped worker ids. Called periodically and on every heartbeat."""
        with self._lock:
            return self._expire_workers()

    def _expire_workers(self) -> list[str]:
        deadline = self._clock() - self.config.lease_timeout_s
        dead = [w for w, r in self._workers.items() if r.last_heartbeat < deadline]
        for worker_id in dead:
            del self._workers[worker_id]
            released = self._ledger.leases_of(worker_id)
            for session_id, epoch, rank, split_index in released:
                self._record(state.LeaseReleased(session_id, epoch, rank, split_index))
            logger.warning(
                "worker %s missed heartbeats for %.1fs: dropped, %d lease(s) released",
                worker_id,
                self.config.lease_timeout_s,
                len(released),
            )
        return dead

    # -- splits ---------------------------------------------------------------------------

    def acquire_split(
        self, worker_id: str, skip: Iterable[tuple[str, int]] = ()
    ) -> LeaseGrant | None:
        """Leases the next pending split to a worker, or returns None when there is none.

        Streams are served round-robin, lowest epoch first within a session, so that one
        session or rank cannot starve another. ``skip`` names (session_id, rank) streams the
        worker cannot buffer more of right now.

        Raises:
            NotFoundError: the worker is unknown (it must register again).
        """
        skipped = set(skip)
        with self._lock:
            self._expire_workers()
            record = self._workers.get(worker_id)
            if record is None:
                raise NotFoundError(
                    f"worker {worker_id} is not registered (it may have missed heartbeats "
                    "for longer than the lease timeout); register again"
                )
            record.last_heartbeat = self._clock()
            candidates = [
                (session.session_id, epoch, rank)
                for session in self._ledger.sessions.values()
                for (epoch, rank), stream in sorted(session.streams.items())
                if stream.pending and (session.session_id, rank) not in skipped
            ]
            if not candidates:
                return None
            self._cursor = (self._cursor + 1) % len(candidates)
            session_id, epoch, rank = candidates[self._cursor]
            stream = self._ledger.stream(session_id, epoch, rank)
            split_index = stream.pending[0]
            start_batch = 0
            self._record(
                state.SplitLeased(session_id, epoch, rank, split_index, worker_id, start_batch)
            )
            split = self._ledger.sessions[session_id].splits[split_index]
            return LeaseGrant(session_id, epoch, rank, split, start_batch)

    def report_split_progress(
        self,
        worker_id: str,
        session_id: str,
        epoch: int,
        rank: int,
        split_id: str,
        batches_produced: int,
        done: bool,
        error: str = "",
    ) -> bool:
        """Records progress of a leased split. Returns False when the worker no longer holds
        the lease (it was released after a timeout): the worker must stop producing it."""
        with self._lock:
            session = self._session(session_id)
            stream = session.streams.get((epoch, rank))
            if stream is None:
                raise NotFoundError(
                    f"session {session_id} has not begun epoch {epoch} for rank {rank}"
                )
            split_index = self._split_index(session, split_id)
            lease = stream.leased.get(split_index)
            if lease is None or lease.worker_id != worker_id:
                return False
            if error:
                # The worker delivered an error frame to the client; the split ends there.
                logger.error(
                    "split %s of session %s failed on %s: %s",
                    split_id,
                    session_id,
                    worker_id,
                    error,
                )
            self._record(
                state.SplitProgressed(session_id, epoch, rank, split_index, batches_produced)
            )
            if done or error:
                self._record(state.SplitDone(session_id, epoch, rank, split_index))
            return True

    # -- helpers --------------------------------------------------------------------------

    def _record(self, update: state.Update) -> None:
        """Journals an update, then applies it: nothing takes effect unrecorded."""
        self._journal.append(update)
        self._ledger.apply(update)

    def _session(self, session_id: str) -> state.SessionState:
        session = self._ledger.sessions.get(session_id)
        if session is None:
            raise NotFoundError(
                f"session {session_id!r} does not exist; create it with CreateSession first"
            )
        return session

    def _split_index(self, session: state.SessionState, split_id: str) -> int:
        index = session.index_of.get(split_id)
        if index is not None:
            return index
        raise NotFoundError(f"session {session.session_id} has no split {split_id!r}")

    def _view(self, session_id: str) -> SessionView:
        session = self._ledger.sessions[session_id]
        return SessionView(
            session_id=session_id,
            session_name=session.session_name,
            spec=self._specs[session_id],
            spec_bytes=session.spec_bytes,
            plan=session.plan,
        )


def _parse_spec(spec_bytes: bytes) -> spec_pb2.SessionSpec:
    msg = spec_pb2.SessionSpec()
    msg.ParseFromString(spec_bytes)
    return msg
