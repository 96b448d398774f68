"""Epoch overlap: the client begins epoch e+1 while the trainer still drains epoch e.

Owns :class:`EpochOverlap`: it watches the end frames of the current epoch's splits as the
stream threads queue them, and once every split of epoch e has sent its end frame, it calls
``BeginEpoch(session, rank, e + 1)`` in a background thread. The workers then lease and
produce epoch e+1's splits while the trainer consumes the last batches of epoch e, so neither
the workers nor the trainer idle at the boundary. ``iter(loader)`` for e+1 takes the response
fetched early instead of calling the master itself. Knows the proto; must never import
``dpp_server``, ``storage`` or torch.

Why "every end frame queued" and not earlier: from then on, every frame of epoch e is already
in the client's queue, ahead of any frame of e+1 (which no worker produces before the master
opened e+1). So the trainer's thread never has to read past frames of e+1 to reach frames of
e, and what e+1 prefetches is bounded by the loader's queue (``prefetch_batches``) and the
workers' buffers, exactly as within an epoch. Only a failure (frames lost with a broken
stream, produced again later) can put frames of e behind frames of e+1; the assembler then
keeps up to ``prefetch_batches`` such frames aside and drops the rest, which the loader asks
the master to produce again when e+1 begins (exactly-once holds: copies are dropped by
(split, batch number)).

Beginning an epoch early changes nothing of what the trainer sees: the epoch's splits, their
order (deterministic mode included) and its batches are the master's plan for that epoch,
whenever it is asked; the master's ``BeginEpoch`` is idempotent.

Protocol, worked example (rank 0, epochs 3, epoch 0 holds splits A, B):

1. ``iter(loader)`` begins epoch 0, then :meth:`EpochOverlap.watch` ``(0, {A, B}, epochs=3)``.
2. A stream thread queues A's end frame: :meth:`ended` ``(0, A)``; B is still awaited.
3. B's end frame is queued: nothing of epoch 0 is left to arrive, so a thread calls
   ``BeginEpoch(s, 0, 1)``; workers start on epoch 1's splits, whose first frames wait in the
   queue behind the last frames of epoch 0.
4. The trainer finishes epoch 0 and calls ``iter(loader)``: :meth:`take` ``(1)`` returns the
   response of step 3 (waiting for the call if it is still in flight), and the loader begins
   epoch 1 with frames already queued. ``watch(1, ...)`` arms the next overlap; for the last
   epoch (2) nothing is begun early.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from dpp_client.master_link import MasterLink
from dpp_proto import master_pb2

__all__ = ["EpochOverlap"]

_log = logging.getLogger(__name__)


class _EarlyBegin:
    """One early ``BeginEpoch`` call: its thread and, once done, its response or error."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.done = threading.Event()
        self.response: master_pb2.BeginEpochResponse | None = None
        self.failed = False
        self.began_at: float | None = None  # monotonic time the master answered
        self.thread: threading.Thread | None = None


class EpochOverlap:
    """Begins the next epoch early, once the current one has nothing left to arrive.

    Shared by the trainer's thread (:meth:`watch`, :meth:`take`, :meth:`reset`), the stream
    threads (:meth:`ended`) and one short-lived thread per early call: ``_lock`` guards every
    field; the link is thread-safe.

    Args:
        link: the master.
        session_id: the session.
        rank: this trainer's rank.
        enabled: False turns overlap off: epochs begin only when the trainer asks.
    """

    def __init__(self, link: MasterLink, session_id: str, rank: int, enabled: bool = True) -> None:
        self._link = link
        self._session_id = session_id
        self._rank = rank
        self.enabled = enabled
        self._lock = threading.Lock()
        self._epoch: int | None = None  # the epoch watched
        self._epochs = 0
        self._awaited: set[str] = set()
        self._ended: dict[int, set[str]] = {}  # end frames of epochs not watched yet
        self._early: _EarlyBegin | None = None
        self._closed = False

    def watch(
        self, epoch: int, split_ids: Iterable[str], epochs: int, again: Iterable[str] = ()
    ) -> None:
        """Epoch ``epoch`` began; its end frames are awaited for ``split_ids`` (the splits
        not already done). ``epochs`` is the session's number of epochs. ``again``: splits
        asked to be produced again, awaited even if an end frame of theirs was seen."""
        with self._lock:
            self._epoch = epoch
            self._epochs = epochs
            self._awaited = set(split_ids) - self._ended.pop(epoch, set())
            self._awaited.update(again)
            for old in [e for e in self._ended if e < epoch]:
                del self._ended[old]
            self._maybe_begin()

    def ended(self, epoch: int, split_id: str) -> None:
        """A stream thread queued the end frame of ``split_id`` of ``epoch``."""
        with self._lock:
            if self._epoch is None or epoch > self._epoch:
                self._ended.setdefault(epoch, set()).add(split_id)
                return
            if epoch < self._epoch or split_id not in self._awaited:
                return
            self._awaited.discard(split_id)
            self._maybe_begin()

    def take(self, epoch: int, timeout_s: float) -> master_pb2.BeginEpochResponse | None:
        """The response of an early ``BeginEpoch`` of ``epoch``, once; None when there was
        none (or it failed): the caller then calls ``BeginEpoch`` itself.

        An early call still in flight is waited for (up to ``timeout_s``), so an epoch is
        begun once.
        """
        with self._lock:
            early = self._early
            if early is None or early.epoch != epoch:
                return None
            self._early = None
        if not early.done.wait(timeout_s) or early.failed:
            return None
        return early.response

    def began_early_at(self, epoch: int) -> float | None:
        """When the master answered the early ``BeginEpoch`` of ``epoch`` (monotonic), if
        that call was made and not yet taken; for tests and logs."""
        with self._lock:
            early = self._early
        if early is None or early.epoch != epoch or not early.done.is_set():
            return None
        return early.began_at

    def reset(self) -> None:
        """Forgets the watched epoch and any early response (a checkpoint was restored: the
        next epoch begins from it, not from what this loader saw)."""
        with self._lock:
            self._epoch = None
            self._awaited = set()
            self._ended = {}
            self._early = None

    def close(self, timeout_s: float) -> threading.Thread | None:
        """Stops beginning epochs; joins a call in flight. Returns its thread if it is still
        alive after ``timeout_s``."""
        with self._lock:
            self._closed = True
            thread = None if self._early is None else self._early.thread
        if thread is None:
            return None
        thread.join(timeout_s)
        return thread if thread.is_alive() else None

    def _maybe_begin(self) -> None:
        """Starts the early call for the next epoch when nothing of the watched one is
        awaited. Holds ``_lock``."""
        if not self.enabled or self._closed or self._epoch is None or self._awaited:
            return
        following = self._epoch + 1
        if following >= self._epochs:
            return
        if self._early is not None and self._early.epoch >= following:
            return
        early = _EarlyBegin(following)
        early.thread = threading.Thread(
            target=self._begin,
            args=(early,),
            name=f"dpp-begin-r{self._rank}-e{following}",
            daemon=True,
        )
        self._early = early
        early.thread.start()

    def _begin(self, early: _EarlyBegin) -> None:
        request = master_pb2.BeginEpochRequest(
            session_id=self._session_id, rank=self._rank, epoch=early.epoch
        )
        try:
            early.response = self._link.begin_epoch(request)
            early.began_at = time.monotonic()
            _log.debug("rank %d began epoch %d early", self._rank, early.epoch)
        except Exception as exc:  # the trainer's own BeginEpoch will try again and raise
            early.failed = True
            with self._lock:
                closed = self._closed
            if not closed:
                _log.warning(
                    "beginning epoch %d early failed (%s); it begins when the trainer asks",
                    early.epoch,
                    exc,
                )
        finally:
            early.done.set()
