"""The session/split ledger: the master's durable state, changed only by applying typed updates.

Owns: which sessions exist and what each planned; which workers are registered; which epochs
each rank has begun; and for every (session, epoch, rank) which splits are pending, leased (to
which worker, from which batch), produced (by which worker, awaiting the trainer) and done
(consumed by the trainer), with the number of batches the trainer acknowledged per split.
For a stats session (``dpp stats``) a split is done when its lease holder hands in its
sketches, which the ledger keeps (journaled with the update, so a restarted master still has
them).

Every change goes through :meth:`Ledger.apply` with one of the ``*`` update dataclasses below,
and :meth:`Ledger.apply` is the only code that mutates the ledger. That is what makes the state
journal-able: the :class:`~dpp_server.journal.FileJournal` records the same updates in order
(fsynced before the master answers), and replaying them onto an empty ledger rebuilds the state
exactly (tf.data service's ``DispatcherState::Apply``).

Must never import grpc, torch or the transport modules. Not thread-safe by itself: the
:class:`dpp_server.master.Master` that owns a ledger serialises every call under its lock.

Worker *liveness* (heartbeat times, stage timings) is deliberately not here: it is volatile,
re-learned after a restart, and would flood a journal. Worker *registration* is here, so that a
restarted master still recognises the workers (and their leases) that keep heartbeating.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from storage import SplitInfo


@dataclasses.dataclass(frozen=True)
class PlanSummary:
    """Figures of a session's plan, reported to users."""

    num_splits: int
    num_files: int
    num_row_groups: int
    num_rows: int
    num_partitions: int
    planning_seconds: float
    # The Iceberg snapshot planned (0: not an Iceberg table); journaled with the session, so
    # a restarted master still reports what every epoch reads.
    snapshot_id: int = 0


@dataclasses.dataclass(frozen=True)
class SessionCreated:
    """A session was planned. ``spec_bytes`` is the canonical serialized SessionSpec proto;
    ``tenant`` the creator's tenant (from its identity, never from the request): only that
    tenant's trainers may use the session, and its name is unique within the tenant."""

    session_id: str
    session_name: str
    spec_bytes: bytes
    splits: tuple[SplitInfo, ...]
    plan: PlanSummary
    tenant: str = ""


@dataclasses.dataclass(frozen=True)
class WorkerRegistered:
    worker_id: str
    address: str
    pipeline_threads: int
    #: the worker's data-plane address (empty: none; journals written before it lack it)
    data_address: str = ""


@dataclasses.dataclass(frozen=True)
class WorkerRemoved:
    """A worker left (drained) or was dropped (silent too long). Its unfinished splits go back
    to the front of their pending queues."""

    worker_id: str


@dataclasses.dataclass(frozen=True)
class EpochBegun:
    """A rank opened an epoch; ``split_indices`` is its split order for that epoch.

    ``pieces``: pieces of splits (row ranges, see :func:`rank_units`) this rank reads in the
    epoch that the session does not have yet; they are appended to the session's splits, in
    order, before ``split_indices`` is read, so an index may name one of them.
    """

    session_id: str
    epoch: int
    rank: int
    split_indices: tuple[int, ...]
    pieces: tuple[SplitInfo, ...] = ()


@dataclasses.dataclass(frozen=True)
class SplitLeased:
    """A worker took the lease of one split, to produce its batches from ``start_batch`` on."""

    session_id: str
    epoch: int
    rank: int
    split_index: int
    worker_id: str
    start_batch: int


@dataclasses.dataclass(frozen=True)
class SplitProduced:
    """The lease holder produced every batch of the split; it stays the worker's until the
    trainer acknowledges them all (if the worker dies first, its frames may be lost)."""

    session_id: str
    epoch: int
    rank: int
    split_index: int


@dataclasses.dataclass(frozen=True)
class SplitAck:
    """A trainer consumed ``batches`` batches of a split (from batch 0); ``done``: all of it."""

    split_index: int
    batches: int
    done: bool


@dataclasses.dataclass(frozen=True)
class BatchesAcked:
    session_id: str
    epoch: int
    rank: int
    acks: tuple[SplitAck, ...]


@dataclasses.dataclass(frozen=True)
class StreamRestored:
    """A trainer restored a checkpoint: the (epoch, rank) restarts from ``acks``; every lease
    of it is revoked and every split not done per ``acks`` is pending again."""

    session_id: str
    epoch: int
    rank: int
    acks: tuple[SplitAck, ...]


@dataclasses.dataclass(frozen=True)
class LeaseReleased:
    """A lease ended without the split being done (its worker failed it or lost it); the
    split goes back to pending and will resume after its acknowledged batches."""

    session_id: str
    epoch: int
    rank: int
    split_index: int


@dataclasses.dataclass(frozen=True)
class SplitStatsReported:
    """The lease holder of a split in a stats session handed in its sketches (``payload``), or
    failed it (``error``, with an empty payload). Either way the split is done: its payload is
    its acknowledgement, so it counts once however often it was produced."""

    session_id: str
    epoch: int
    rank: int
    split_index: int
    payload: bytes
    error: str = ""


@dataclasses.dataclass(frozen=True)
class SessionExpired:
    """No rank called the session for the master's ``session_ttl_s`` (it finished, or its
    trainers are gone): it is forgotten with its progress, leases and name. Journaled, so a
    restarted master agrees that it is gone."""

    session_id: str


Update = (
    SessionCreated
    | WorkerRegistered
    | WorkerRemoved
    | EpochBegun
    | SplitLeased
    | SplitProduced
    | BatchesAcked
    | StreamRestored
    | LeaseReleased
    | SplitStatsReported
    | SessionExpired
)


class Journal(Protocol):
    """Where updates are recorded before they take effect. A durable journal has written and
    fsynced an update when :meth:`append` returns; :meth:`replay` yields what was recorded:
    the last snapshot's updates, then those appended since (its *tail*)."""

    def append(self, update: Update) -> None: ...

    def replay(self) -> Iterator[Update]: ...

    def position(self) -> str:
        """Where the update :meth:`replay` yielded last is recorded (for error messages)."""
        ...

    def compact(self, snapshot: Sequence[Update]) -> None:
        """Replaces everything recorded by ``snapshot`` (:meth:`Ledger.snapshot` of the state
        after the last append), so replay reads the snapshot and an empty tail. Atomic: a crash
        at any moment leaves either the old records or the new ones.

        Raises:
            OSError: the snapshot could not be written; the old records stay in force.
        """
        ...

    @property
    def tail_updates(self) -> int:
        """Updates recorded since the last snapshot (all of them when there is none)."""
        ...

    @property
    def snapshot_updates(self) -> int:
        """Updates in the last snapshot (0 when there is none)."""
        ...


class MemoryJournal:
    """A journal that keeps updates in memory only: state does not survive a restart."""

    def __init__(self) -> None:
        self._snapshot: list[Update] = []
        self._updates: list[Update] = []
        self._replayed = 0

    def append(self, update: Update) -> None:
        self._updates.append(update)

    def replay(self) -> Iterator[Update]:
        for number, update in enumerate([*self._snapshot, *self._updates], 1):
            self._replayed = number
            yield update

    def position(self) -> str:
        return f"update {self._replayed} of the in-memory journal"

    def compact(self, snapshot: Sequence[Update]) -> None:
        self._snapshot = list(snapshot)
        self._updates = []

    @property
    def tail_updates(self) -> int:
        return len(self._updates)

    @property
    def snapshot_updates(self) -> int:
        return len(self._snapshot)


@dataclasses.dataclass
class Lease:
    """Who holds a split, from which batch they produce, and whether they finished it."""

    worker_id: str
    start_batch: int
    produced: bool = False


@dataclasses.dataclass
class StreamProgress:
    """The splits of one (session, epoch, rank).

    ``pending`` is a heap of positions in ``split_indices`` (the epoch's order), so splits are
    leased in order and a released split goes back before later ones. Entries of splits that
    became done or leased meanwhile are skipped lazily.
    """

    split_indices: tuple[int, ...]
    pending: list[int] = dataclasses.field(default_factory=list)
    leased: dict[int, Lease] = dataclasses.field(default_factory=dict)
    done: set[int] = dataclasses.field(default_factory=set)
    acked: dict[int, int] = dataclasses.field(default_factory=dict)
    position_of: dict[int, int] = dataclasses.field(default_factory=dict)
    # Positions below this are all done (the deterministic lease window starts here).
    first_open: int = 0

    def __post_init__(self) -> None:
        self.position_of = {index: pos for pos, index in enumerate(self.split_indices)}
        if not self.pending:
            self.pending = list(range(len(self.split_indices)))

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.split_indices)

    def next_pending(self) -> int | None:
        """Position of the first pending split, dropping stale heap entries."""
        while self.pending:
            pos = self.pending[0]
            index = self.split_indices[pos]
            if index in self.done or index in self.leased:
                heapq.heappop(self.pending)
                continue
            return pos
        return None

    def pending_count(self) -> int:
        return len(self.split_indices) - len(self.done) - len(self.leased)

    def make_pending(self, index: int) -> None:
        self.leased.pop(index, None)
        if index not in self.done:
            heapq.heappush(self.pending, self.position_of[index])

    def mark_done(self, index: int) -> None:
        self.leased.pop(index, None)
        self.done.add(index)
        while (
            self.first_open < len(self.split_indices)
            and self.split_indices[self.first_open] in self.done
        ):
            self.first_open += 1


@dataclasses.dataclass
class SessionState:
    """One session: its spec, its planned splits and the progress of every begun epoch/rank."""

    session_id: str
    session_name: str
    spec_bytes: bytes
    splits: tuple[SplitInfo, ...]
    plan: PlanSummary
    tenant: str = ""
    streams: dict[tuple[int, int], StreamProgress] = dataclasses.field(default_factory=dict)
    # Stats sessions only: each done split's sketches, or its error, by split index.
    stats_payloads: dict[int, bytes] = dataclasses.field(default_factory=dict)
    stats_errors: dict[int, str] = dataclasses.field(default_factory=dict)
    # Derived from ``splits`` (not journaled): split id -> index, for O(1) lookups.
    index_of: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index_of = {split.split_id: i for i, split in enumerate(self.splits)}

    def add_pieces(self, pieces: Iterable[SplitInfo]) -> None:
        """Appends the pieces the session does not have yet (a piece's id names its split
        and row range, so a piece two ranks or epochs cut alike is one entry)."""
        new: list[SplitInfo] = []
        for piece in pieces:
            if piece.split_id not in self.index_of:
                self.index_of[piece.split_id] = len(self.splits) + len(new)
                new.append(piece)
        if new:
            self.splits = (*self.splits, *new)


class Ledger:
    """The state machine. See the module docstring; not thread-safe (the Master locks)."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionState] = {}
        # (tenant, session name) -> session id: names are unique per tenant.
        self.sessions_by_name: dict[tuple[str, str], str] = {}
        self.workers: dict[str, WorkerRegistered] = {}

    def apply(self, update: Update) -> None:
        """Applies one update. Updates were validated by the Master before being journaled, so
        an update that does not fit the state is a bug and raises."""
        match update:
            case SessionCreated():
                self.sessions[update.session_id] = SessionState(
                    session_id=update.session_id,
                    session_name=update.session_name,
                    spec_bytes=update.spec_bytes,
                    splits=update.splits,
                    plan=update.plan,
                    tenant=update.tenant,
                )
                if update.session_name:
                    by_name = (update.tenant, update.session_name)
                    self.sessions_by_name[by_name] = update.session_id
            case WorkerRegistered():
                self.workers[update.worker_id] = update
            case WorkerRemoved():
                self.workers.pop(update.worker_id, None)
                for stream, index in self.held_by(update.worker_id):
                    stream.make_pending(index)
            case EpochBegun():
                session = self.sessions[update.session_id]
                session.add_pieces(update.pieces)
                if max(update.split_indices, default=-1) >= len(session.splits):
                    raise IndexError(f"split index {max(update.split_indices)} out of range")
                session.streams[(update.epoch, update.rank)] = StreamProgress(
                    split_indices=update.split_indices
                )
            case SplitLeased():
                stream = self.stream(update.session_id, update.epoch, update.rank)
                stream.leased[update.split_index] = Lease(update.worker_id, update.start_batch)
            case SplitProduced():
                stream = self.stream(update.session_id, update.epoch, update.rank)
                lease = stream.leased.get(update.split_index)
                if lease is not None:
                    lease.produced = True
            case BatchesAcked():
                stream = self.stream(update.session_id, update.epoch, update.rank)
                self._apply_acks(stream, update.acks)
            case StreamRestored():
                # The trainer's checkpoint, not what was recorded since, is the truth: splits
                # done after it are to be consumed again.
                session = self.sessions[update.session_id]
                key = (update.epoch, update.rank)
                stream = StreamProgress(split_indices=session.streams[key].split_indices)
                session.streams[key] = stream
                self._apply_acks(stream, update.acks)
            case LeaseReleased():
                stream = self.stream(update.session_id, update.epoch, update.rank)
                stream.make_pending(update.split_index)
            case SplitStatsReported():
                stream = self.stream(update.session_id, update.epoch, update.rank)
                if update.split_index in stream.done:
                    return  # a second copy of a split never counts
                session = self.sessions[update.session_id]
                if update.error:
                    session.stats_errors[update.split_index] = update.error
                else:
                    session.stats_payloads[update.split_index] = update.payload
                stream.mark_done(update.split_index)
            case SessionExpired():
                expired = self.sessions.pop(update.session_id)
                by_name = (expired.tenant, expired.session_name)
                if self.sessions_by_name.get(by_name) == update.session_id:
                    del self.sessions_by_name[by_name]

    @staticmethod
    def _apply_acks(stream: StreamProgress, acks: Iterable[SplitAck]) -> None:
        for ack in acks:
            if ack.split_index in stream.done:
                continue
            stream.acked[ack.split_index] = max(stream.acked.get(ack.split_index, 0), ack.batches)
            if ack.done:
                stream.mark_done(ack.split_index)

    def stream(self, session_id: str, epoch: int, rank: int) -> StreamProgress:
        return self.sessions[session_id].streams[(epoch, rank)]

    def snapshot(self) -> list[Update]:
        """Updates that rebuild this state on an empty ledger: the journal's compacted form.

        One ``SessionCreated`` per live session (expired ones are gone), one ``EpochBegun``
        per begun (epoch, rank), its acknowledgements as one ``BatchesAcked`` (done splits with
        ``done``; a stats session's done splits as their ``SplitStatsReported``), then every
        lease (``SplitLeased``, ``SplitProduced``). Pending splits need no update: a begun
        epoch starts with every split pending, and leased or done ones are skipped. So
        ``replay(snapshot) `` gives a ledger whose own snapshot is equal, which is what the
        tests check. O(state); the master runs it under its lock, rarely (see
        ``MasterConfig.journal_compact_updates``).
        """
        updates: list[Update] = [
            WorkerRegistered(w.worker_id, w.address, w.pipeline_threads, w.data_address)
            for w in self.workers.values()
        ]
        for session in self.sessions.values():
            sid = session.session_id
            updates.append(
                SessionCreated(
                    sid,
                    session.session_name,
                    session.spec_bytes,
                    session.splits,
                    session.plan,
                    tenant=session.tenant,
                )
            )
            for (epoch, rank), stream in session.streams.items():
                updates.append(EpochBegun(sid, epoch, rank, stream.split_indices))
                acks = []
                for index in stream.split_indices:
                    if index in session.stats_payloads or index in session.stats_errors:
                        updates.append(
                            SplitStatsReported(
                                sid,
                                epoch,
                                rank,
                                index,
                                session.stats_payloads.get(index, b""),
                                session.stats_errors.get(index, ""),
                            )
                        )
                        continue
                    done = index in stream.done
                    if done or stream.acked.get(index, 0) > 0:
                        acks.append(SplitAck(index, stream.acked.get(index, 0), done))
                if acks:
                    updates.append(BatchesAcked(sid, epoch, rank, tuple(acks)))
                for index, lease in stream.leased.items():
                    updates.append(
                        SplitLeased(sid, epoch, rank, index, lease.worker_id, lease.start_batch)
                    )
                    if lease.produced:
                        updates.append(SplitProduced(sid, epoch, rank, index))
        return updates

    def held_by(self, worker_id: str) -> list[tuple[StreamProgress, int]]:
        """Every (stream, split index) a worker leases or produced and is not yet done."""
        found = []
        for session in self.sessions.values():
            for stream in session.streams.values():
                for index, lease in stream.leased.items():
                    if lease.worker_id == worker_id:
                        found.append((stream, index))
        return found


def replay(journal: Journal) -> Ledger:
    """Rebuilds a ledger from a journal's updates.

    Raises:
        ValueError: an update does not fit the state before it (a journal edited by hand, or
            from another version); the message names where it is recorded.
    """
    ledger = Ledger()
    for update in journal.replay():
        try:
            ledger.apply(update)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ValueError(
                f"{journal.position()}: {type(update).__name__} does not fit the state "
                f"replayed before it ({type(exc).__name__}: {exc}); the master cannot recover "
                "from it: restore the journal from a backup, or move it away to start empty"
            ) from exc
    return ledger


def split_order(num_splits: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """The epoch's split order: identity, or a permutation seeded by (seed, epoch) so each epoch
    reshuffles yet the same seed always gives the same order."""
    import numpy as np

    if not shuffle:
        return list(range(num_splits))
    rng = np.random.default_rng([seed, epoch])
    return [int(i) for i in rng.permutation(num_splits)]


def piece_of(split: SplitInfo, offset: int, rows: int) -> SplitInfo:
    """Rows ``[offset, offset + rows)`` of ``split`` as a unit of its own. Its id names the
    split and the range, so the same cut always has the same id (acks, checkpoints and the
    client's deduplication key on it)."""
    return dataclasses.replace(
        split,
        split_id=f"{split.split_id}@{offset}+{rows}",
        num_rows=rows,
        row_offset=offset,
        row_limit=rows,
    )


def rank_units(
    order: Sequence[int], rank: int, world_size: int, rows: Sequence[int]
) -> list[tuple[int, int, int]]:
    """The units one rank reads in an epoch, as (split index, row offset, rows); rows 0 is
    the whole split. Every rank gets ``total // world_size`` rows or one more, so the
    equal-batches rule drops at most one batch per rank (issue 12, goal 5).

    How: each rank's quota is ``total // world_size`` (+1 for the first ``total %
    world_size`` ranks). Walking the epoch's order, a split goes whole to the rank with the
    fewest rows so far (the lowest rank on a tie) if it fits that rank's quota; otherwise it
    joins the tail. The tail's splits, in order, are then cut by row ranges into the quotas
    still open, ranks in order. Ranks' units are disjoint and cover every row exactly once;
    the result depends only on the arguments (deterministic across ranks, restarts and
    recreated sessions). The tail is about one split per rank, cut into at most
    ``len(tail) + world_size - 1`` pieces. O(splits x log world_size).
    """
    total = sum(rows[i] for i in order)
    quota = [total // world_size + (1 if r < total % world_size else 0) for r in range(world_size)]
    loads = [(0, r) for r in range(world_size)]  # already a heap
    assigned = [0] * world_size
    mine: list[tuple[int, int, int]] = []
    tail: list[int] = []
    for index in order:
        load, target = loads[0]
        if load + rows[index] > quota[target]:
            tail.append(index)
            continue
        heapq.heapreplace(loads, (load + rows[index], target))
        assigned[target] += rows[index]
        if target == rank:
            mine.append((index, 0, 0))
    target = 0
    for index in tail:
        offset = 0
        while offset < rows[index]:
            while assigned[target] >= quota[target]:
                target += 1
            take = min(rows[index] - offset, quota[target] - assigned[target])
            assigned[target] += take
            if target == rank:
                whole = offset == 0 and take == rows[index]
                mine.append((index, 0, 0) if whole else (index, offset, take))
            offset += take
    return mine
