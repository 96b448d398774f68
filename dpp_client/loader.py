"""DppLoader: the trainer-side iterable that streams a rank's batches from dpp workers.

Owns the iterator and its checkpoint state: epochs, the hand-off of assembled batches to the
trainer, and the policies that decide when a batch may go (equal batches across ranks), when
to ask for missing splits again and when to warn. The other jobs are parts it composes:

* :mod:`dpp_client.master_link`: every control-plane RPC (a :class:`MasterLink` seam);
* :mod:`dpp_client.fan_in`: one StreamBatches stream per worker, merged into one queue;
* :mod:`dpp_client.acks`: periodic acknowledgement of consumed batches;
* :mod:`dpp_client.epoch_overlap`: beginning the next epoch while this one drains;
* :mod:`dpp_client.assembler`: the pure frames -> batches core.

Knows the proto and torch; must never import ``dpp_server`` or ``storage``.

Threads (all daemon, all joined by :meth:`DppLoader.close`): the *trainer's thread* calls
``__iter__`` / ``__next__`` and alone owns the assembler and epoch state; the fan-in runs a
refresher and one thread per worker stream; the acknowledger runs one sending thread.

Protocol, worked example (rank 0, two workers, epochs 2):

1. ``iter(loader)``: ``CreateSession(spec, session_name)`` -> ``session_id``; the fan-in lists
   workers W1, W2 and opens a stream to each; ``BeginEpoch(session_id, 0, 0)`` -> splits [A, B].
   (``loader.start()`` does this step before the trainer's first ``iter()``, which then
   returns the started epoch: the workers get a head start while the model is built.)
2. W1 sends frames of A, W2 of B; the trainer's ``next()`` feeds them to the assembler and
   yields full batches as they come, partial ones once re-batched.
3. W2 is killed. Its stream fails with UNAVAILABLE; the fan-in re-dials with capped backoff
   while W2 is still listed, and stops once the master stops listing it. The master re-leases
   B to W1, which re-sends B from the last acknowledged batch; repeated seqs are dropped.
4. The end frames of A and B are queued: nothing of epoch 0 is left to arrive, so the epoch
   overlap calls ``BeginEpoch(session_id, 0, 1)`` in the background, and the workers produce
   epoch 1 while the trainer consumes the last batches of epoch 0. A and B complete: the
   remainder is yielded and iteration stops.
5. ``iter(loader)`` again: epoch 1 was begun already (else ``BeginEpoch`` is called now); its
   first frames are waiting in the queue. A third ``iter`` gets OUT_OF_RANGE: an empty
   iteration.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from dpp_client.acks import Acknowledger, Verdict
from dpp_client.assembler import Consumption, EpochAssembler, ReadyBatch
from dpp_client.batch import Batch, batch_from_arrow
from dpp_client.epoch_overlap import EpochOverlap
from dpp_client.errors import DppClientError, DppUnavailableError
from dpp_client.fan_in import FanIn, GrpcStream, WorkerDialer
from dpp_client.master_link import GrpcMasterLink, MasterLink
from dpp_client.metrics import LoaderCounters, LoaderStats
from dpp_client.socket_stream import SocketStream
from dpp_client.spec import SessionSpec, coerce_spec
from dpp_proto import master_pb2
from dpp_proto.auth import Connection, resolve

__all__ = ["DppLoader", "LoaderStats", "StallWatchdog"]

_log = logging.getLogger(__name__)

_POLL_S = 0.5
#: Names the default ``transport`` of loaders not given one (e.g. to run a job over gRPC).
TRANSPORT_ENV = "DPP_TRANSPORT"
TRANSPORTS = frozenset({"auto", "grpc"})
_STALL_WARN_S = 10.0
_JOIN_TIMEOUT_S = 10.0
_STATE_VERSION = 1


class StallWatchdog:
    """The policy while no frame arrives: when to ask for missing splits again, when to warn.

    Pure timing (the caller passes the clock), used by the trainer's thread only.

    Args:
        reproduce_after_s: quiet time before (and between) requests to re-produce.
        warn_every_s: quiet time before (and between) warnings.
        now: the start of the wait.
    """

    def __init__(self, reproduce_after_s: float, warn_every_s: float, now: float) -> None:
        self.reproduce_after_s = reproduce_after_s
        self.warn_every_s = warn_every_s
        self.last_progress = self._last_reproduce = self._last_warning = now

    def progress(self, now: float) -> None:
        """A frame arrived."""
        self.last_progress = now

    def idle(self, now: float) -> tuple[bool, bool]:
        """Nothing arrived: (ask for the missing splits again now, warn now)."""
        quiet_s = now - self.last_progress
        reproduce = quiet_s >= self.reproduce_after_s and (
            now - self._last_reproduce >= self.reproduce_after_s
        )
        if reproduce:
            self._last_reproduce = now
        warn = quiet_s >= self.warn_every_s and now - self._last_warning >= self.warn_every_s
        if warn:
            self._last_warning = now
        return reproduce, warn


@dataclass
class _Session:
    """The parts bound to the session once it is created or joined."""

    assembler: EpochAssembler[Batch]
    acks: Acknowledger
    fan_in: FanIn
    overlap: EpochOverlap


class _EpochIterator(Iterator[Batch]):
    """The iterator of one epoch, returned by ``iter(loader)``.

    A separate object (rather than the loader itself) so that ``iter()`` on it does not begin
    another epoch, and an iterator kept past its epoch simply ends.
    """

    def __init__(self, loader: DppLoader, epoch: int | None) -> None:
        self._loader = loader
        self.epoch = epoch

    def __iter__(self) -> _EpochIterator:
        return self

    def __next__(self) -> Batch:
        """Returns the epoch's next batch; runs in the trainer's thread.

        Raises:
            StopIteration: the epoch is complete (call ``iter(loader)`` for the next one).
            WorkerDataError: a worker failed a split of this epoch.
            DppClientError: a stream failed for another reason (re-raised from its thread).
        """
        return self._loader._next_of(self.epoch)


class DppLoader(torch.utils.data.IterableDataset[Batch]):
    """Streams one rank's batches of a dpp session; each ``iter()`` is the next epoch.

    Use directly (``for batch in loader``) or wrapped in
    ``torch.utils.data.DataLoader(loader, batch_size=None, num_workers=0)``: batches are
    already formed, and the streaming runs in this process's own threads.

    Shared across threads: the trainer's thread owns the assembler, ``_ready`` and the epoch
    state; the parts (link, fan-in, acknowledger, counters) are thread-safe themselves.

    Attributes:
        plan: the session's plan (``SessionPlan``: ``num_splits``, ``num_files``,
            ``num_row_groups``, ``num_rows``, ``num_partitions``, ``planning_seconds``, and
            for an Iceberg table the ``snapshot_id`` every epoch reads) once the session is
            created, joined or resumed (first ``iter()`` or ``len()``); None before.
            ``num_rows`` counts the rows of the planned row groups, before the row filter and
            sampling.
        session_id: the session's id once created ("" before).
        epochs: the session's number of epochs, after the first ``iter()``.
        epoch: the epoch being read (None before the first ``iter()``).

    Args:
        master: ``host:port`` of the master; None or empty: the connection file's address.
        spec: a :class:`SessionSpec`, a YAML path (or text), or a mapping.
        rank: this trainer's rank, ``0 <= rank < spec.world_size``.
        session_name: join key; all ranks pass the same name and spec to share a session.
            Empty: always a new session (fine for a single rank).
        prefetch_batches: frames buffered between the streams and the trainer. More hides
            worker hiccups; each costs one batch of memory. It also bounds what the next
            epoch prefetches before the trainer reaches it (``epoch_overlap``).
        drop_last: drop each epoch's final short batch, so every batch has ``batch_size`` rows.
        pin_memory: pin batches in the stream threads for fast ``to(device,
            non_blocking=True)``; a no-op without CUDA.
        int64_ids: hand sparse ids and offsets as int64. By default they keep their wire
            types: int32 ids for features whose op chain bounds them (``sigrid_hash`` and
            the like), int32 offsets; ``nn.EmbeddingBag`` and TorchRec take them as they
            are. True costs a copy of every id in the stream threads.
        rpc_timeout_s: deadline of each master RPC, retries of UNAVAILABLE/ABORTED included.
        worker_refresh_s: how often to re-list workers. Lower picks up new or restarted
            workers faster at the cost of master RPCs.
        ack_interval_s: how often consumption is acknowledged to the master. Lower means
            less work redone after a worker failure, at the cost of master RPCs (and journal
            writes); with world_size > 1 it also paces the equal-batches limit. None turns
            acknowledgements off (for measuring their cost): a worker failure then re-sends
            whole splits, which the client still deduplicates, but a master or trainer
            restart no longer knows what was consumed. Not allowed with world_size > 1.
        reproduce_after_s: with splits missing and no frame for this long, ask the master to
            produce them again (frames lost in a broken stream, a wedged worker). Shorter
            recovers sooner; too short re-produces splits that are merely slow.
        validate: have the master check the spec (against the table's schema and partition
            columns, filters included) here, in the constructor, so that a bad spec fails on
            the line that built the loader rather than at the first ``iter()``. Costs one RPC
            and a look at the table (listing and one footer, no planning). False skips it
            (e.g. to build loaders before the master is up); :meth:`validate` runs it later.
        master_timeout_s: with no frame arriving, give up once the master has been
            unreachable this long: ``next()`` raises :class:`DppUnavailableError` (resume from
            a checkpoint once it is back). Before that, the loader waits and resumes by
            itself when the master returns. Longer rides out a slower master restart.
        epoch_overlap: begin the next epoch as soon as every frame of the current one has
            arrived (``dpp_client.epoch_overlap``), so the workers produce it while the
            trainer drains this one and its first batch is ready when the trainer asks.
            The batches and their order are the same either way; False only begins an
            epoch when ``iter()`` asks (the workers idle at each boundary).
        master_link: the link to the master; default a :class:`GrpcMasterLink` to
            ``master`` with ``rpc_timeout_s``. The loader closes it. A seam for tests.
        transport: how frames travel from the workers: ``"auto"`` (the default): over each
            worker's data plane (TCP, TLS on a secure cluster; about half the trainer's CPU
            of gRPC, ``docs/client.md``) when the worker lists one, else over gRPC
            StreamBatches; ``"grpc"``: always gRPC (e.g. where only the gRPC port is
            reachable through a proxy). None: ``$DPP_TRANSPORT`` if set, else ``"auto"``.
        dial_worker: opens a worker's StreamBatches call; default gRPC (or the data plane,
            per ``transport``). A seam for tests: given, every stream goes through it.
        connection: the cluster's connection file (path) or :class:`~dpp_proto.auth.Connection`:
            TLS, client certificate and token for the master and the workers. None:
            ``$DPP_CONNECTION`` if set, else plaintext (a cluster started with --insecure).

    Raises:
        SpecRejectedError: the spec is invalid (locally, or as the master judged it), naming
            the field; TableNotFoundError, TableError and subclasses: its table is missing or
            unreadable (``docs/errors.md`` lists every error).
    """

    def __init__(
        self,
        master: str | None,
        spec: SessionSpec | str | os.PathLike[str] | Mapping[str, Any],
        *,
        rank: int = 0,
        session_name: str = "",
        prefetch_batches: int = 16,
        drop_last: bool = False,
        pin_memory: bool = False,
        int64_ids: bool = False,
        rpc_timeout_s: float = 30.0,
        worker_refresh_s: float = 1.0,
        ack_interval_s: float | None = 0.2,
        reproduce_after_s: float = 10.0,
        validate: bool = True,
        master_timeout_s: float = 300.0,
        epoch_overlap: bool = True,
        master_link: MasterLink | None = None,
        dial_worker: WorkerDialer | None = None,
        connection: str | os.PathLike[str] | Connection | None = None,
        transport: str | None = None,
    ) -> None:
        super().__init__()
        self.spec = coerce_spec(spec)
        if not 0 <= rank < self.spec.world_size:
            raise ValueError(f"rank {rank} outside [0, world_size={self.spec.world_size})")
        if prefetch_batches < 1:
            raise ValueError(f"prefetch_batches must be >= 1, got {prefetch_batches}")
        if ack_interval_s is None and self.spec.world_size > 1:
            raise ValueError(
                "ack_interval_s=None turns acknowledgements off, but world_size > 1 needs them "
                "for equal batch counts across ranks"
            )
        master, credentials = resolve(master, connection)
        self.master = master
        self.rank = rank
        self.session_name = session_name
        self.drop_last = drop_last
        self.rpc_timeout_s = rpc_timeout_s
        self.worker_refresh_s = worker_refresh_s
        self.reproduce_after_s = reproduce_after_s
        self.master_timeout_s = master_timeout_s
        self._prefetch_batches = prefetch_batches
        self._ack_interval_s = ack_interval_s
        self._pin = pin_memory and torch.cuda.is_available()
        self._int64_ids = int64_ids
        self._epoch_overlap = epoch_overlap
        if pin_memory and not self._pin:
            _log.info("pin_memory=True ignored: CUDA is not available")
        self._link = master_link or GrpcMasterLink(master, rpc_timeout_s, connection=credentials)
        self._dial: WorkerDialer = dial_worker or functools.partial(
            GrpcStream, connection=credentials
        )
        self.transport = transport or os.environ.get(TRANSPORT_ENV) or "auto"
        if self.transport not in TRANSPORTS:
            raise ValueError(
                f"transport {self.transport!r} (from "
                f"{'the argument' if transport else '$' + TRANSPORT_ENV}) is not one of "
                f"{sorted(TRANSPORTS)}"
            )
        self._data_dial: WorkerDialer | None = None
        if dial_worker is None and self.transport == "auto":
            self._data_dial = functools.partial(SocketStream, connection=credentials)

        self.session_id = ""
        self.plan: master_pb2.SessionPlan | None = None
        self.epochs: int | None = None
        self.epoch: int | None = None
        self._next_epoch = 0
        self._epoch_active = False
        self._ready: deque[ReadyBatch[Batch]] = deque()
        # Batches yielded in the current epoch (restored from a checkpoint, then counted).
        self._yielded = 0
        self._received_base = 0
        # Set by load_state_dict: (epoch or None, consumption, yielded) to resume from.
        self._restore: tuple[int | None, dict[str, Consumption], int] | None = None
        self._saved_session_id = ""
        self._session: _Session | None = None
        # The epoch start() began, until iter() hands it to the trainer.
        self._started: _EpochIterator | None = None
        self._counters = LoaderCounters()
        self._closed = threading.Event()
        if validate:
            self.validate()

    # ----------------------------------------------------------------- public API

    def validate(self) -> None:
        """Has the master check the spec now, creating nothing (see ``validate`` above).

        Raises:
            SpecRejectedError, TableNotFoundError, TableError: what ``iter()`` would raise.
            DppUnavailableError: the master stayed unreachable for ``rpc_timeout_s``.
        """
        try:
            self._link.validate_spec(self.spec, self.session_name)
        except BaseException:
            self._link.close()  # the constructor raises: nobody else will close the link
            raise

    def __len__(self) -> int:
        """Batches per epoch for this rank, when the plan makes that exact.

        It is exact with ``world_size`` 1, no ``row_filter`` and no sampling: every planned
        row is delivered, all batches are full but the epoch's last
        (``ceil(plan.num_rows / batch_size)``, or ``floor`` with ``drop_last``). The session
        is created (or joined) on the first call, as ``iter()`` would.

        Raises:
            TypeError: the count is not known in advance (rows dropped by a row filter or
                sampling are seen only by workers; ranks share splits by rows), which is how
                ``len()`` says "no length": ``tqdm`` and ``rich`` then show a bar without a
                total. ``loader.plan.num_rows`` is still an upper bound of the rows.
        """
        spec = self.spec
        unknown = [
            why
            for why, applies in (
                ("a row_filter drops rows only workers see", bool(spec.row_filter)),
                ("sampling drops rows", spec.sample_rate < 1 or spec.negative_downsample_rate < 1),
                ("ranks share splits by rows", spec.world_size > 1),
            )
            if applies
        ]
        if unknown:
            raise TypeError(
                f"len(DppLoader) is not known in advance: {'; '.join(unknown)}; use "
                "loader.plan.num_rows as an upper bound of the rows per epoch"
            )
        self._ensure_session()
        plan = self.plan
        if plan is None:
            raise TypeError("len(DppLoader): the master sent no plan for this session")
        full, rest = divmod(plan.num_rows, spec.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def stats(self) -> LoaderStats:
        """A consistent snapshot of the counters (safe from any thread)."""
        return self._counters.snapshot()

    def list_workers(self) -> list[master_pb2.WorkerInfo]:
        """Lists the live workers (with stage timings) through the master."""
        return self._link.list_workers()

    def start(self) -> DppLoader:
        """Begins reading now: what the next ``iter()`` would do, without waiting for it.

        Creates, joins or resumes the session and begins the epoch the next ``iter()`` would
        begin (a restored checkpoint's epoch included), so the workers fill the prefetch
        (``prefetch_batches`` frames) while the trainer builds its model; the next
        ``iter(loader)`` returns that epoch without asking the master again. Call it as early
        as the trainer can, e.g. ``loader = DppLoader(...).start()`` before building the model,
        and after :meth:`load_state_dict` when resuming (calling that afterwards is correct
        too, but drops the started epoch and with it the head start).

        The stall clock (``stats.stall_s``, ``stats.wall_s``) still starts at the first
        ``next()``: ``start()`` shortens the first wait only by giving the workers a head
        start, and a wait that remains is counted as stall as before.

        Idempotent: while an epoch is started or being read, it does nothing.

        Returns:
            The loader itself, so that ``DppLoader(...).start()`` chains.

        Raises:
            DppClientError: the loader is closed (as ``iter()`` would).
            SpecRejectedError, TableNotFoundError, DppUnavailableError: what ``iter()`` raises.
        """
        if self._started is None and not self._epoch_active:
            self._started = self._begin_epoch()
        elif self._closed.is_set():
            raise DppClientError("DppLoader is closed; create a new one to read again")
        return self

    def __iter__(self) -> Iterator[Batch]:
        """Begins the next epoch (creating or joining the session on the first call), or
        resumes the epoch a restored checkpoint was in; an epoch :meth:`start` began is
        returned as it is."""
        started, self._started = self._started, None
        if started is not None and not self._closed.is_set():
            return started
        return self._begin_epoch()

    def _begin_epoch(self) -> _EpochIterator:
        """Begins the next (or the restored) epoch: the one home of ``BeginEpoch`` for
        ``iter()`` and :meth:`start`."""
        if self._closed.is_set():
            raise DppClientError("DppLoader is closed; create a new one to read again")
        session = self._ensure_session()
        session.acks.flush()
        restore = self._restore
        self._restore = None
        consumed: dict[str, Consumption] = {}
        yielded = 0
        epoch = self._next_epoch
        if restore is not None and restore[0] is not None:
            epoch, consumed, yielded = restore[0], restore[1], restore[2]
        request = master_pb2.BeginEpochRequest(
            session_id=self.session_id, rank=self.rank, epoch=epoch
        )
        if restore is not None:
            # After a restore the checkpoint, not the master's record, says what was consumed.
            request.restore = True
            for split_id, c in consumed.items():
                request.consumed.add(split_id=split_id, batches_consumed=c.batches, done=c.done)
        # An epoch the overlap began early is not asked again (unless a checkpoint is restored).
        early = None if restore is not None else session.overlap.take(epoch, self.rpc_timeout_s)
        resp = early if early is not None else self._link.begin_epoch(request)
        if resp is None:
            _log.info("session %s has no epoch %d: nothing more to read", self.session_id, epoch)
            self._epoch_active = False
            return _EpochIterator(self, None)
        self._next_epoch = epoch + 1
        self.epochs = resp.epochs
        self.epoch = epoch
        self._ready.clear()
        self._yielded = yielded
        self._received_base = yielded
        session.acks.begin_epoch(epoch, yielded)
        self._ready.extend(session.assembler.begin_epoch(epoch, list(resp.split_ids), consumed))
        again = session.assembler.take_aside_dropped(epoch)
        if again:
            # Frames of this epoch that came before it began, past the aside bound: have them
            # sent again now rather than after the stall watchdog's wait.
            _log.info("epoch %d: asking again for %d split(s) dropped early", epoch, len(again))
            session.acks.ask_reproduce(again)
        done = {split_id for split_id, c in consumed.items() if c.done}
        session.overlap.watch(
            epoch, [s for s in resp.split_ids if s not in done], resp.epochs, again
        )
        self._epoch_active = True
        _log.info(
            "rank %d epoch %d of session %s: %d splits%s",
            self.rank,
            epoch,
            self.session_id,
            len(resp.split_ids),
            f", resuming after {yielded} batches" if restore is not None else "",
        )
        return _EpochIterator(self, epoch)

    def state_dict(self) -> dict[str, Any]:
        """The loader's position, for a trainer checkpoint (torchdata's Stateful protocol).

        Call it between batches, from the trainer's thread. Restoring it with
        :meth:`load_state_dict` (in a new loader, even after the whole cluster restarted from
        its journal) resumes exactly after the last batch this loader yielded: mid-epoch, at
        an epoch's end, or at the start of the next epoch.
        """
        assembler = self._assembler
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "session_id": self.session_id,
            "session_name": self.session_name,
            "rank": self.rank,
            "epoch": None,
            "next_epoch": self._next_epoch,
            "consumed": {},
            "yielded": 0,
        }
        if self._restore is not None:
            epoch, consumed, yielded = self._restore
            state.update(epoch=epoch, yielded=yielded)
            state["consumed"] = {
                k: [c.batches, c.rows_into_next, c.done] for k, c in consumed.items()
            }
            return state
        in_epoch = self._epoch_active and assembler is not None and self.epoch is not None
        if in_epoch and assembler is not None and not (assembler.done and not self._ready):
            state["epoch"] = self.epoch
            state["yielded"] = self._yielded
            state["consumed"] = {
                k: [c.batches, c.rows_into_next, c.done] for k, c in assembler.consumption().items()
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a position saved by :meth:`state_dict`; the next ``iter()`` resumes it.

        After :meth:`start`, the started epoch is dropped (nothing of it was yielded) and the
        next ``iter()`` (or ``start()``) resumes the checkpoint as in a new loader: in the
        checkpoint's session if the master still knows it, the master's ``BeginEpoch`` with
        the checkpoint's consumption revoking the started epoch's leases.

        Raises:
            ValueError: the state is of another version or rank.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"loader state version {state.get('version')!r} is not {_STATE_VERSION}; it "
                "was saved by an incompatible dpp_client"
            )
        if state.get("rank", self.rank) != self.rank:
            raise ValueError(
                f"loader state is of rank {state['rank']}, this loader is rank {self.rank}"
            )
        started, self._started = self._started, None
        saved_session_id = str(state.get("session_id") or "")
        session = self._session
        if (
            started is not None
            and session is not None
            and saved_session_id
            and saved_session_id != self.session_id
        ):
            # start() opened a session of its own (or joined another): leave it, as a new
            # loader would never have opened it; frames already queued for it go with it.
            _log.info(
                "dropping the session %s start() opened: the checkpoint resumes session %s",
                self.session_id,
                saved_session_id,
            )
            self._session = None
            self._stop_session(session)
            self._ready.clear()
            self.session_id = ""
            self.plan = None
        if self._session is None and saved_session_id:
            self._saved_session_id = saved_session_id
        if state.get("session_name") and not self.session_name:
            self.session_name = str(state["session_name"])
        consumed = {
            k: Consumption(int(v[0]), int(v[1]), bool(v[2]))
            for k, v in dict(state.get("consumed", {})).items()
        }
        epoch = state.get("epoch")
        self._next_epoch = int(state["next_epoch"])
        self._restore = (None if epoch is None else int(epoch), consumed, int(state["yielded"]))
        self._epoch_active = False
        if self._session is not None:
            self._session.overlap.reset()

    def _next_of(self, epoch: int | None) -> Batch:
        """Returns the next batch of ``epoch``, blocking until one is ready.

        Raises:
            StopIteration: the epoch is complete (call ``iter()`` for the next one).
            WorkerDataError: a worker failed a split of this epoch.
            DppClientError: a stream failed for another reason (re-raised from its thread).
        """
        start = time.monotonic()
        self._counters.start_clock(start)
        try:
            if epoch is None or epoch != self.epoch:
                raise StopIteration  # an iterator of an epoch the loader has moved past
            return self._next_batch()
        finally:
            self._counters.add(stall_s=time.monotonic() - start)

    def close(self) -> None:
        """Acknowledges what was consumed, cancels every stream and joins every thread;
        idempotent."""
        if self._closed.is_set():
            return
        session = self._session
        if session is not None:
            try:
                session.acks.flush()
            except Exception:
                _log.exception("final acknowledgement failed")
        self._closed.set()
        if session is None:
            self._link.close()
        else:
            self._stop_session(session, close_link=True)
        self._ready.clear()
        _log.info("closed loader of session %s rank %d", self.session_id, self.rank)

    def _stop_session(self, session: _Session, close_link: bool = False) -> None:
        """Cancels the session's streams and joins its threads (sending nothing more);
        ``close_link`` also closes the link, between the two, to end calls in flight (e.g. a
        refresher waiting for the master)."""
        session.acks.stop()
        session.fan_in.stop()
        if close_link:
            self._link.close()
        stuck = session.fan_in.join(_JOIN_TIMEOUT_S)
        acker = session.acks.join(_JOIN_TIMEOUT_S)
        stuck += [acker] if acker is not None else []
        opener = session.overlap.close(_JOIN_TIMEOUT_S)
        stuck += [opener] if opener is not None else []
        for t in stuck:
            _log.warning("thread %s did not stop within %.0f s", t.name, _JOIN_TIMEOUT_S)

    def __enter__(self) -> DppLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- consumer side

    @property
    def _assembler(self) -> EpochAssembler[Batch] | None:
        return None if self._session is None else self._session.assembler

    def _next_batch(self) -> Batch:
        session = self._session
        if not self._epoch_active or session is None:
            raise StopIteration
        watchdog = StallWatchdog(self.reproduce_after_s, _STALL_WARN_S, time.monotonic())
        while True:
            batch = self._take_ready(session)
            if batch is not None:
                return batch
            if not self._ready and session.assembler.done:
                self._epoch_active = False
                session.acks.flush()
                raise StopIteration
            if self._closed.is_set():
                raise DppClientError("DppLoader was closed while iterating")
            if session.assembler.done:
                # Every frame of the epoch is in and the equal-batches limit holds the rest
                # back: what the queue holds is the next epoch's, so leave it there.
                self._closed.wait(0.02)
                continue
            frame = session.fan_in.get(_POLL_S if not self._ready else 0.02)
            if frame is None:
                self._on_idle(session, watchdog, time.monotonic())
                continue
            watchdog.progress(time.monotonic())
            self._ready.extend(session.assembler.push(frame.header, frame.rb, frame.prepared))

    def _take_ready(self, session: _Session) -> Batch | None:
        """The next batch the equal-batches policy lets go, or None (none ready, or held)."""
        assembler = session.assembler
        session.acks.received(self._received_base + assembler.batches_assembled, assembler.done)
        while self._ready and self._ready[0].dropped:
            self._consume(session, self._ready.popleft())
        if not self._ready:
            return None
        verdict = (
            session.acks.verdict(self._yielded, assembler.done)
            if self.spec.world_size > 1
            else Verdict.YIELD
        )
        if verdict is Verdict.SURPLUS:
            # Every rank's count is final and this rank has more: drop the rest.
            while self._ready:
                self._consume(session, self._ready.popleft())
            return None
        if verdict is Verdict.WAIT:
            return None
        ready = self._ready.popleft()
        self._consume(session, ready)
        batch = ready.prepared if ready.prepared is not None else self._convert(ready.rb)
        self._yielded += 1
        self._counters.add(batches=1, rows=batch.num_rows)
        return batch

    def _on_idle(self, session: _Session, watchdog: StallWatchdog, now: float) -> None:
        """No frame within the poll: ask for missing splits again, or warn, when it is time."""
        refused = session.acks.refused()
        if refused is not None:
            raise refused
        unreachable_s = session.acks.unreachable_s(now)
        if unreachable_s > self.master_timeout_s:
            raise DppUnavailableError(
                f"master {self.master} has been unreachable for {unreachable_s:.0f} s "
                f"(master_timeout_s={self.master_timeout_s:g}) and no frame arrives; rank "
                f"{self.rank} of session {self.session_id} gives up. Restart the master (on "
                "its --journal-dir to keep the session) and resume from the trainer's "
                "checkpoint (load_state_dict), or raise master_timeout_s to wait longer. "
                f"Last failure: {session.acks.last_failure or 'calls hang'}"
            )
        reproduce, warn = watchdog.idle(now)
        quiet_s = now - watchdog.last_progress
        if reproduce:
            # Nothing arrives although splits are missing: their frames may have been lost
            # with a broken stream. Ask for them again; copies are dropped.
            missing = session.assembler.incomplete_splits()
            session.acks.ask_reproduce(missing)
            _log.warning(
                "no frame for %.0f s: asking the master to produce %d missing split(s) again",
                quiet_s,
                len(missing),
            )
        if warn:
            _log.warning(
                "no frame for %.0f s; epoch %s of rank %d still misses %d splits "
                "(%d worker streams open, %d batches ready); waiting (workers may be "
                "restarting)",
                quiet_s,
                self.epoch,
                self.rank,
                session.assembler.missing_splits,
                session.fan_in.open_streams,
                len(self._ready),
            )

    def _consume(self, session: _Session, ready: ReadyBatch[Batch]) -> None:
        """The trainer took (or the policy dropped) ``ready``: queue its acknowledgement."""
        session.assembler.consume(ready)
        session.acks.consumed(session.assembler.take_dirty())

    def _to_batch(self, rb: pa.RecordBatch) -> Batch:
        batch = batch_from_arrow(rb, int64_ids=self._int64_ids)
        return batch.pin_memory() if self._pin else batch

    def _convert(self, rb: pa.RecordBatch) -> Batch:
        start = time.monotonic()
        batch = self._to_batch(rb)
        self._counters.add(decode_s=time.monotonic() - start)
        return batch

    # ----------------------------------------------------------------- session

    def _ensure_session(self) -> _Session:
        """Creates or joins the session once, and starts the parts bound to it."""
        if self._session is not None:
            return self._session
        self.session_id = self._open_session()
        overlap = EpochOverlap(self._link, self.session_id, self.rank, self._epoch_overlap)
        session = _Session(
            assembler=EpochAssembler(
                self.spec.batch_size,
                self.drop_last,
                session_id=self.session_id,
                rank=self.rank,
                deterministic=self.spec.deterministic,
                max_aside_frames=self._prefetch_batches,
            ),
            acks=Acknowledger(
                self._link,
                self.session_id,
                self.rank,
                self.spec.world_size,
                self._ack_interval_s,
                lambda: self.stats,
            ),
            fan_in=FanIn(
                session_id=self.session_id,
                rank=self.rank,
                batch_size=self.spec.batch_size,
                prefetch_batches=self._prefetch_batches,
                to_batch=self._to_batch,
                counters=self._counters,
                dial=self._dial,
                data_dial=self._data_dial,
                on_end_frame=overlap.ended,
            ),
            overlap=overlap,
        )
        self._session = session
        session.acks.start(f"dpp-ack-r{self.rank}")
        # List once here so errors (e.g. an old master without ListWorkers) surface in the
        # trainer's thread, then keep refreshing in the background.
        session.fan_in.sync(self._link.list_workers())
        session.fan_in.start_refresh(self._link.list_workers, self.worker_refresh_s)
        return session

    def _open_session(self) -> str:
        """The session id: the restored checkpoint's session if the master still knows it
        (or recovered it from its journal), else a session created (or joined) now."""
        plan = self._link.session_exists(self._saved_session_id) if self._saved_session_id else None
        if plan is not None:
            _log.info("resuming session %s", self._saved_session_id)
            self.plan = plan
            return self._saved_session_id
        if self._saved_session_id:
            _log.warning(
                "session %s of the checkpoint is unknown to the master; creating it again "
                "(split ids are stable, so the checkpoint's position still applies)",
                self._saved_session_id,
            )
        resp = self._link.create_session(self.spec, self.session_name)
        self.plan = resp.plan
        _log.info(
            "%s session %s: %d splits, %d rows planned",
            "joined" if resp.joined else "created",
            resp.session_id,
            resp.plan.num_splits,
            resp.plan.num_rows,
        )
        return resp.session_id
