"""The session/split ledger: the master's durable state, changed only by applying typed updates.

Owns: which sessions exist, what each planned, which epochs each rank has begun, and for every
(session, epoch, rank) which splits are pending, leased (to which worker) and done. Every change
goes through :meth:`Ledger.apply` with one of the ``*Update`` dataclasses below, and
:meth:`Ledger.apply` is the only code that mutates the ledger. That is what makes the state
journal-able: a journal records the same updates in order, and replaying them onto an empty
ledger rebuilds the state exactly (tf.data service's ``DispatcherState::Apply``).

Must never import grpc, torch or the transport modules. Not thread-safe by itself: the
:class:`dpp_server.master.Master` that owns a ledger serialises every call under its lock.

Worker liveness (heartbeat times) is deliberately *not* here: it is volatile, re-learned after a
restart, and would flood a journal.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Sequence
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
    """A session was planned. ``spec_bytes`` is the serialized SessionSpec proto."""

    session_id: str
    session_name: str
    spec_bytes: bytes
    splits: tuple[SplitInfo, ...]
    plan: PlanSummary


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
class SplitProgressed:
    """The lease holder produced ``batches_produced`` batches of the split so far."""

    session_id: str
    epoch: int
    rank: int
    split_index: int
    batches_produced: int


@dataclasses.dataclass(frozen=True)
class SplitDone:
    """The lease holder produced every batch of the split."""

    session_id: str
    epoch: int
    rank: int
    split_index: int


@dataclasses.dataclass(frozen=True)
class LeaseReleased:
    """A lease ended without the split being done (its worker died or failed); the split goes
    back to the front of the pending queue."""

    session_id: str
    epoch: int
    rank: int
    split_index: int


Update = SessionCreated | EpochBegun | SplitLeased | SplitProgressed | SplitDone | LeaseReleased


class Journal(Protocol):
    """Where updates are recorded before they take effect. A durable journal fsyncs in
    :meth:`append`; :meth:`replay` yields what was recorded, in order."""

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
    """Who holds a split and from which batch they produce."""

    worker_id: str
    start_batch: int


@dataclasses.dataclass
class StreamProgress:
    """The splits of one (session, epoch, rank)."""

    split_indices: tuple[int, ...]
    pending: collections.deque[int]
    leased: dict[int, Lease] = dataclasses.field(default_factory=dict)
    done: set[int] = dataclasses.field(default_factory=set)
    batches_produced: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.split_indices)


@dataclasses.dataclass
class SessionState:
    """One session: its spec, its planned splits and the progress of every begun epoch/rank."""

    session_id: str
    session_name: str
    spec_bytes: bytes
    splits: tuple[SplitInfo, ...]
    plan: PlanSummary
    streams: dict[tuple[int, int], StreamProgress] = dataclasses.field(default_factory=dict)
    # Derived from ``splits`` (not journaled): split id -> index, for O(1) progress reports.
    index_of: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index_of = {split.split_id: i for i, split in enumerate(self.splits)}


class Ledger:
    """The state machine. See the module docstring; not thread-safe (the Master locks)."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionState] = {}
        self.sessions_by_name: dict[str, str] = {}

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
                )
                if update.session_name:
                    self.sessions_by_name[update.session_name] = update.session_id
            case EpochBegun():
                session = self.sessions[update.session_id]
                session.streams[(update.epoch, update.rank)] = StreamProgress(
                    split_indices=update.split_indices,
                    pending=collections.deque(update.split_indices),
                )
            case SplitLeased():
                stream = self.stream(update.session_id, update.epoch, update.rank)
                stream.pending.remove(update.split_index)
                stream.leased[update.split_index] = Lease(update.worker_id, update.start_batch)
            case SplitProgressed():
                stream = self.stream(update.session_id, update.epoch, update.rank)
                stream.batches_produced[update.split_index] = update.batches_produced
            case SplitDone():
                stream = self.stream(update.session_id, update.epoch, update.rank)
                del stream.leased[update.split_index]
                stream.done.add(update.split_index)
            case LeaseReleased():
                stream = self.stream(update.session_id, update.epoch, update.rank)
                del stream.leased[update.split_index]
                stream.pending.appendleft(update.split_index)

    def stream(self, session_id: str, epoch: int, rank: int) -> StreamProgress:
        return self.sessions[session_id].streams[(epoch, rank)]

    def leases_of(self, worker_id: str) -> list[tuple[str, int, int, int]]:
        """(session_id, epoch, rank, split_index) of every lease a worker holds."""
        found = []
        for session in self.sessions.values():
            for (epoch, rank), stream in session.streams.items():
                for split_index, lease in stream.leased.items():
                    if lease.worker_id == worker_id:
                        found.append((session.session_id, epoch, rank, split_index))
        return found


def replay(updates: Sequence[Update] | Iterator[Update]) -> Ledger:
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


def rank_share(order: Sequence[int], rank: int, world_size: int) -> tuple[int, ...]:
    """The splits of one rank: every ``world_size``-th split of the epoch's order, starting at
    ``rank``. Disjoint across ranks, and together they cover every split."""
    return tuple(order[rank::world_size])
