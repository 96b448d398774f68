"""The session/split ledger: the master's durable state, changed only by applying typed updates.

Owns: which sessions exist and what each planned; which workers are registered; which epochs
each rank has begun; and for every (session, epoch, rank) which splits are pending, leased (to
which worker, from which batch), produced (by which worker, awaiting the trainer) and done
(consumed by the trainer), with the number of batches the trainer acknowledged per split.

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


@dataclasses.dataclass(frozen=True)
class WorkerRemoved:
    """A worker left (drained) or was dropped (silent too long). Its unfinished splits go back
    to the front of their pending queues."""

    worker_id: str


@dataclasses.dataclass(frozen=True)
class EpochBegun:
    """A rank opened an epoch; ``split_indices`` is its split order for that epoch."""

    session_id: str
    epoch: int
    rank: int
    split_indices: tuple[int, ...]


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
)


class Journal(Protocol):
    """Where updates are recorded before they take effect. A durable journal has written and
    fsynced an update when :meth:`append` returns; :meth:`replay` yields what was recorded."""

    def append(self, update: Update) -> None: ...

    def replay(self) -> Iterator[Update]: ...


class MemoryJournal:
    """A journal that keeps updates in memory only: state does not survive a restart."""

    def __init__(self) -> None:
        self._updates: list[Update] = []

    def append(self, update: Update) -> None:
        self._updates.append(update)

    def replay(self) -> Iterator[Update]:
        yield from list(self._updates)


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
    # Derived from ``splits`` (not journaled): split id -> index, for O(1) lookups.
    index_of: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index_of = {split.split_id: i for i, split in enumerate(self.splits)}


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

    def held_by(self, worker_id: str) -> list[tuple[StreamProgress, int]]:
        """Every (stream, split index) a worker leases or produced and is not yet done."""
        found = []
        for session in self.sessions.values():
            for stream in session.streams.values():
                for index, lease in stream.leased.items():
                    if lease.worker_id == worker_id:
                        found.append((stream, index))
        return found


def replay(updates: Iterable[Update]) -> Ledger:
    """Rebuilds a ledger from journaled updates."""
    ledger = Ledger()
    for update in updates:
        ledger.apply(update)
    return ledger


def split_order(num_splits: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """The epoch's split order: identity, or a permutation seeded by (seed, epoch) so each epoch
    reshuffles yet the same seed always gives the same order."""
    import numpy as np

    if not shuffle:
        return list(range(num_splits))
    rng = np.random.default_rng([seed, epoch])
    return [int(i) for i in rng.permutation(num_splits)]


def rank_share(
    order: Sequence[int], rank: int, world_size: int, rows: Sequence[int] | None = None
) -> tuple[int, ...]:
    """The splits of one rank, in the epoch's order.

    Walking the epoch's order, each split goes to the rank with the fewest rows so far (the
    lowest rank on a tie): disjoint across ranks, together they cover every split, and rank
    totals stay within one split of each other, so the equal-batches rule drops little.
    Without row counts, every ``world_size``-th split from position ``rank``.
    """
    if rows is None:
        return tuple(order[rank::world_size])
    totals = [0] * world_size
    mine = []
    for index in order:
        target = min(range(world_size), key=lambda r: (totals[r], r))
        totals[target] += rows[index]
        if target == rank:
            mine.append(index)
    return tuple(mine)
