"""DppLoader: the trainer-side iterable that streams a rank's batches from dpp workers.

Owns: session creation/joining, epochs, one StreamBatches stream per worker, and the hand-off
of decoded frames to the trainer's thread. Knows the proto and torch; must never import
``dpp_server`` or ``storage``.

Threads (all daemon, all joined by :meth:`DppLoader.close`):

* the *trainer's thread* calls ``__iter__`` / ``__next__``; it alone owns the
  :class:`~dpp_client.assembler.EpochAssembler` (dedup, completion, re-batching);
* one *refresher* thread calls ``ListWorkers`` every ``worker_refresh_s``, starts a stream
  thread for each new worker and stops the streams of workers no longer listed;
* one *stream* thread per worker calls ``StreamBatches(session_id, rank)`` once and keeps the
  stream open across epochs, decoding frames (and converting/pinning whole batches) before
  putting them in one bounded queue. When the queue is full the thread blocks, stops reading,
  and gRPC flow control pushes back on the worker.

Protocol, worked example (rank 0, two workers, epochs 2):

1. ``iter(loader)``: ``CreateSession(spec, session_name)`` -> ``session_id``; the refresher lists
   workers W1, W2 and opens a stream to each; ``BeginEpoch(session_id, 0, 0)`` -> splits [A, B].
2. W1 sends frames of A, W2 of B; the trainer's ``next()`` feeds them to the assembler and
   yields full batches as they come, partial ones once re-batched.
3. W2 is killed. Its stream fails with UNAVAILABLE; the thread re-dials with capped backoff while
   W2 is still listed, and is stopped once the master stops listing it. The master re-leases B
   to W1, which re-sends B from the last reported batch; repeated seqs are dropped.
4. A and B complete: the remainder is yielded and iteration stops.
5. ``iter(loader)`` again: ``BeginEpoch(session_id, 0, 1)``; frames of epoch 1 that arrived
   before it were kept aside. A third ``iter`` gets OUT_OF_RANGE: an empty iteration.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
import pyarrow as pa
import torch
from google.protobuf.message import Message

from dpp_client.assembler import Consumption, EpochAssembler, ReadyBatch
from dpp_client.batch import Batch, batch_from_arrow
from dpp_client.errors import (
    RETRYABLE_CODES,
    DppClientError,
    error_from_rpc,
    rpc_code,
)
from dpp_client.frames import decode_frame
from dpp_client.metrics import client_stats_to_proto
from dpp_client.spec import SessionSpec, coerce_spec
from dpp_proto import master_pb2, master_pb2_grpc, worker_pb2

__all__ = ["DppLoader", "LoaderStats"]

_log = logging.getLogger(__name__)

STREAM_METHOD = "/dpp.v1.WorkerService/StreamBatches"
MAX_MESSAGE_BYTES = 256 << 20
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 16 << 20),
]
_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0
_POLL_S = 0.5
_STALL_WARN_S = 10.0
_JOIN_TIMEOUT_S = 10.0
_STATE_VERSION = 1

_Resp = TypeVar("_Resp", bound=Message)


@dataclass(frozen=True)
class LoaderStats:
    """A snapshot of a loader's counters.

    Attributes:
        batches: batches yielded to the trainer.
        rows: rows in those batches.
        bytes_received: frame bytes received from all workers.
        stall_s: seconds the trainer spent inside ``__next__`` (blocked waiting for data, or
            assembling it): the input pipeline's cost to training.
        decode_s: seconds spent decoding frames and converting them to tensors, summed over
            all threads.
        wall_s: seconds since the loader's first ``__next__``.
    """

    batches: int
    rows: int
    bytes_received: int
    stall_s: float
    decode_s: float
    wall_s: float

    @property
    def stall_share(self) -> float:
        """Fraction of wall time the trainer was stalled on input (0 when nothing ran yet)."""
        return self.stall_s / self.wall_s if self.wall_s > 0 else 0.0


class _Counters:
    """Loader counters. Shared across threads: ``lock`` guards every field."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = 0
        self.rows = 0
        self.bytes_received = 0
        self.stall_s = 0.0
        self.decode_s = 0.0
        self.first_next: float | None = None

    def add(self, **deltas: float) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


class _StreamCall(Protocol):
    """The part of a grpc streaming call the loader uses: iterate it, cancel it."""

    def __iter__(self) -> Iterator[bytes]: ...

    def cancel(self) -> bool: ...


@dataclass
class _Frame:
    header: worker_pb2.FrameHeader
    rb: pa.RecordBatch | None
    prepared: Batch | None


@dataclass
class _Failure:
    error: BaseException


class _WorkerStream:
    """One worker's stream thread and its cancellation handles.

    Shared between its stream thread, the refresher and ``close``: ``lock`` guards ``call``
    and the decision to start a new call, so a cancel can never miss a call being started.
    """

    def __init__(self, worker_id: str, address: str) -> None:
        self.worker_id = worker_id
        self.address = address
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.call: _StreamCall | None = None
        self.thread: threading.Thread | None = None

    def cancel(self) -> None:
        with self.lock:
            self.stop.set()
            if self.call is not None:
                self.call.cancel()


class _AckState:
    """Consumption waiting to be acknowledged, and the equal-batches limit from the master.

    Shared by the trainer's thread (which records consumption) and the ack thread (which
    sends it): ``lock`` guards every field.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.epoch: int | None = None
        self.pending: dict[str, Consumption] = {}
        self.batches_received = 0
        self.received_all = False
        self.limit = 0
        self.limit_final = False
        self.reproduce: set[str] = set()
        self.wake = threading.Event()

    def reset(self, epoch: int, batches_received: int) -> None:
        with self.lock:
            self.epoch = epoch
            self.pending = {}
            self.batches_received = batches_received
            self.received_all = False
            self.limit = 0
            self.limit_final = False


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

    Shared across threads: the trainer's thread owns the assembler and epoch state; ``_lock``
    guards ``_streams``; ``_counters.lock`` guards the counters; the queue is thread-safe.

    Args:
        master: ``host:port`` of the master.
        spec: a :class:`SessionSpec`, a YAML path (or text), or a mapping.
        rank: this trainer's rank, ``0 <= rank < spec.world_size``.
        session_name: join key; all ranks pass the same name and spec to share a session.
            Empty: always a new session (fine for a single rank).
        prefetch_batches: frames buffered between the streams and the trainer. More hides
            worker hiccups; each costs one batch of memory.
        drop_last: drop each epoch's final short batch, so every batch has ``batch_size`` rows.
        pin_memory: pin batches in the stream threads for fast ``to(device,
            non_blocking=True)``; a no-op without CUDA.
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
    """

    def __init__(
        self,
        master: str,
        spec: SessionSpec | str | os.PathLike[str] | Mapping[str, Any],
        *,
        rank: int = 0,
        session_name: str = "",
        prefetch_batches: int = 16,
        drop_last: bool = False,
        pin_memory: bool = False,
        rpc_timeout_s: float = 30.0,
        worker_refresh_s: float = 1.0,
        ack_interval_s: float | None = 0.2,
        reproduce_after_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.spec = coerce_spec(spec)
        if not 0 <= rank < self.spec.world_size:
            raise ValueError(f"rank {rank} outside [0, world_size={self.spec.world_size})")
        if prefetch_batches < 1:
            raise ValueError(f"prefetch_batches must be >= 1, got {prefetch_batches}")
        self.master = master
        self.rank = rank
        self.session_name = session_name
        self.drop_last = drop_last
        self.rpc_timeout_s = rpc_timeout_s
        self.worker_refresh_s = worker_refresh_s
        self._pin = pin_memory and torch.cuda.is_available()
        if pin_memory and not self._pin:
            _log.info("pin_memory=True ignored: CUDA is not available")

        self.session_id = ""
        self.plan: master_pb2.SessionPlan | None = None
        self.epochs: int | None = None
        self.epoch: int | None = None
        self._next_epoch = 0
        self._epoch_active = False

        self._queue: queue.Queue[_Frame | _Failure] = queue.Queue(maxsize=prefetch_batches)
        self._ready: deque[ReadyBatch[Batch]] = deque()
        self._acks = _AckState()
        if ack_interval_s is None and self.spec.world_size > 1:
            raise ValueError(
                "ack_interval_s=None turns acknowledgements off, but world_size > 1 needs them "
                "for equal batch counts across ranks"
            )
        self._ack_interval_s = ack_interval_s
        self.reproduce_after_s = reproduce_after_s
        self._acker: threading.Thread | None = None
        # Batches yielded in the current epoch (restored from a checkpoint, then counted).
        self._yielded = 0
        self._received_base = 0
        # Set by load_state_dict: (epoch or None, consumption, yielded) to resume from.
        self._restore: tuple[int | None, dict[str, Consumption], int] | None = None
        self._saved_session_id = ""
        self._assembler: EpochAssembler[Batch] | None = None
        self._counters = _Counters()

        self._lock = threading.Lock()
        self._streams: dict[str, _WorkerStream] = {}
        self._closed = threading.Event()
        self._channel: grpc.Channel | None = None
        self._master: master_pb2_grpc.MasterServiceStub | None = None
        self._refresher: threading.Thread | None = None

    # ----------------------------------------------------------------- public API

    @property
    def stats(self) -> LoaderStats:
        """A consistent snapshot of the counters (safe from any thread)."""
        c = self._counters
        with c.lock:
            wall = 0.0 if c.first_next is None else time.monotonic() - c.first_next
            return LoaderStats(
                batches=c.batches,
                rows=c.rows,
                bytes_received=c.bytes_received,
                stall_s=c.stall_s,
                decode_s=c.decode_s,
                wall_s=wall,
            )

    def list_workers(self) -> list[master_pb2.WorkerInfo]:
        """Lists the live workers (with stage timings) through the master."""
        stub = self._connect()
        resp = self._call(stub.ListWorkers, master_pb2.ListWorkersRequest(), "ListWorkers")
        return list(resp.workers)

    def __iter__(self) -> Iterator[Batch]:
        """Begins the next epoch (creating or joining the session on the first call), or
        resumes the epoch a restored checkpoint was in."""
        if self._closed.is_set():
            raise DppClientError("DppLoader is closed; create a new one to read again")
        assembler = self._ensure_session()
        self._flush_acks()
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
        try:
            resp = self._call(
                self._connect().BeginEpoch,
                request,
                f"BeginEpoch(session {self.session_id}, rank {self.rank}, epoch {epoch})",
                passthrough_codes=(grpc.StatusCode.OUT_OF_RANGE,),
            )
        except grpc.RpcError as exc:
            _log.info(
                "session %s has no epoch %d (%s): nothing more to read",
                self.session_id,
                epoch,
                exc.details() if isinstance(exc, grpc.Call) else exc,
            )
            self._epoch_active = False
            return _EpochIterator(self, None)
        self._next_epoch = epoch + 1
        self.epochs = resp.epochs
        self.epoch = epoch
        self._ready.clear()
        self._yielded = yielded
        self._received_base = yielded
        self._acks.reset(epoch, yielded)
        self._ready.extend(assembler.begin_epoch(epoch, list(resp.split_ids), consumed))
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
        if self._assembler is None and state.get("session_id"):
            self._saved_session_id = str(state["session_id"])
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

    def _next_of(self, epoch: int | None) -> Batch:
        """Returns the next batch of ``epoch``, blocking until one is ready.

        Raises:
            StopIteration: the epoch is complete (call ``iter()`` for the next one).
            WorkerDataError: a worker failed a split of this epoch.
            DppClientError: a stream failed for another reason (re-raised from its thread).
        """
        start = time.monotonic()
        with self._counters.lock:
            if self._counters.first_next is None:
                self._counters.first_next = start
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
        if self._assembler is not None:
            try:
                self._flush_acks()
            except Exception:
                _log.exception("final acknowledgement failed")
        self._closed.set()
        self._acks.wake.set()
        with self._lock:
            streams = list(self._streams.values())
        for ws in streams:
            ws.cancel()
        threads = [ws.thread for ws in streams if ws.thread is not None]
        for extra in (self._refresher, self._acker):
            if extra is not None:
                threads.append(extra)
        for t in threads:
            t.join(timeout=_JOIN_TIMEOUT_S)
            if t.is_alive():
                _log.warning("thread %s did not stop within %.0f s", t.name, _JOIN_TIMEOUT_S)
        if self._channel is not None:
            self._channel.close()
        self._ready.clear()
        _log.info("closed loader of session %s rank %d", self.session_id, self.rank)

    def __enter__(self) -> DppLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- consumer side

    def _next_batch(self) -> Batch:
        assembler = self._assembler
        if not self._epoch_active or assembler is None:
            raise StopIteration
        equal_batches = self.spec.world_size > 1
        last_progress = time.monotonic()
        last_warning = last_reproduce = last_progress
        while True:
            self._note_received(assembler)
            while self._ready and self._ready[0].dropped:
                self._consume(assembler, self._ready.popleft())
            if self._ready:
                allowed, surplus = self._allowed(assembler) if equal_batches else (True, False)
                if surplus:
                    # Every rank's count is final and this rank has more: drop the rest.
                    while self._ready:
                        self._consume(assembler, self._ready.popleft())
                    continue
                if allowed:
                    ready = self._ready.popleft()
                    self._consume(assembler, ready)
                    batch = (
                        ready.prepared if ready.prepared is not None else self._convert(ready.rb)
                    )
                    self._yielded += 1
                    self._counters.add(batches=1, rows=batch.num_rows)
                    return batch
            elif assembler.done:
                self._epoch_active = False
                self._flush_acks()
                raise StopIteration
            if self._closed.is_set():
                raise DppClientError("DppLoader was closed while iterating")
            try:
                item = self._queue.get(timeout=_POLL_S if not self._ready else 0.02)
            except queue.Empty:
                now = time.monotonic()
                if now - last_progress >= self.reproduce_after_s and (
                    now - last_reproduce >= self.reproduce_after_s
                ):
                    # Nothing arrives although splits are missing: their frames may have been
                    # lost with a broken stream. Ask for them again; copies are dropped.
                    last_reproduce = now
                    missing = assembler.incomplete_splits()
                    with self._acks.lock:
                        self._acks.reproduce.update(missing)
                    self._acks.wake.set()
                    _log.warning(
                        "no frame for %.0f s: asking the master to produce %d missing split(s) "
                        "again",
                        now - last_progress,
                        len(missing),
                    )
                if now - last_progress >= _STALL_WARN_S and now - last_warning >= _STALL_WARN_S:
                    last_warning = now
                    with self._lock:
                        n_streams = len(self._streams)
                    _log.warning(
                        "no frame for %.0f s; epoch %s of rank %d still misses %d splits "
                        "(%d worker streams open, %d batches ready); waiting (workers may be "
                        "restarting)",
                        now - last_progress,
                        self.epoch,
                        self.rank,
                        assembler.missing_splits,
                        n_streams,
                        len(self._ready),
                    )
                continue
            if isinstance(item, _Failure):
                raise item.error
            last_progress = time.monotonic()
            self._ready.extend(assembler.push(item.header, item.rb, item.prepared))

    def _consume(self, assembler: EpochAssembler[Batch], ready: ReadyBatch[Batch]) -> None:
        """The trainer took (or the policy dropped) ``ready``: queue its acknowledgement."""
        assembler.consume(ready)
        dirty = assembler.take_dirty()
        if dirty:
            with self._acks.lock:
                self._acks.pending.update(dirty)

    def _note_received(self, assembler: EpochAssembler[Batch]) -> None:
        with self._acks.lock:
            self._acks.batches_received = self._received_base + assembler.batches_assembled
            self._acks.received_all = assembler.done

    def _allowed(self, assembler: EpochAssembler[Batch]) -> tuple[bool, bool]:
        """(may yield the next batch, the rest is surplus) under equal batches per rank."""
        with self._acks.lock:
            limit, final = self._acks.limit, self._acks.limit_final
        if self._yielded < limit:
            return True, False
        if final and assembler.done:
            return False, True
        self._acks.wake.set()  # ask the master now rather than at the next tick
        return False, False

    def _convert(self, rb: pa.RecordBatch) -> Batch:
        start = time.monotonic()
        batch = batch_from_arrow(rb)
        if self._pin:
            batch = batch.pin_memory()
        self._counters.add(decode_s=time.monotonic() - start)
        return batch

    # ----------------------------------------------------------------- control plane

    def _connect(self) -> master_pb2_grpc.MasterServiceStub:
        if self._master is None:
            self._channel = grpc.insecure_channel(self.master, options=_CHANNEL_OPTIONS)
            self._master = master_pb2_grpc.MasterServiceStub(self._channel)
        return self._master

    def _call(
        self,
        method: Callable[..., _Resp],
        request: Message,
        what: str,
        passthrough_codes: tuple[grpc.StatusCode, ...] = (),
    ) -> _Resp:
        """Calls a master RPC, retrying UNAVAILABLE/ABORTED with capped backoff until
        ``rpc_timeout_s`` has passed since the first attempt.

        Raises:
            grpc.RpcError: unchanged, for codes in ``passthrough_codes`` (the caller handles
                them).
            DppClientError: every other failure, mapped by ``error_from_rpc``.
        """
        deadline = time.monotonic() + self.rpc_timeout_s
        backoff = _BACKOFF_START_S
        while True:
            remaining = deadline - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.001))
            except grpc.RpcError as exc:
                code = rpc_code(exc)
                if code in passthrough_codes:
                    raise
                remaining = deadline - time.monotonic()
                if code not in RETRYABLE_CODES or remaining <= backoff or self._closed.is_set():
                    raise error_from_rpc(exc, f"{what} at master {self.master}") from exc
                _log.info("%s: %s; retrying in %.1f s", what, code, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _ensure_session(self) -> EpochAssembler[Batch]:
        """Creates or joins the session once; returns the assembler bound to it."""
        if self._assembler is not None:
            return self._assembler
        if self._saved_session_id and self._session_exists(self._saved_session_id):
            # A restored checkpoint's session, still known to the master (or recovered from
            # its journal).
            self.session_id = self._saved_session_id
            _log.info("resuming session %s", self.session_id)
        else:
            if self._saved_session_id:
                _log.warning(
                    "session %s of the checkpoint is unknown to the master; creating it again "
                    "(split ids are stable, so the checkpoint's position still applies)",
                    self._saved_session_id,
                )
            resp = self._call(
                self._connect().CreateSession,
                master_pb2.CreateSessionRequest(
                    spec=self.spec.to_proto(), session_name=self.session_name
                ),
                f"CreateSession(name={self.session_name!r}, table={self.spec.table_uri!r})",
            )
            self.session_id = resp.session_id
            self.plan = resp.plan
            _log.info(
                "%s session %s: %d splits, %d rows planned",
                "joined" if resp.joined else "created",
                resp.session_id,
                resp.plan.num_splits,
                resp.plan.num_rows,
            )
        assembler: EpochAssembler[Batch] = EpochAssembler(
            self.spec.batch_size,
            self.drop_last,
            session_id=self.session_id,
            rank=self.rank,
            deterministic=self.spec.deterministic,
        )
        self._assembler = assembler
        if self._ack_interval_s is not None:
            self._acker = threading.Thread(
                target=self._ack_loop, name=f"dpp-ack-r{self.rank}", daemon=True
            )
            self._acker.start()
        # List once here so errors (e.g. an old master without ListWorkers) surface in the
        # trainer's thread, then keep refreshing in the background.
        self._sync_streams(self.list_workers())
        self._refresher = threading.Thread(
            target=self._refresh_loop, name=f"dpp-refresh-r{self.rank}", daemon=True
        )
        self._refresher.start()
        return assembler

    def _session_exists(self, session_id: str) -> bool:
        try:
            self._call(
                self._connect().GetSession,
                master_pb2.GetSessionRequest(session_id=session_id),
                f"GetSession({session_id})",
                passthrough_codes=(grpc.StatusCode.NOT_FOUND,),
            )
        except grpc.RpcError:
            return False
        return True

    # ----------------------------------------------------------------- acknowledgements

    def _ack_request(self) -> tuple[master_pb2.AckBatchesRequest, dict[str, Consumption]] | None:
        with self._acks.lock:
            if self._acks.epoch is None:
                return None
            if not self._acks.pending and not self._acks.reproduce and self.spec.world_size == 1:
                return None
            pending, self._acks.pending = self._acks.pending, {}
            reproduce, self._acks.reproduce = self._acks.reproduce, set()
            request = master_pb2.AckBatchesRequest(
                session_id=self.session_id,
                rank=self.rank,
                epoch=self._acks.epoch,
                batches_received=self._acks.batches_received,
                received_all=self._acks.received_all,
            )
        for split_id, c in pending.items():
            request.acks.add(split_id=split_id, batches_consumed=c.batches, done=c.done)
        request.reproduce.extend(sorted(reproduce))
        request.client_stats.CopyFrom(client_stats_to_proto(self.stats))  # for dpp_rank_* metrics
        return request, pending

    def _send_acks(self, timeout_s: float) -> None:
        """Sends pending acknowledgements once; on failure they are kept for the next try."""
        prepared = self._ack_request()
        if prepared is None:
            return
        request, pending = prepared
        try:
            resp = self._connect().AckBatches(request, timeout=timeout_s)
        except grpc.RpcError:
            with self._acks.lock:
                if self._acks.epoch == request.epoch:
                    for split_id, c in pending.items():
                        self._acks.pending.setdefault(split_id, c)
            raise
        with self._acks.lock:
            if self._acks.epoch == request.epoch:
                self._acks.limit = resp.batch_limit
                self._acks.limit_final = resp.limit_final

    def _flush_acks(self) -> None:
        """Sends what is pending now, retrying like any master call (epoch ends, close)."""
        if self._ack_interval_s is None:
            return
        deadline = time.monotonic() + self.rpc_timeout_s
        backoff = _BACKOFF_START_S
        while True:
            try:
                self._send_acks(self.rpc_timeout_s)
                return
            except grpc.RpcError as exc:
                if rpc_code(exc) not in RETRYABLE_CODES or time.monotonic() + backoff > deadline:
                    raise error_from_rpc(exc, f"AckBatches at master {self.master}") from exc
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _ack_loop(self) -> None:
        """Acknowledges consumption every ``ack_interval_s`` (sooner when woken)."""
        failures = 0
        while not self._closed.is_set():
            self._acks.wake.wait(self._ack_interval_s or 1.0)
            self._acks.wake.clear()
            if self._closed.is_set():
                return
            try:
                self._send_acks(self.rpc_timeout_s)
                failures = 0
            except grpc.RpcError as exc:
                failures += 1
                log = _log.warning if failures % 25 == 1 else _log.debug
                log("AckBatches at %s: %s; will retry", self.master, rpc_code(exc))
            except Exception:
                _log.exception("acknowledging batches failed")

    # ----------------------------------------------------------------- background threads

    def _fail(self, error: BaseException) -> None:
        """Hands an error to the trainer's thread (blocking while the queue is full)."""
        while not self._closed.is_set():
            try:
                self._queue.put(_Failure(error), timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _refresh_loop(self) -> None:
        failures = 0
        while not self._closed.wait(self.worker_refresh_s):
            try:
                workers = self._connect().ListWorkers(
                    master_pb2.ListWorkersRequest(), timeout=self.rpc_timeout_s
                )
            except grpc.RpcError as exc:
                if self._closed.is_set():
                    return
                code = rpc_code(exc)
                if code in RETRYABLE_CODES or code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    failures += 1
                    log = _log.warning if failures % 10 == 1 else _log.debug
                    log("ListWorkers at %s: %s; keeping the current streams", self.master, code)
                    continue
                self._fail(error_from_rpc(exc, f"ListWorkers at master {self.master}"))
                return
            failures = 0
            self._sync_streams(list(workers.workers))

    def _sync_streams(self, workers: list[master_pb2.WorkerInfo]) -> None:
        """Starts streams for new workers and stops those of workers no longer listed.

        Streams are keyed by address, not worker id: a worker that registers again (after a
        master restart) keeps its stream, so no frame is lost to a needless reconnect.
        """
        listed = {w.address: w.worker_id for w in workers}
        with self._lock:
            if self._closed.is_set():
                return
            for address, ws in list(self._streams.items()):
                gone = address not in listed
                if gone or ws.thread is None or not ws.thread.is_alive():
                    if gone:
                        _log.info("worker %s (%s) no longer listed", ws.worker_id, address)
                    ws.cancel()
                    del self._streams[address]
                else:
                    ws.worker_id = listed[address]
            for address, worker_id in listed.items():
                if address in self._streams:
                    continue
                ws = _WorkerStream(worker_id, address)
                ws.thread = threading.Thread(
                    target=self._stream_loop,
                    args=(ws,),
                    name=f"dpp-stream-{address}-r{self.rank}",
                    daemon=True,
                )
                self._streams[address] = ws
                ws.thread.start()
        # Threads of dropped workers exit on their own once cancelled; close() joins the rest.

    def _stream_loop(self, ws: _WorkerStream) -> None:
        """Streams one worker's frames into the queue, re-dialling while it stays listed."""
        request = worker_pb2.StreamBatchesRequest(session_id=self.session_id, rank=self.rank)
        backoff = _BACKOFF_START_S
        while not ws.stop.is_set():
            channel = grpc.insecure_channel(ws.address, options=_CHANNEL_OPTIONS)
            try:
                stream = channel.unary_stream(
                    STREAM_METHOD,
                    request_serializer=worker_pb2.StreamBatchesRequest.SerializeToString,
                    response_deserializer=None,
                )
                with ws.lock:
                    if ws.stop.is_set():
                        return
                    call: _StreamCall = stream(request)
                    ws.call = call
                _log.info("streaming from worker %s at %s", ws.worker_id, ws.address)
                for raw in call:
                    backoff = _BACKOFF_START_S
                    if not self._forward(raw, ws):
                        return
                _log.info("worker %s at %s ended its stream", ws.worker_id, ws.address)
            except grpc.RpcError as exc:
                if ws.stop.is_set():
                    return
                code = rpc_code(exc)
                if code not in RETRYABLE_CODES and code != grpc.StatusCode.CANCELLED:
                    self._fail(
                        error_from_rpc(
                            exc,
                            f"StreamBatches(session {self.session_id}, rank {self.rank}) from "
                            f"worker {ws.worker_id} at {ws.address}",
                        )
                    )
                    return
                _log.info(
                    "stream from worker %s at %s: %s; re-dialling in %.1f s",
                    ws.worker_id,
                    ws.address,
                    code,
                    backoff,
                )
            except Exception as exc:  # decode errors and bugs: surface in the trainer
                if not ws.stop.is_set():
                    self._fail(exc)
                return
            finally:
                with ws.lock:
                    ws.call = None
                channel.close()
            if ws.stop.wait(backoff):
                return
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _forward(self, raw: bytes, ws: _WorkerStream) -> bool:
        """Decodes one frame and queues it; False when the stream should stop."""
        start = time.monotonic()
        header, rb = decode_frame(raw)
        prepared: Batch | None = None
        if rb is not None and rb.num_rows == self.spec.batch_size:
            # Whole frames are delivered unchanged, so convert (and pin) them here, off the
            # trainer's thread. Partial ones are converted after re-batching.
            prepared = batch_from_arrow(rb)
            if self._pin:
                prepared = prepared.pin_memory()
        self._counters.add(decode_s=time.monotonic() - start, bytes_received=len(raw))
        item = _Frame(header, rb, prepared)
        while not ws.stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False
