"""The acknowledger: tells the master which batches this rank consumed, and reads back the
equal-batches limit.

Owns the consumption not yet acknowledged, the reproduce requests, the batch limit that the
master computes across ranks, and the thread that sends ``AckBatches`` every
``ack_interval_s``. Knows the proto; must never import ``dpp_server``, ``storage`` or torch.

Protocol, worked example (rank 1 of 2, ``ack_interval_s`` 0.2):

1. ``begin_epoch(3, 0)``: epoch 3 starts, nothing received yet.
2. The trainer consumes batches 0 and 1 of split A: ``consumed({"A": (2 batches)})``.
3. At the next tick the thread sends ``AckBatches(epoch 3, acks [(A, 2)], batches_received,
   received_all)``; the master journals it (after a worker failure, A resumes at batch 2) and
   answers ``batch_limit 5, limit_final False``: this rank may yield 5 batches for now.
4. Rank 0 has finished with 7 batches, this rank holds 8: once every rank has received all,
   the master answers ``limit 7, final``; :meth:`verdict` then calls the 8th batch surplus
   and the loader drops it, so both ranks yield 7 (DDP never hangs on a missing step).
5. A failed send puts its acknowledgements back; the next tick (or :meth:`flush`) sends them.
6. Nothing consumed for ``KEEPALIVE_S`` (a rank of world_size 1 in a long training step): an
   empty ack goes anyway, so the master knows the rank is alive (its ``rank_timeout_s``) and
   the loader learns early when the master is unreachable (:meth:`unreachable_s`).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from dpp_client.assembler import Consumption
from dpp_client.errors import DppClientError, DppUnavailableError
from dpp_client.master_link import MasterLink
from dpp_client.metrics import LoaderStats, client_stats_to_proto
from dpp_proto import master_pb2

__all__ = ["Acknowledger", "Verdict"]

_log = logging.getLogger(__name__)

#: Longest time between two acks while an epoch is open, consumption or not. Must stay well
#: under the master's ``rank_timeout_s`` (30 s by default).
KEEPALIVE_S = 5.0
#: A call in flight this long counts as the master being unreachable (since the last answer).
_SLOW_CALL_S = 2.0


class Verdict(enum.Enum):
    """What the equal-batches policy allows with a batch ready."""

    YIELD = "yield"  # under the limit: hand it to the trainer
    WAIT = "wait"  # at the limit, not final: wait for the master to raise it
    SURPLUS = "surplus"  # at the final limit: drop the rest of the epoch


class Acknowledger:
    """Sends this rank's consumption to the master, periodically and on demand.

    Shared by the trainer's thread (which records consumption and asks for the limit), its
    own sending thread and ``close``: ``_lock`` guards every field of the epoch's state
    (epoch, pending, reproduce, received counts, limit); ``_wake`` and ``_stop`` are events.
    The link is thread-safe.

    Args:
        link: the master.
        session_id: the session acknowledged.
        rank: this trainer's rank.
        world_size: ranks of the session; above 1 an ack is sent every tick even when nothing
            was consumed, to learn the limit.
        interval_s: seconds between acknowledgements; None turns them off (no thread,
            :meth:`flush` does nothing).
        stats: the loader's figures, sent along for the master's ``dpp_rank_*`` metrics.
    """

    def __init__(
        self,
        link: MasterLink,
        session_id: str,
        rank: int,
        world_size: int,
        interval_s: float | None,
        stats: Callable[[], LoaderStats],
    ) -> None:
        self._link = link
        self._session_id = session_id
        self._rank = rank
        self._world_size = world_size
        self._interval_s = interval_s
        self._stats = stats
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._pending: dict[str, Consumption] = {}
        self._reproduce: set[str] = set()
        self._batches_received = 0
        self._received_all = False
        self._limit = 0
        self._limit_final = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Master reachability: when it last answered, since when a call is in flight, whether
        # the last call failed as unreachable; and the last refusal that is not transient.
        self._last_sent = self._last_answer = time.monotonic()
        self._in_flight_since: float | None = None
        self._failing = False
        self.last_failure = ""  # the last unreachable call's error, for the loader's message
        self._refused: DppClientError | None = None

    # -- trainer's side --------------------------------------------------------------------

    def begin_epoch(self, epoch: int, batches_received: int) -> None:
        """Starts acknowledging ``epoch``; what is pending of the previous one is dropped."""
        with self._lock:
            self._epoch = epoch
            self._pending = {}
            self._batches_received = batches_received
            self._received_all = False
            self._limit = 0
            self._limit_final = False

    def consumed(self, dirty: Mapping[str, Consumption]) -> None:
        """Records the latest consumption of the splits in ``dirty``."""
        if dirty:
            with self._lock:
                self._pending.update(dirty)

    def received(self, batches_received: int, received_all: bool) -> None:
        """Records how many batches of the epoch arrived (the master's limit needs it)."""
        with self._lock:
            self._batches_received = batches_received
            self._received_all = received_all

    def ask_reproduce(self, split_ids: Iterable[str]) -> None:
        """Asks the master to produce ``split_ids`` again, at once."""
        with self._lock:
            self._reproduce.update(split_ids)
        self._wake.set()

    def verdict(self, yielded: int, all_received: bool) -> Verdict:
        """The equal-batches policy for the next ready batch, ``yielded`` batches into the
        epoch; ``all_received`` when this rank has every frame of the epoch."""
        with self._lock:
            limit, final = self._limit, self._limit_final
        if yielded < limit:
            return Verdict.YIELD
        if final and all_received:
            return Verdict.SURPLUS
        self._wake.set()  # ask the master now rather than at the next tick
        return Verdict.WAIT

    def unreachable_s(self, now: float) -> float:
        """Seconds the master has been unreachable: since its last answer while calls fail or
        hang; 0 while it answers."""
        with self._lock:
            slow = self._in_flight_since is not None and now - self._in_flight_since > _SLOW_CALL_S
            return now - self._last_answer if self._failing or slow else 0.0

    def refused(self) -> DppClientError | None:
        """The master's last refusal that retrying cannot fix (e.g. the session expired), or
        None; the loader raises it in the trainer's thread."""
        with self._lock:
            return self._refused

    # -- sending ---------------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Starts the periodic thread (when acknowledgements are on)."""
        if self._interval_s is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Sends what is pending now (epoch ends, close).

        Raises:
            DppClientError: the master could not be reached within the link's deadline, or
                refused; the acknowledgements stay pending.
        """
        if self._interval_s is not None:
            self._send()

    def stop(self) -> None:
        """Tells the thread to end (it sends nothing more); join it with :meth:`join`."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout_s: float) -> threading.Thread | None:
        """Joins the thread; returns it if it is still alive after ``timeout_s``."""
        if self._thread is None:
            return None
        self._thread.join(timeout_s)
        return self._thread if self._thread.is_alive() else None

    def _request(self) -> tuple[master_pb2.AckBatchesRequest, dict[str, Consumption]] | None:
        with self._lock:
            if self._epoch is None:
                return None
            idle = not self._pending and not self._reproduce and self._world_size == 1
            if idle and time.monotonic() - self._last_sent < KEEPALIVE_S:
                return None
            self._last_sent = time.monotonic()
            pending, self._pending = self._pending, {}
            reproduce, self._reproduce = self._reproduce, set()
            request = master_pb2.AckBatchesRequest(
                session_id=self._session_id,
                rank=self._rank,
                epoch=self._epoch,
                batches_received=self._batches_received,
                received_all=self._received_all,
            )
        for split_id, c in pending.items():
            request.acks.add(split_id=split_id, batches_consumed=c.batches, done=c.done)
        request.reproduce.extend(sorted(reproduce))
        request.client_stats.CopyFrom(client_stats_to_proto(self._stats()))
        return request, pending

    def _send(self) -> None:
        """Sends pending acknowledgements once; on failure they are kept for the next try."""
        prepared = self._request()
        if prepared is None:
            return
        request, pending = prepared
        with self._lock:
            self._in_flight_since = time.monotonic()
        try:
            response = self._link.ack_batches(request)
        except BaseException as exc:
            with self._lock:
                self._in_flight_since = None
                self._failing = isinstance(exc, DppUnavailableError)
                if self._failing:
                    self.last_failure = str(exc)
                if isinstance(exc, DppClientError) and not self._failing:
                    self._refused = exc
                if self._epoch == request.epoch:
                    for split_id, c in pending.items():
                        self._pending.setdefault(split_id, c)
            raise
        with self._lock:
            self._in_flight_since = None
            self._failing = False
            self._refused = None
            self._last_answer = time.monotonic()
            if self._epoch == request.epoch:
                self._limit = response.batch_limit
                self._limit_final = response.limit_final

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._send()
                failures = 0
            except DppClientError as exc:  # mapped RPC failures: the master is away
                if self._stop.is_set():
                    return  # the link was closed under a call in flight
                failures += 1
                log = _log.warning if failures % 25 == 1 else _log.debug
                log("%s; will retry", exc)
            except Exception:
                if self._stop.is_set():
                    return
                _log.exception("acknowledging batches failed")
