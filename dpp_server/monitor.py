"""The master's cluster monitor: what the cluster did in the last window, and what to do.

Owns:

* :class:`ClientStatsStore`: the latest figures each rank's loader reported (inside
  ``AckBatchesRequest.client_stats``), per (session, rank);
* :class:`ClusterMonitor`: samples the master every few seconds, turns cumulative figures into
  one window (:class:`ClusterStatus`), asks :func:`~dpp_server.bottleneck.analyze` for the
  verdict and the :class:`~dpp_server.scaling.Scaler` for the desired worker count;
* :func:`split_counts`: splits pending, leased and done per session, read from the master.

What ``GetClusterStatus``, ``dpp top``, the autoscaler and the master's Prometheus collector
(:class:`~dpp_server.metrics.MasterMetrics`) all read. Must never import grpc
(``monitor_service.py`` is the gRPC face) or prometheus_client (``metrics.py`` exports these
figures; this module only computes them).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from dpp_server import bottleneck
from dpp_server.master import StreamView, WorkerRecord
from dpp_server.records import ClientFigures, StageSeconds, WorkerCounters
from dpp_server.scaling import Scaler, ScalerInput

logger = logging.getLogger(__name__)


# -- the ranks' figures -----------------------------------------------------------------------


#: At most this many (session, rank) pairs are kept, so the master exports at most this many
#: series of each ``dpp_rank_*`` metric (7 metrics: about 7,000 series, ~1 MB of /metrics).
MAX_RANK_SERIES = 1024


class ClientStatsStore:
    """The latest figures per (session, rank). Thread-safe: ``_lock`` guards ``_latest``.

    What bounds the labels the master exports: only ranks of sessions the master answered are
    recorded (``MetricsInterceptor`` records after the handler); ranks silent for
    ``stale_after_s`` are forgotten (the ranks of expired sessions among them); and beyond
    ``max_series`` pairs the least recently reported is dropped (a cluster with more ranks
    than that shows the most recent ones; ``dpp top`` and the verdict read the same store).
    """

    def __init__(
        self,
        stale_after_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_series: int = MAX_RANK_SERIES,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.max_series = max_series
        self._clock = clock
        self._lock = threading.Lock()
        # Insertion order is report order (a report moves its key to the end).
        self._latest: dict[tuple[str, int], tuple[ClientFigures, float]] = {}

    def record(self, session_id: str, rank: int, figures: ClientFigures) -> None:
        with self._lock:
            self._latest.pop((session_id, rank), None)
            self._latest[(session_id, rank)] = (figures, self._clock())
            while len(self._latest) > self.max_series:
                del self._latest[next(iter(self._latest))]

    def retain(self, session_ids: Iterable[str]) -> None:
        """Forgets the ranks of every session not in ``session_ids`` (expired sessions)."""
        live = set(session_ids)
        with self._lock:
            for key in [k for k in self._latest if k[0] not in live]:
                del self._latest[key]

    def snapshot(self) -> dict[tuple[str, int], tuple[ClientFigures, float]]:
        """(figures, seconds since the report) per (session, rank), stale ones dropped."""
        now = self._clock()
        with self._lock:
            for key in [k for k, (_, t) in self._latest.items() if now - t > self.stale_after_s]:
                del self._latest[key]
            return {k: (f, now - t) for k, (f, t) in self._latest.items()}


# -- the monitor ----------------------------------------------------------------------------


class MasterView(Protocol):
    """What the monitor reads of the master (:class:`~dpp_server.master.Master` fits)."""

    def list_workers(self) -> list[tuple[WorkerRecord, float]]: ...

    def session_ids(self) -> list[str]: ...

    def get_session(self, session_id: str) -> tuple[object, list[StreamView]]: ...

    def session_failures(self) -> dict[str, tuple[int, str]]: ...

    def session_expiry(self) -> tuple[float, int]: ...


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    worker_id: str
    address: str
    threads: int
    rows_per_s: float
    bytes_per_s: float
    stage_shares: Mapping[str, float]
    seconds_since_heartbeat: float
    cache_hits: int = 0
    cache_misses: int = 0


@dataclasses.dataclass(frozen=True)
class RankStatus:
    session_id: str
    rank: int
    rows_per_s: float
    stall_share: float
    seconds_since_report: float


@dataclasses.dataclass(frozen=True)
class SplitCounts:
    sessions: int = 0
    pending: int = 0
    leased: int = 0
    done: int = 0
    by_session: Mapping[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)
    # session id -> (splits failed, last error); every session of by_session has an entry.
    failures: Mapping[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    # The master's session_ttl_s (0: never) and the sessions expired since it started.
    session_ttl_s: float = 0.0
    sessions_expired: int = 0


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    """The monitor's latest window: what ``GetClusterStatus`` and ``dpp top`` show."""

    window_s: float
    workers: Sequence[WorkerStatus]
    ranks: Sequence[RankStatus]
    verdict: bottleneck.Verdict | None
    desired_workers: int
    operator_target: int
    splits: SplitCounts


def stage_seconds_by_stage(s: StageSeconds) -> dict[str, float]:
    """``read_s`` -> ``read`` etc.: the verdict's stage names."""
    return {f.name.removesuffix("_s"): float(getattr(s, f.name)) for f in dataclasses.fields(s)}


def split_counts(master: MasterView) -> SplitCounts:
    """Splits pending, leased and done over every begun (epoch, rank), per session."""
    by_session: dict[str, tuple[int, int, int]] = {}
    for session_id in master.session_ids():
        _, streams = master.get_session(session_id)
        by_session[session_id] = (
            sum(s.splits_pending for s in streams),
            sum(s.splits_leased for s in streams),
            sum(s.splits_done for s in streams),
        )
    failed = master.session_failures()
    ttl_s, expired = master.session_expiry()
    return SplitCounts(
        session_ttl_s=ttl_s,
        sessions_expired=expired,
        failures={s: failed.get(s, (0, "")) for s in by_session},
        sessions=len(by_session),
        pending=sum(v[0] for v in by_session.values()),
        leased=sum(v[1] for v in by_session.values()),
        done=sum(v[2] for v in by_session.values()),
        by_session=by_session,
    )


class ClusterMonitor:
    """Samples the master into windows, judges them and keeps the desired worker count.

    Shared between its sampling thread, RPC threads and scrapes: ``_lock`` guards the previous
    snapshots, the scaler, the operator target and ``_status``.
    """

    def __init__(
        self,
        master: MasterView,
        store: ClientStatsStore,
        scaler: Scaler | None = None,
        verdict_config: bottleneck.VerdictConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._master = master
        self.store = store
        self._scaler = scaler or Scaler()
        self._verdict_config = verdict_config
        self._clock = clock
        self._lock = threading.Lock()
        self._prev_time: float | None = None
        self._prev_workers: dict[str, tuple[StageSeconds, WorkerCounters]] = {}
        self._prev_ranks: dict[tuple[str, int], ClientFigures] = {}
        self._operator_target = 0
        self._status = ClusterStatus(0.0, (), (), None, self._scaler.desired, 0, SplitCounts())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def status(self) -> ClusterStatus:
        with self._lock:
            return self._status

    def set_operator_target(self, workers: int) -> None:
        """The operator's count for ``dpp up`` (0 clears it)."""
        with self._lock:
            self._operator_target = max(0, workers)
            self._status = dataclasses.replace(self._status, operator_target=workers)

    def sample(self) -> ClusterStatus:
        """Takes one window (from the previous sample to now) and returns its status. The
        first call only records a baseline."""
        workers = self._master.list_workers()
        splits = split_counts(self._master)
        self.store.retain(splits.by_session)
        ranks = self.store.snapshot()
        now = self._clock()
        with self._lock:
            status = self._window(now, workers, ranks, splits)
            self._status = status
            return status

    def _window(
        self,
        now: float,
        workers: list[tuple[WorkerRecord, float]],
        ranks: dict[tuple[str, int], tuple[ClientFigures, float]],
        splits: SplitCounts,
    ) -> ClusterStatus:
        span = now - self._prev_time if self._prev_time is not None else 0.0
        first = self._prev_time is None
        self._prev_time = now
        worker_windows: list[bottleneck.WorkerWindow] = []
        worker_status: list[WorkerStatus] = []
        prev_workers = self._prev_workers
        self._prev_workers = {w.worker_id: (w.stage_seconds, w.counters) for w, _ in workers}
        for record, since in workers:
            stages = stage_seconds_by_stage(record.stage_seconds)
            counters = record.counters
            prev = prev_workers.get(record.worker_id)
            if prev is not None:
                stages = {
                    k: max(0.0, v - stage_seconds_by_stage(prev[0])[k]) for k, v in stages.items()
                }
                rows = max(0, counters.rows_out - prev[1].rows_out)
                out_bytes = max(0, counters.bytes_out - prev[1].bytes_out)
            else:
                rows, out_bytes = counters.rows_out, counters.bytes_out
            total = sum(stages.values())
            worker_windows.append(
                bottleneck.WorkerWindow(
                    record.worker_id, record.pipeline_threads, stages, rows, out_bytes
                )
            )
            worker_status.append(
                WorkerStatus(
                    worker_id=record.worker_id,
                    address=record.address,
                    threads=record.pipeline_threads,
                    rows_per_s=rows / span if span > 0 else 0.0,
                    bytes_per_s=out_bytes / span if span > 0 else 0.0,
                    stage_shares={k: v / total if total > 0 else 0.0 for k, v in stages.items()},
                    seconds_since_heartbeat=since,
                    cache_hits=counters.cache_hits,
                    cache_misses=counters.cache_misses,
                )
            )
        rank_windows: list[bottleneck.RankWindow] = []
        rank_status: list[RankStatus] = []
        prev_ranks = self._prev_ranks
        self._prev_ranks = {k: f for k, (f, _) in ranks.items()}
        for (session_id, rank), (fig, since) in sorted(ranks.items()):
            before = prev_ranks.get((session_id, rank), ClientFigures())
            if fig.wall_s < before.wall_s:  # the loader restarted
                before = ClientFigures()
            window = bottleneck.RankWindow(
                session_id,
                rank,
                rows=fig.rows - before.rows,
                stall_s=fig.stall_s - before.stall_s,
                wall_s=fig.wall_s - before.wall_s,
                decode_s=fig.decode_s - before.decode_s,
            )
            if window.wall_s > 0:
                rank_windows.append(window)
            rank_status.append(
                RankStatus(
                    session_id,
                    rank,
                    rows_per_s=window.rows / span if span > 0 else 0.0,
                    stall_share=window.stall_share,
                    seconds_since_report=since,
                )
            )
        verdict: bottleneck.Verdict | None = None
        if not first and span > 0:
            verdict = bottleneck.analyze(
                bottleneck.ClusterWindow(span, worker_windows, rank_windows, splits.pending),
                self._verdict_config,
            )
            self._scaler.update(
                ScalerInput(
                    workers_alive=len(workers),
                    workers_needed=verdict.workers_needed,
                    stall_share=verdict.stall_share,
                    more_workers_help=verdict.more_workers_help,
                )
            )
        return ClusterStatus(
            window_s=span,
            workers=tuple(worker_status),
            ranks=tuple(rank_status),
            verdict=verdict,
            desired_workers=self._scaler.desired,
            operator_target=self._operator_target,
            splits=splits,
        )

    def start(self, interval_s: float = 5.0) -> None:
        """Samples every ``interval_s`` in a daemon thread until :meth:`stop`."""

        def loop() -> None:
            while True:
                try:
                    self.sample()
                except Exception:
                    logger.exception("sampling the cluster failed; will retry")
                if self._stop.wait(interval_s):
                    return

        self._thread = threading.Thread(target=loop, name="dpp-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
