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

The delivery protocol, as a worked example (one session, world_size 1, batch_size 100, two
workers W1 and W2, a file journal):

    1. A client calls ``create_session(spec)``. The master validates the spec against the
       table's schema, lists files, reads footers concurrently, and plans splits S0..S3 of 250
       rows each. ``SessionCreated`` is journaled (written and fsynced) before the reply.
    2. The client calls ``begin_epoch(session, rank=0, epoch=0)`` and learns it will receive
       S0..S3 in that order (a seeded permutation when ``shuffle`` is on). ``EpochBegun`` is
       journaled; all four splits are pending.
    3. W1 calls ``acquire_split`` and gets a lease on S0 from batch 0; W2 gets S1 from batch 0
       (``SplitLeased`` journaled each time). Batches of a split are deterministic: S0 always
       yields batches 0 and 1 (100 rows each), batch 2 (50 rows), then an end frame numbered 3.
    4. W1 produces S0's frames into its buffer for (session, rank 0) and reports S0 produced.
       S0 stays W1's until the trainer acknowledges it: its frames could still die with W1.
    5. The trainer consumes S0 batches 0 and 1 and S1 batch 0. The client's ack thread sends
       ``ack_batches([(S0, 2, False), (S1, 1, False)])``; ``BatchesAcked`` is journaled.
    6. W2 dies while producing S1 (SIGKILL). It stops heartbeating; after ``lease_timeout_s``
       the master drops it (``WorkerRemoved``): S1 goes back to the front of the pending queue.
    7. W1 leases S1 again, from batch 1: the trainer already consumed batch 0. If the client
       still held a prefetched copy of batch 1 from W2, it keeps one copy (it keys batches by
       split id and batch number). No row is lost or repeated.
    8. The master is killed and restarted on the same journal. It replays every update: the
       session, the epoch, the leases (W1 still holds S1, and W1 is known, so its heartbeats
       keep the lease), the acknowledgements. While it replays, its port is closed: workers and
       clients get UNAVAILABLE and retry with capped backoff.
    9. The trainer consumes the rest; the acks mark S0..S3 done (``done`` once every batch of
       a split, its partial last one included, was consumed). The epoch is complete for rank 0.
   10. The trainer is killed and restarted from a checkpoint taken after step 5. Its loader's
       ``load_state_dict`` makes the next ``begin_epoch`` restore the consumption it recorded
       (``StreamRestored``): S0 and S1 resume after 2 and 1 batches, S2 and S3 from the start.

What each mode guarantees: in both modes every row of a rank's splits is delivered exactly once
per epoch, across worker, master and trainer failures. In deterministic mode the client also
yields the splits in the epoch's order, so the batch sequence of a rank is identical for a seed
whatever the number of workers, failures and restarts; the default mode yields batches as they
arrive, which hides a slow split. With world_size > 1 every rank yields the same number of
batches per epoch: the minimum over ranks; the surplus of the others is dropped.

Stats sessions (``dpp stats``, a spec with ``stats`` options) use the same plan, leases and
ledger, with the master as their one consumer: their one stream (epoch 0, rank 0) opens when
they are created; a worker hands in a split's sketches with :meth:`Master.report_split_stats`,
which keeps them and marks the split done in one journaled update, only while that worker
holds the lease. A worker that dies mid-split hands in nothing: its lease expires (step 6
above) and another worker sketches the split again, which then counts once.
:meth:`Master.stats_report` merges the payloads in split-id order once all are in.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dpp_proto import limits, spec_pb2
from dpp_proto.reasons import Reason
from dpp_server import state
from dpp_server.cache import output_digest
from dpp_server.errors import (
    ConflictError,
    InvalidArgumentError,
    LimitError,
    NotFoundError,
    OutOfRangeError,
    SpecError,
    UnavailableError,
)
from dpp_server.records import StageSeconds, WorkerCounters
from dpp_server.share_groups import ShareGroups
from dpp_server.spec import (
    Spec,
    check_against_schema,
    check_drift,
    spec_from_proto,
    spec_to_proto,
)
from storage import Filter, FilterError, SplitInfo, Table, check_columns, parse_filter
from storage.filesystem import is_iceberg_uri
from storage.filters import validate_types

logger = logging.getLogger(__name__)

#: After a restart, journaled workers have at least this long to heartbeat again.
RECOVERY_GRACE_S = 10.0
#: How far past a stream's first pending split (in the epoch's order) the master looks for
#: one the asking worker has cached; a deterministic session looks within its
#: ``max_splits_in_flight`` window instead.
LOCALITY_WINDOW = 32


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
            latency (10,000 footers 20 ms away take at least 10,000 / 128 x 20 ms = 1.6 s at
            128); each in-flight read holds a connection and up to 64 KB of footer.
        rank_timeout_s: a rank that made no call (BeginEpoch, AckBatches; its loader acks at
            least every few seconds while open) for this long is away: its splits are leased
            no more until it calls again, so workers do not fill buffers nobody reads.
            Shorter frees workers sooner after a trainer crashed; too short stalls a trainer
            whose master link is slow (it resumes on its next call).
        session_ttl_s: a session that no rank called (CreateSession, BeginEpoch, AckBatches,
            GetStatsReport) for this long expires: finished, or its trainers are gone. It is
            forgotten (journaled), with its progress, leases and name. A live loader acks at
            least every few seconds even while the trainer does not iterate, so only a
            stopped or dead trainer loses its session; one restored from a checkpoint
            creates it again (split ids are stable). Longer keeps a trainer stopped (SIGSTOP,
            a debugger) resumable for longer; shorter keeps the master's memory, journal
            snapshots and metrics smaller when many jobs come and go. 0: never.
        journal_compact_updates: compact the journal (snapshot + empty journal) once it holds
            this many updates beyond its snapshot, and at least as many as the snapshot
            itself, so writing snapshots costs O(1) per update however large the live state.
            Smaller restarts faster; each compaction holds the master's lock while it writes
            the snapshot (milliseconds per hundred live sessions). 0: never.
        max_sessions_per_tenant: live sessions one tenant (the identity's tenant from its
            token, issue 13) may hold; one more is RESOURCE_EXHAUSTED naming this limit, while
            every other tenant keeps creating. Bounds what one job's bug (a loop creating
            sessions) can take of the master; finished ones free their place when
            ``session_ttl_s`` expires them. 0: no limit.
    """

    heartbeat_interval_s: float = 1.0
    lease_timeout_s: float = 10.0
    acquire_retry_ms: int = 50
    plan_concurrency: int = 128
    rank_timeout_s: float = 30.0
    session_ttl_s: float = 3600.0
    journal_compact_updates: int = 10_000
    max_sessions_per_tenant: int = 1_000


@dataclasses.dataclass
class WorkerRecord:
    """What the master knows of one live worker. Guarded by the Master's lock."""

    worker_id: str
    address: str
    pipeline_threads: int
    last_heartbeat: float
    stage_seconds: StageSeconds = dataclasses.field(default_factory=StageSeconds)
    counters: WorkerCounters = dataclasses.field(default_factory=WorkerCounters)
    # Split ids its cache of produced work holds, per output digest (from its heartbeats).
    cached: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    # host:port of its data plane (dpp_proto/data_plane.py); empty: gRPC only.
    data_address: str = ""


@dataclasses.dataclass(frozen=True)
class LeaseGrant:
    """A lease handed to a worker."""

    session_id: str
    epoch: int
    rank: int
    split: SplitInfo
    start_batch: int
    #: Share group members still expected to read this split on this worker (spec ``share``;
    #: :mod:`dpp_server.share_groups`): how long the worker keeps it in its share window.
    share_readers: int = 0


@dataclasses.dataclass(frozen=True)
class SessionView:
    """A read-only description of a session."""

    session_id: str
    session_name: str
    spec: Spec
    spec_bytes: bytes
    plan: state.PlanSummary
    tenant: str = ""


@dataclasses.dataclass(frozen=True)
class StatsReport:
    """A stats session's progress, and once complete its merged report.

    Attributes:
        splits_total: splits planned.
        splits_done: splits whose sketches arrived (or that failed).
        errors: one message per failed split.
        report: the merged report (:func:`dpp_server.stats.report.build_report`), once every
            split is done and none failed; None before.
        boundaries: per dense feature, bucketize boundaries (when asked and complete).
    """

    splits_total: int
    splits_done: int
    errors: tuple[str, ...]
    report: dict[str, Any] | None
    boundaries: dict[str, list[float]]

    @property
    def complete(self) -> bool:
        return self.splits_done == self.splits_total


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
        replay_started = time.perf_counter()
        self._ledger = state.replay(self._journal)
        # Why the journal cannot be written now ("" while it can): the service then reports
        # NOT_SERVING and every change is refused with UNAVAILABLE until a write succeeds.
        self.journal_error = ""
        self._specs: dict[str, Spec] = {
            sid: spec_from_proto(_parse_spec(s.spec_bytes))
            for sid, s in self._ledger.sessions.items()
        }
        # Workers known from the journal get a fresh grace period: those still alive keep
        # heartbeating with the same id and keep their leases; the others expire.
        # The grace is at least a few seconds: gRPC clients back off before they reconnect.
        grace = max(self.config.lease_timeout_s, RECOVERY_GRACE_S) - self.config.lease_timeout_s
        recovered = self._clock() + grace
        self._workers: dict[str, WorkerRecord] = {
            w.worker_id: WorkerRecord(
                w.worker_id, w.address, w.pipeline_threads, recovered, data_address=w.data_address
            )
            for w in self._ledger.workers.values()
        }
        # Round-robin cursor over (session, epoch, rank) streams, so that no stream starves.
        self._cursor = 0
        self._digests: dict[str, str] = {}  # session id -> output digest (locality)
        # Sessions with spec ``share``, grouped by output digest (volatile: derived from the
        # specs; the recently leased splits are only a preference, lost in a restart).
        self._share = ShareGroups()
        for sid, spec in self._specs.items():
            if spec.share and spec.stats is None:
                self._share.join(sid, self._output_digest(sid))
        # Batches each rank received per (session, epoch): volatile, re-reported with acks.
        # Merged stats of finished stats sessions (MergedStats), derived from the ledger.
        self._merged: dict[str, Any] = {}
        self._received: dict[tuple[str, int], dict[int, tuple[int, bool]]] = {}
        # Splits failed per session and the last error, for `dpp top`: volatile (monitoring).
        self._failures: dict[str, tuple[int, str]] = {}
        # When each (session, rank) last called (volatile; a restart counts as a call).
        self._started = self._clock()
        self._seen: dict[tuple[str, int], float] = {}
        # When any rank last called each session (volatile; a restart counts as a call), for
        # its expiry after session_ttl_s; and how many sessions expired since the start.
        self._last_call: dict[str, float] = {}
        self.sessions_expired = 0
        # After a failed compaction, the tail length at which to try again.
        self._retry_compact = 0
        if self._ledger.sessions or self._workers:
            logger.info(
                "recovered from the journal: %d session(s), %d worker(s) in %.2fs",
                len(self._ledger.sessions),
                len(self._workers),
                time.perf_counter() - replay_started,
            )

    # -- sessions -------------------------------------------------------------------------

    def create_session(
        self, spec_proto: spec_pb2.SessionSpec, session_name: str = "", tenant: str = ""
    ) -> tuple[SessionView, bool]:
        """Validates and plans a session, or joins the session of the same name and spec.

        ``tenant``: the caller's tenant (from its identity): the session's owner; names are
        unique per tenant, so a name never joins another tenant's session.

        Returns:
            The session and whether an existing one was joined.

        Raises:
            SpecError: the spec is invalid (the message names the field).
            NotFoundError / TableNotFoundError: the table does not exist.
            ConflictError: ``session_name`` is taken by a session with another spec.
        """
        if len(session_name) > limits.MAX_NAME_CHARS:
            raise InvalidArgumentError(
                "session_name",
                limits.over_limit("", len(session_name), limits.MAX_NAME_CHARS, "characters"),
            )
        spec = spec_from_proto(spec_proto)
        _check_local_path_is_absolute(spec.table_uri)
        # The canonical form (defaults written out), so equivalent specs join the same session.
        spec_bytes = spec_to_proto(spec).SerializeToString(deterministic=True)
        if session_name:
            with self._lock:
                joined = self._join(tenant, session_name, spec_bytes)
                if joined is not None:
                    self._last_call[joined.session_id] = self._clock()
            if joined is not None:
                return joined, True
        table, partition_filter, row_filter = _check_against_table(spec)
        plan = table.plan_splits(
            spec.target_split_rows,
            partition_filter=partition_filter,
            row_filter=row_filter,
            max_concurrency=self.config.plan_concurrency,
        )
        check_drift(
            spec,
            table.schema,
            {d.column: d.types for d in plan.drift},
            row_filter.columns if row_filter is not None else (),
        )
        summary = state.PlanSummary(
            num_splits=len(plan.splits),
            num_files=plan.num_files,
            num_row_groups=plan.num_row_groups,
            num_rows=plan.num_rows,
            num_partitions=plan.num_partitions,
            planning_seconds=plan.planning_seconds,
            snapshot_id=plan.snapshot_id,
        )
        session_id = "s-" + uuid.uuid4().hex[:12]
        with self._lock:
            if session_name:
                # Another rank may have planned the same session while we did.
                joined = self._join(tenant, session_name, spec_bytes)
                if joined is not None:
                    self._last_call[joined.session_id] = self._clock()
                    return joined, True
            self._check_tenant_sessions(tenant)
            self._record(
                state.SessionCreated(
                    session_id=session_id,
                    session_name=session_name,
                    spec_bytes=spec_bytes,
                    splits=tuple(plan.splits),
                    plan=summary,
                    tenant=tenant,
                )
            )
            self._specs[session_id] = spec
            self._last_call[session_id] = self._clock()
            if spec.share and spec.stats is None:
                self._share.join(session_id, self._output_digest(session_id))
            if spec.stats is not None:
                # A stats session has one consumer, the master: its one stream opens now.
                indices = tuple(range(len(plan.splits)))
                self._record(state.EpochBegun(session_id, 0, 0, indices))
        logger.info(
            "session %s planned: %d splits, %d files, %d rows in %.2fs%s",
            session_id,
            summary.num_splits,
            summary.num_files,
            summary.num_rows,
            summary.planning_seconds,
            f" (Iceberg snapshot {summary.snapshot_id})" if summary.snapshot_id else "",
        )
        return self._view(session_id), False

    def _check_tenant_sessions(self, tenant: str) -> None:
        """Refuses a new session past ``max_sessions_per_tenant``. Holds ``_lock``."""
        most = self.config.max_sessions_per_tenant
        if most <= 0:
            return
        held = sum(1 for s in self._ledger.sessions.values() if s.tenant == tenant)
        if held >= most:
            who = f"tenant {tenant!r}" if tenant else "this client"
            raise LimitError(
                "max_sessions_per_tenant",
                f"{who} holds {held:,} live sessions, the limit of {most:,}; join an existing "
                "session (same session_name and spec), let finished ones expire "
                "(session_ttl_s), or ask the operator to raise --max-sessions-per-tenant",
            )

    def validate_spec(
        self, spec_proto: spec_pb2.SessionSpec, session_name: str = "", tenant: str = ""
    ) -> None:
        """Runs every check :meth:`create_session` runs before it plans (the spec alone, the
        session name against the tenant's sessions of that name, then the spec against the
        table's schema and partition columns), and creates nothing.

        Cheaper than planning: it lists the table's files and reads one footer, where planning
        reads every footer. Raises what :meth:`create_session` raises for a bad spec or table.
        """
        spec = spec_from_proto(spec_proto)
        if session_name:
            spec_bytes = spec_to_proto(spec).SerializeToString(deterministic=True)
            with self._lock:
                if self._join(tenant, session_name, spec_bytes) is not None:
                    return  # joining: the session's creator already checked it
        _check_against_table(spec)

    def _join(self, tenant: str, session_name: str, spec_bytes: bytes) -> SessionView | None:
        session_id = self._ledger.sessions_by_name.get((tenant, session_name))
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
                    splits_pending=s.pending_count(),
                    splits_leased=len(s.leased),
                    splits_done=len(s.done),
                )
                for (epoch, rank), s in sorted(session.streams.items())
            ]
            return self._view(session_id), streams

    def session_tenant(self, session_id: str) -> str:
        """The tenant that owns a session.

        Raises:
            NotFoundError: unknown session.
        """
        with self._lock:
            return self._session(session_id).tenant

    def begin_epoch(
        self,
        session_id: str,
        rank: int,
        epoch: int,
        restore: Sequence[tuple[str, int, bool]] | None = None,
    ) -> tuple[list[str], int]:
        """Opens an epoch for a rank (idempotent) and returns its split ids, in the epoch's
        order, and the session's number of epochs.

        Args:
            restore: a trainer checkpoint's consumption of this epoch, as
                (split_id, batches_consumed, done) triples. When given (even empty), it
                replaces what the master recorded: every lease of the (epoch, rank) is revoked
                and every split not done resumes after its consumed batches.

        Raises:
            NotFoundError: unknown session, or a split id the session does not have.
            OutOfRangeError: a rank outside world_size, or an epoch past the last.
        """
        with self._lock:
            session = self._session(session_id)
            spec = self._specs[session_id]
            self._seen[(session_id, rank)] = self._last_call[session_id] = self._clock()
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
                self._record(self._epoch_of(session, spec, epoch, rank))
                stream = session.streams[(epoch, rank)]
            if restore is not None:
                acks = self._acks_of(session, restore)
                self._record(state.StreamRestored(session_id, epoch, rank, acks))
                self._received.pop((session_id, epoch), None)
                logger.info(
                    "session %s rank %d epoch %d restored: %d split(s) done, %d in progress",
                    session_id,
                    rank,
                    epoch,
                    sum(a.done for a in acks),
                    sum(not a.done and a.batches > 0 for a in acks),
                )
            return [session.splits[i].split_id for i in stream.split_indices], spec.epochs

    @staticmethod
    def _epoch_of(
        session: state.SessionState, spec: Spec, epoch: int, rank: int
    ) -> state.EpochBegun:
        """A rank's units of an epoch: with world_size 1 every planned split in the epoch's
        order; otherwise whole splits and pieces of the tail's splits, rows balanced across
        ranks (:func:`state.rank_units`), the pieces new to the session carried along."""
        planned = session.plan.num_splits  # ``splits`` also holds earlier epochs' pieces
        order = state.split_order(planned, epoch, spec.seed, spec.shuffle)
        if spec.world_size == 1:
            return state.EpochBegun(session.session_id, epoch, rank, tuple(order))
        rows = [split.num_rows for split in session.splits[:planned]]
        indices: list[int] = []
        pieces: list[SplitInfo] = []
        for index, offset, take in state.rank_units(order, rank, spec.world_size, rows):
            if not take:
                indices.append(index)
                continue
            piece = state.piece_of(session.splits[index], offset, take)
            known = session.index_of.get(piece.split_id)
            if known is None:
                known = len(session.splits) + len(pieces)
                pieces.append(piece)
            indices.append(known)
        return state.EpochBegun(session.session_id, epoch, rank, tuple(indices), tuple(pieces))

    def ack_batches(
        self,
        session_id: str,
        rank: int,
        epoch: int,
        acks: Sequence[tuple[str, int, bool]],
        batches_received: int = 0,
        received_all: bool = False,
        reproduce: Sequence[str] = (),
    ) -> tuple[int, bool]:
        """Records what a rank's trainer consumed (journaled before returning) and returns the
        batch limit for equal batch counts across ranks.

        Args:
            acks: (split_id, batches_consumed, done) triples.
            batches_received: batches the rank has assembled in this epoch so far.
            received_all: the rank has every split of the epoch; its count is final.
            reproduce: splits the rank waited on too long without a frame: their leases are
                taken back, so another worker produces them again (after their acks).

        Returns:
            (batch_limit, final): with world_size 1, (0, False): no limit. Otherwise the
            minimum over ranks of the batches received, and whether every rank's count is
            final — the number of batches every rank yields in this epoch.
        """
        with self._lock:
            session = self._session(session_id)
            stream = session.streams.get((epoch, rank))
            if stream is None:
                raise NotFoundError(
                    f"session {session_id} has not begun epoch {epoch} for rank {rank}; call "
                    "BeginEpoch first",
                    Reason.EPOCH_NOT_BEGUN,
                )
            self._seen[(session_id, rank)] = self._last_call[session_id] = self._clock()
            if len(acks) + len(reproduce) > limits.MAX_ACKS_PER_REQUEST:
                raise LimitError(
                    "max_acks_per_request",
                    limits.over_limit(
                        "", len(acks) + len(reproduce), limits.MAX_ACKS_PER_REQUEST, "acks"
                    ),
                )
            parsed = self._acks_of(session, acks)
            fresh = tuple(
                a
                for a in parsed
                if a.split_index not in stream.done
                and (a.done or a.batches > stream.acked.get(a.split_index, 0))
            )
            if fresh:
                self._record(state.BatchesAcked(session_id, epoch, rank, fresh))
            for split_id in reproduce:
                index = self._split_index(session, split_id)
                if index in stream.leased:
                    logger.warning(
                        "rank %d of session %s waited too long on split %s (held by %s): "
                        "producing it again",
                        rank,
                        session_id,
                        split_id,
                        stream.leased[index].worker_id,
                    )
                    self._record(state.LeaseReleased(session_id, epoch, rank, index))
            world_size = self._specs[session_id].world_size
            if world_size == 1:
                return 0, False
            counts = self._received.setdefault((session_id, epoch), {})
            counts[rank] = (batches_received, received_all)
            if len(counts) < world_size:
                return 0, False
            return min(c for c, _ in counts.values()), all(f for _, f in counts.values())

    def _acks_of(
        self, session: state.SessionState, acks: Iterable[tuple[str, int, bool]]
    ) -> tuple[state.SplitAck, ...]:
        return tuple(
            state.SplitAck(self._split_index(session, split_id), batches, done)
            for split_id, batches, done in acks
        )

    # -- workers --------------------------------------------------------------------------

    def register_worker(self, address: str, pipeline_threads: int, data_address: str = "") -> str:
        """Adds a worker (journaled, so a restarted master still knows it) and returns its id.

        Args:
            data_address: where trainers stream its frames over the data plane (empty: over
                gRPC at ``address``).

        Raises:
            InvalidArgumentError: an address or the thread count is over its limit.
        """
        for field, value in (("address", address), ("data_address", data_address)):
            if len(value) > limits.MAX_ADDRESS_CHARS:
                raise InvalidArgumentError(
                    field,
                    limits.over_limit("", len(value), limits.MAX_ADDRESS_CHARS, "characters"),
                )
        if not 0 < pipeline_threads <= limits.MAX_PIPELINE_THREADS:
            raise InvalidArgumentError(
                "pipeline_threads",
                f"{pipeline_threads} is outside 1..{limits.MAX_PIPELINE_THREADS} "
                "(dpp_proto/limits.py)",
            )
        with self._lock:
            worker_id = f"w-{uuid.uuid4().hex[:10]}"
            self._record(state.WorkerRegistered(worker_id, address, pipeline_threads, data_address))
            self._workers[worker_id] = WorkerRecord(
                worker_id,
                address,
                pipeline_threads,
                last_heartbeat=self._clock(),
                data_address=data_address,
            )
        logger.info("worker %s registered at %s", worker_id, address)
        return worker_id

    def unregister_worker(self, worker_id: str) -> None:
        """A draining worker leaves: its unfinished splits go back to pending at once."""
        with self._lock:
            if worker_id not in self._workers:
                return
            released = len(self._ledger.held_by(worker_id))
            self._record(state.WorkerRemoved(worker_id))  # first: it may be refused
            del self._workers[worker_id]
        logger.info("worker %s left; %d unfinished split(s) released", worker_id, released)

    def heartbeat(
        self,
        worker_id: str,
        stage_seconds: StageSeconds,
        counters: WorkerCounters,
        cached: Mapping[str, Iterable[str]] | None = None,
    ) -> bool:
        """Records a heartbeat. Returns False when the worker is unknown (it must register
        again, e.g. after it timed out).

        Args:
            cached: the split ids the worker's cache holds per output digest (the full set,
                replacing the last), or None: unchanged. Used only to choose leases.
        """
        with self._lock:
            self._expire_workers()
            record = self._workers.get(worker_id)
            if record is None:
                return False
            record.last_heartbeat = self._clock()
            record.stage_seconds = stage_seconds
            record.counters = counters
            if cached is not None:
                record.cached = {d: frozenset(ids) for d, ids in cached.items() if ids}
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

    def session_ids(self) -> list[str]:
        """Ids of every session, in creation order (for monitoring)."""
        with self._lock:
            return list(self._ledger.sessions)

    def session_failures(self) -> dict[str, tuple[int, str]]:
        """Splits failed per session since this master started, and the last error (for
        monitoring; sessions with none are absent)."""
        with self._lock:
            return dict(self._failures)

    def session_expiry(self) -> tuple[float, int]:
        """``session_ttl_s`` and the sessions expired since this master started (monitoring)."""
        with self._lock:
            return self.config.session_ttl_s, self.sessions_expired

    def expire_sessions(self) -> list[str]:
        """Forgets sessions no rank called for ``session_ttl_s`` (journaled: a restarted
        master agrees). Returns their ids. Called periodically by the server's reaper.

        Raises:
            UnavailableError: the journal cannot be written (nothing expired then).
        """
        ttl = self.config.session_ttl_s
        if ttl <= 0:
            return []
        with self._lock:
            deadline = self._clock() - ttl
            expired = [
                sid
                for sid in self._ledger.sessions
                if self._last_call.get(sid, self._started) < deadline
            ]
            for session_id in expired:
                session = self._ledger.sessions[session_id]
                done = sum(len(s.done) for s in session.streams.values())
                total = sum(len(s.split_indices) for s in session.streams.values())
                self._record(state.SessionExpired(session_id))
                self._forget(session_id)
                self.sessions_expired += 1
                logger.info(
                    "session %s%s expired: no rank called it for %.0fs (session_ttl_s); "
                    "%d of %d split(s) of its begun epochs were done",
                    session_id,
                    f" ({session.session_name})" if session.session_name else "",
                    ttl,
                    done,
                    total,
                )
            return expired

    def _forget(self, session_id: str) -> None:
        """Drops the volatile records of a session that expired."""
        self._specs.pop(session_id, None)
        self._share.leave(session_id)
        self._last_call.pop(session_id, None)
        self._merged.pop(session_id, None)
        self._failures.pop(session_id, None)
        for key in [k for k in self._received if k[0] == session_id]:
            del self._received[key]
        for key in [k for k in self._seen if k[0] == session_id]:
            del self._seen[key]

    def expire_workers(self) -> list[str]:
        """Drops workers silent for longer than the lease timeout and releases their leases.
        Returns the dropped worker ids. Called periodically and on every heartbeat."""
        with self._lock:
            return self._expire_workers()

    def _expire_workers(self) -> list[str]:
        deadline = self._clock() - self.config.lease_timeout_s
        dead = [w for w, r in self._workers.items() if r.last_heartbeat < deadline]
        for worker_id in dead:
            released = len(self._ledger.held_by(worker_id))
            self._record(state.WorkerRemoved(worker_id))  # first: it may be refused
            del self._workers[worker_id]
            logger.warning(
                "worker %s missed heartbeats for %.1fs: dropped, %d split(s) released",
                worker_id,
                self.config.lease_timeout_s,
                released,
            )
        return dead

    # -- splits ---------------------------------------------------------------------------

    def acquire_split(
        self, worker_id: str, skip: Iterable[tuple[str, int]] = ()
    ) -> LeaseGrant | None:
        """Leases the next pending split to a worker, or returns None when there is none.

        Streams are served round-robin, so that no session or rank starves another; within a
        stream splits go in the epoch's order. A deterministic session leases only within
        ``max_splits_in_flight`` of the first split its rank has not consumed. ``skip`` names
        (session_id, rank) streams the worker cannot buffer more of right now. A split resumes
        after the batches its trainer already acknowledged. Within a stream the master may
        prefer another pending split: one the worker already produced for another member of
        the session's share group (:mod:`dpp_server.share_groups`), else one its cache holds.

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
                    "for longer than the lease timeout); register again",
                    Reason.WORKER_NOT_FOUND,
                )
            now = record.last_heartbeat = self._clock()
            away = now - self.config.rank_timeout_s
            candidates = []
            for session in self._ledger.sessions.values():
                spec = self._specs[session.session_id]
                for (epoch, rank), stream in sorted(session.streams.items()):
                    key = (session.session_id, rank)
                    if key in skipped or self._seen.get(key, self._started) < away:
                        continue
                    pos = stream.next_pending()
                    if pos is None:
                        continue
                    if spec.deterministic and pos >= stream.first_open + spec.max_splits_in_flight:
                        continue
                    candidates.append((session.session_id, epoch, rank, pos))
            if not candidates:
                return None
            self._cursor = (self._cursor + 1) % len(candidates)
            session_id, epoch, rank, pos = self._choose(worker_id, candidates)
            session = self._ledger.sessions[session_id]
            stream = session.streams[(epoch, rank)]
            split_index = stream.split_indices[pos]
            start_batch = stream.acked.get(split_index, 0)
            self._record(
                state.SplitLeased(session_id, epoch, rank, split_index, worker_id, start_batch)
            )
            split = session.splits[split_index]
            readers = self._share.leased(session_id, split.split_id, worker_id, self._sharing)
            return LeaseGrant(session_id, epoch, rank, split, start_batch, readers)

    def _choose(
        self, worker_id: str, candidates: Sequence[tuple[str, int, int, int]]
    ) -> tuple[str, int, int, int]:
        """The stream (from the round-robin cursor on) and the position in it to lease to
        ``worker_id``. A share group's stream may prefer a split the worker produced for
        another member, or defer to the next stream while every split it could take is
        being served by another worker (:meth:`ShareGroups.position`); when every stream
        defers, the cursor's takes its usual split. Holds ``_lock``."""
        n = len(candidates)
        for k in range(n):
            session_id, epoch, rank, pos = candidates[(self._cursor + k) % n]
            session = self._ledger.sessions[session_id]
            stream = session.streams[(epoch, rank)]
            spec = self._specs[session_id]
            limit = stream.first_open + spec.max_splits_in_flight if spec.deterministic else None
            shared, defer = self._share.position(
                session, stream, worker_id, pos, limit, self._workers
            )
            if shared is not None:
                return session_id, epoch, rank, shared
            if not defer:
                return (
                    session_id,
                    epoch,
                    rank,
                    self._usual_position(worker_id, session_id, epoch, rank, pos),
                )
        session_id, epoch, rank, pos = candidates[self._cursor]
        return (
            session_id,
            epoch,
            rank,
            self._usual_position(worker_id, session_id, epoch, rank, pos),
        )

    def _usual_position(
        self, worker_id: str, session_id: str, epoch: int, rank: int, pos: int
    ) -> int:
        """The position to lease in a stream by the cache's locality. Holds ``_lock``."""
        stream = self._ledger.sessions[session_id].streams[(epoch, rank)]
        spec = self._specs[session_id]
        limit = (
            stream.first_open + spec.max_splits_in_flight
            if spec.deterministic
            else pos + LOCALITY_WINDOW
        )
        return self._local_position(worker_id, session_id, stream, pos, limit)

    def _sharing(self, session_id: str) -> bool:
        """Whether a share group member still counts as a reader: a rank of it called within
        ``rank_timeout_s`` (a trainer that died is no longer waited for). Holds ``_lock``."""
        deadline = self._clock() - self.config.rank_timeout_s
        return self._last_call.get(session_id, self._started) >= deadline

    def _local_position(
        self, worker_id: str, session_id: str, stream: state.StreamProgress, pos: int, limit: int
    ) -> int:
        """Which pending split of ``stream`` to lease to ``worker_id`` (locality).

        Among the pending splits at positions ``[pos, limit)`` (``pos`` the first pending):
        the first one the worker's cache holds; else the first one no other live worker's
        cache holds (those wait a little for their holder); else ``pos``. A worker is thus
        never left idle while a split is pending, however the caches are spread: no
        starvation, only a preference. Holds ``_lock``; costs ``O(limit - pos)`` set lookups
        per worker with a cache, and nothing while no worker reports one.
        """
        holders = [r.cached for r in self._workers.values() if r.cached]
        if not holders:
            return pos
        digest = self._output_digest(session_id)
        record = self._workers.get(worker_id)
        mine = record.cached.get(digest, frozenset()) if record is not None else frozenset()
        others = [
            c[digest]
            for w, c in ((r.worker_id, r.cached) for r in self._workers.values())
            if w != worker_id and digest in c
        ]
        if not mine and not others:
            return pos
        splits = self._ledger.sessions[session_id].splits
        unclaimed: int | None = None
        for p in range(pos, min(limit, len(stream.split_indices))):
            index = stream.split_indices[p]
            if index in stream.done or index in stream.leased:
                continue
            split_id = splits[index].split_id
            if split_id in mine:
                return p
            if unclaimed is None and not any(split_id in o for o in others):
                unclaimed = p
        return pos if unclaimed is None else unclaimed

    def _output_digest(self, session_id: str) -> str:
        """The session's :func:`~dpp_server.cache.output_digest` (what workers key their
        cache by), computed once per session. Holds ``_lock``."""
        digest = self._digests.get(session_id)
        if digest is None:
            if len(self._digests) > 2 * len(self._specs) + 16:  # forget dropped sessions
                self._digests = {k: v for k, v in self._digests.items() if k in self._specs}
            digest = self._digests[session_id] = output_digest(self._specs[session_id])
        return digest

    def report_split_progress(
        self,
        worker_id: str,
        session_id: str,
        epoch: int,
        rank: int,
        split_id: str,
        done: bool,
        error: str = "",
    ) -> bool:
        """Records that a worker produced a leased split (``done``), failed it (``error``), or
        hands it back unfinished (neither: its client stopped reading, the frames are gone).

        A produced split stays with its worker until the trainer acknowledges it, so that if
        the worker dies with frames unsent, the split is produced again. A failed split is
        terminal: the trainer received an error frame naming it.

        Returns:
            False when the worker no longer holds the lease (it was released after a timeout or
            a restore: another worker produces the split now; or the session expired).
        """
        with self._lock:
            if session_id not in self._ledger.sessions:
                return False  # expired (session_ttl_s): nobody will read the split
            session = self._session(session_id)
            stream = session.streams.get((epoch, rank))
            if stream is None:
                raise NotFoundError(
                    f"session {session_id} has not begun epoch {epoch} for rank {rank}",
                    Reason.EPOCH_NOT_BEGUN,
                )
            split_index = self._split_index(session, split_id)
            lease = stream.leased.get(split_index)
            if lease is None or lease.worker_id != worker_id:
                return False
            if error and self._specs[session_id].stats is not None:
                logger.error("split %s of stats session %s failed: %s", split_id, session_id, error)
                self._record(
                    state.SplitStatsReported(session_id, epoch, rank, split_index, b"", error)
                )
            elif error:
                logger.error(
                    "split %s of session %s failed on %s: %s",
                    split_id,
                    session_id,
                    worker_id,
                    error,
                )
                failed, _ = self._failures.get(session_id, (0, ""))
                self._failures[session_id] = (failed + 1, error)
                ack = state.SplitAck(split_index, stream.acked.get(split_index, 0), True)
                self._record(state.BatchesAcked(session_id, epoch, rank, (ack,)))
            elif done:
                self._record(state.SplitProduced(session_id, epoch, rank, split_index))
            else:
                # Handed back unfinished (the worker dropped its frames: nobody read them).
                self._record(state.LeaseReleased(session_id, epoch, rank, split_index))
            return True

    # -- stats sessions (dpp stats) -------------------------------------------------------

    def report_split_stats(
        self,
        worker_id: str,
        session_id: str,
        epoch: int,
        rank: int,
        split_id: str,
        payload: bytes,
    ) -> bool:
        """Keeps a split's sketches and marks it done, in one journaled update.

        Exactly once: only the worker holding the split's lease is heard, and a done split
        takes no second payload. A worker that died mid-split handed in nothing; its lease
        expires and another worker produces the split again.

        Returns:
            False when the worker no longer holds the lease: the payload was dropped.

        Raises:
            NotFoundError: unknown session or split.
            ConflictError: the session is not a stats session.
        """
        with self._lock:
            session = self._session(session_id)
            if self._specs[session_id].stats is None:
                raise ConflictError(
                    f"session {session_id} is a training session; split sketches go only to a "
                    "stats session (created by dpp stats)"
                )
            stream = session.streams.get((epoch, rank))
            index = self._split_index(session, split_id)
            if stream is None or index in stream.done:
                return False
            lease = stream.leased.get(index)
            if lease is None or lease.worker_id != worker_id:
                return False
            self._record(state.SplitStatsReported(session_id, epoch, rank, index, payload))
            return True

    def stats_report(
        self, session_id: str, top_k: int = 20, boundary_buckets: int = 0
    ) -> StatsReport:
        """A stats session's progress; once every split is in, its merged report.

        The merge runs outside the lock (seconds for thousands of splits) and is kept, so
        polling a finished session costs nothing more. Payloads merge in split-id order, so
        the result does not depend on which worker produced which split, or when.

        Raises:
            NotFoundError: unknown session.
            ConflictError: the session is not a stats session.
            StatsError: payloads that do not merge (a worker of another version).
        """
        with self._lock:
            session = self._session(session_id)
            self._last_call[session_id] = self._clock()
            if self._specs[session_id].stats is None:
                raise ConflictError(
                    f"session {session_id} is a training session, not a stats session; "
                    "run dpp stats to measure its features"
                )
            stream = session.streams.get((0, 0))
            done = 0 if stream is None else len(stream.done)
            errors = tuple(session.stats_errors[i] for i in sorted(session.stats_errors))
            payloads = list(session.stats_payloads.values())
            total = len(session.splits)
            merged = self._merged.get(session_id)
        if done < total or errors:
            return StatsReport(total, done, errors, None, {})
        from dpp_server.stats import merge
        from dpp_server.stats.report import build_report, dense_boundaries

        if merged is None:
            merged = merge(payloads)
            with self._lock:
                self._merged[session_id] = merged
        boundaries = dense_boundaries(merged, boundary_buckets)
        return StatsReport(total, done, errors, build_report(merged, top_k=top_k), boundaries)

    # -- helpers --------------------------------------------------------------------------

    def _record(self, update: state.Update) -> None:
        """Journals an update, then applies it: nothing takes effect unrecorded.

        Raises:
            UnavailableError: the journal cannot be written (disk full, I/O error); nothing
                changed. Each later change tries again, so the master recovers by itself.
        """
        try:
            self._journal.append(update)
        except OSError as exc:
            if not self.journal_error:
                logger.error("the journal cannot be written (%s): refusing changes", exc)
            self.journal_error = str(exc)
            raise UnavailableError(
                f"the master cannot write its journal ({exc}); it refuses changes until it "
                "can (free the disk under --journal-dir); retry later"
            ) from exc
        if self.journal_error:
            logger.warning("the journal can be written again: serving")
            self.journal_error = ""
        self._ledger.apply(update)
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Compacts the journal once its tail outgrows both ``journal_compact_updates`` and
        the last snapshot (so the snapshot's O(state) cost is spread over as many updates).
        A failed compaction is only logged: the journal as it was stays in force."""
        every = self.config.journal_compact_updates
        tail = self._journal.tail_updates
        if every <= 0 or tail < max(every, self._journal.snapshot_updates, self._retry_compact):
            return
        started = time.perf_counter()
        snapshot = self._ledger.snapshot()
        try:
            self._journal.compact(snapshot)
        except OSError as exc:
            self._retry_compact = tail + every
            logger.warning(
                "compacting the journal failed (%s); it goes on uncompacted, next try after "
                "%d more update(s)",
                exc,
                every,
            )
            return
        self._retry_compact = 0
        logger.info(
            "journal compacted: %d update(s) since the last snapshot -> a snapshot of %d "
            "(%d session(s)) in %.3fs",
            tail,
            len(snapshot),
            len(self._ledger.sessions),
            time.perf_counter() - started,
        )

    def _session(self, session_id: str) -> state.SessionState:
        session = self._ledger.sessions.get(session_id)
        if session is None:
            raise NotFoundError(
                f"session {session_id!r} does not exist; create it with CreateSession first",
                Reason.SESSION_NOT_FOUND,
            )
        return session

    def _split_index(self, session: state.SessionState, split_id: str) -> int:
        index = session.index_of.get(split_id)
        if index is not None:
            return index
        raise NotFoundError(
            f"session {session.session_id} has no split {split_id!r} (a checkpoint or ack of "
            "another session's plan?); restore a checkpoint of this session",
            Reason.SPLIT_NOT_FOUND,
        )

    def _view(self, session_id: str) -> SessionView:
        session = self._ledger.sessions[session_id]
        return SessionView(
            session_id=session_id,
            session_name=session.session_name,
            spec=self._specs[session_id],
            spec_bytes=session.spec_bytes,
            plan=session.plan,
            tenant=session.tenant,
        )


def _check_against_table(spec: Spec) -> tuple[Table, Filter | None, Filter | None]:
    """Opens the spec's table and checks the spec against it: columns, types, filters.

    Returns:
        The table and the parsed partition and row filters (None when the spec has none).
    """
    table = Table.open(spec.table_uri, spec.storage_options)
    check_against_schema(spec, table.schema)
    partition_filter = row_filter = None
    if spec.partition_filter:
        partition_filter = parse_filter(spec.partition_filter, "partition_filter")
        if is_iceberg_uri(spec.table_uri):
            table.files(partition_filter)  # refuses it: Iceberg partitions are hidden
        _check_partition_columns(partition_filter, table)
        table.files(partition_filter)  # type-checks it (no I/O): ``ds > 3`` fails here
    if spec.row_filter:
        row_filter = parse_filter(spec.row_filter, "row_filter")
        validate_types(row_filter, table.schema, "row_filter")
    return table, partition_filter, row_filter


def _check_partition_columns(partition_filter: Filter, table: Table) -> None:
    """A partition filter may read partition folder keys only. A column stored in the files is
    the commonest slip (``label = 1`` as a partition filter): say so, and where it belongs."""
    stored = sorted(partition_filter.columns - set(table.partition_columns))
    if stored and stored[0] in table.schema.names:
        keys = ", ".join(table.partition_columns) or "(none: the table is not partitioned)"
        raise FilterError(
            "partition_filter",
            f"{partition_filter.text!r} refers to {stored[0]!r}, a column stored in the files, "
            f"not a partition folder key (partition columns: {keys}); move that condition to "
            "row_filter",
        )
    check_columns(partition_filter, table.partition_columns, "partition_filter")


def _parse_spec(spec_bytes: bytes) -> spec_pb2.SessionSpec:
    msg = spec_pb2.SessionSpec()
    msg.ParseFromString(spec_bytes)
    return msg


def _check_local_path_is_absolute(uri: str) -> None:
    """Refuses a relative local ``table_uri``: the master's working folder is not the
    trainer's, so resolving it here would read another table (or none). ``DppLoader`` makes
    local paths absolute before sending; this catches other clients.

    Raises:
        SpecError: naming the URI and the fix.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    if scheme.lower() in ("", "file", "local") and not rest.startswith("/"):
        raise SpecError(
            "table_uri",
            f"{uri!r} is a relative local path, which the master cannot resolve against the "
            "trainer's working folder",
            "send an absolute path (dpp_client.SessionSpec makes local paths absolute)",
        )
