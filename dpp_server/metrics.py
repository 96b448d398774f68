"""Prometheus metrics of the master and the workers, and ``/metrics`` serving.

Owns:

* :class:`WorkerMetrics`: the worker's stage histograms (fed by the pipeline's statistics hook),
  its cumulative counters, buffer occupancy and filter selectivity;
* :class:`MasterMetrics`: the master's collector (sessions, splits, workers, the ranks' figures,
  ``dpp_desired_workers``) and its assignment-latency histogram; it reads the figures that
  :mod:`dpp_server.monitor` computes (the ranks' store, the cluster monitor's window);
* :func:`serve_metrics`: ``/metrics`` over HTTP on 127.0.0.1 (or the host given).

Every metric lives in a registry passed in (tests use a fresh ``CollectorRegistry`` each).
Names follow ``dpp_<subsystem>_<what>_<unit>``; labels are bounded (stage, state, session, rank,
outcome, kind), never a split or a row id. Imports no grpc: ``monitor_service.py`` is the gRPC
face.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dpp_server import bottleneck
from dpp_server.monitor import (
    ClientStatsStore,
    ClusterMonitor,
    MasterView,
    split_counts,
)
from dpp_server.records import ClientFigures

if TYPE_CHECKING:  # refusals.py imports grpc; this module must not
    from dpp_server.refusals import Refusals

logger = logging.getLogger(__name__)

STAGE_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
ASSIGNMENT_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)

# The worker's counters: name in the pipeline's statistics -> (metric name, help).
WORKER_COUNTERS: Mapping[str, tuple[str, str]] = {
    "rows_scanned": (
        "dpp_worker_rows_scanned_total",
        "Rows in the row groups of finished splits, before the row filter.",
    ),
    "rows_read": ("dpp_worker_rows_read_total", "Rows read from storage after the row filter."),
    "bytes_read": ("dpp_worker_bytes_read_total", "Arrow bytes read from storage."),
    "rows_out": ("dpp_worker_rows_out_total", "Rows in batches sent towards ranks."),
    "batches_out": ("dpp_worker_batches_out_total", "Batches encoded as frames."),
    "bytes_out": ("dpp_worker_bytes_out_total", "Frame bytes encoded."),
    "splits_done": ("dpp_worker_splits_done_total", "Splits fully produced."),
    "cache_hits": ("dpp_worker_cache_hits_total", "Splits served from the worker's cache."),
    "cache_misses": (
        "dpp_worker_cache_misses_total",
        "Splits looked up in the worker's cache and produced from storage.",
    ),
    "cache_evictions": ("dpp_worker_cache_evictions_total", "Cache entries evicted (LRU)."),
    "cache_bytes_written": ("dpp_worker_cache_written_bytes_total", "Bytes written to the cache."),
    "cache_bytes_read": ("dpp_worker_cache_read_bytes_total", "Bytes served from the cache."),
    "share_hits": (
        "dpp_worker_share_hits_total",
        "Splits of share groups served from the worker's share window.",
    ),
    "share_misses": (
        "dpp_worker_share_misses_total",
        "Splits of share groups the share window did not hold (produced or read from cache).",
    ),
    "share_evictions": (
        "dpp_worker_share_evictions_total",
        "Share window entries evicted before every reader read them.",
    ),
    "share_bytes_read": (
        "dpp_worker_share_read_bytes_total",
        "Bytes served from the share window.",
    ),
}


# -- serving --------------------------------------------------------------------------------


class MetricsServer:
    """``/metrics`` of one registry over HTTP, in a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0):
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._httpd.server_address[1]
        self.address = f"{host}:{self.port}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve_metrics(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
) -> MetricsServer:
    """Serves ``registry`` at ``http://host:port/metrics`` (port 0: any free port)."""
    server = MetricsServer(registry, host, port)
    logger.info("metrics at http://%s/metrics", server.address)
    return server


def add_process_metrics(registry: CollectorRegistry) -> None:
    """``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ... of this process."""
    ProcessCollector(registry=registry)


# -- workers --------------------------------------------------------------------------------


class BufferView(Protocol):
    """What the worker metrics read of a worker at scrape time."""

    def buffer_fill(self) -> tuple[int, float]:
        """Bytes buffered over all (session, rank) buffers, and the fullest buffer's fill."""
        ...


class WorkerMetrics(Collector):
    """A worker's metrics. :meth:`observe` is the pipeline's statistics hook: it receives every
    stage's seconds (names ending in ``_s``) and every count.

    Shared across pipeline threads: histogram children are thread-safe; ``_lock`` guards
    ``_counts``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, float] = dict.fromkeys(WORKER_COUNTERS, 0.0)
        self._stage_hist = Histogram(
            "dpp_worker_stage_seconds",
            "Seconds per call of a pipeline stage, summed over pipeline threads "
            "(decode and the row filter run inside read; wait_consumer: a full buffer; "
            "idle: no split to lease).",
            ["stage"],
            registry=registry,
            buckets=STAGE_BUCKETS_S,
        )
        self._children = {
            f"{stage}_s": self._stage_hist.labels(stage) for stage in bottleneck.STAGES
        }
        self._worker: BufferView | None = None
        registry.register(self)

    def bind(self, worker: BufferView) -> None:
        """The worker whose buffers the scrape reads."""
        self._worker = worker

    def observe(self, name: str, value: float) -> None:
        child = self._children.get(name)
        if child is not None:
            child.observe(value)
            return
        if name in WORKER_COUNTERS:
            with self._lock:
                self._counts[name] += value

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = dict(self._counts)
        for key, (name, help_text) in WORKER_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=counts[key])
        scanned = counts["rows_scanned"]
        yield GaugeMetricFamily(
            "dpp_worker_filter_selectivity_ratio",
            "Rows kept by the row filter over rows scanned, since the worker started.",
            value=min(1.0, counts["rows_read"] / scanned) if scanned else 1.0,
        )
        buffered, fill = self._worker.buffer_fill() if self._worker is not None else (0, 0.0)
        yield GaugeMetricFamily(
            "dpp_worker_buffered_bytes", "Frame bytes waiting for ranks.", value=buffered
        )
        yield GaugeMetricFamily(
            "dpp_worker_buffer_occupancy_ratio",
            "Fill of the fullest (session, rank) frame buffer (1: producers wait).",
            value=fill,
        )


# -- the master's metrics ---------------------------------------------------------------------


class MasterMetrics(Collector):
    """The master's metrics: read from the master, the store and the monitor at scrape time,
    plus the assignment histogram and the split-failure counter that the RPC layer feeds.

    Thread-safe: it only reads thread-safe objects; prometheus children are thread-safe.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        master: MasterView,
        store: ClientStatsStore,
        monitor: ClusterMonitor,
        refusals: Refusals | None = None,
    ) -> None:
        self._master = master
        self._store = store
        self._monitor = monitor
        self._refusals = refusals
        self.assignment_seconds = Histogram(
            "dpp_master_assignment_seconds",
            "Seconds the master took to answer AcquireSplit, by outcome (lease or empty).",
            ["outcome"],
            registry=registry,
            buckets=ASSIGNMENT_BUCKETS_S,
        )
        self._split_failures = 0
        self._lock = threading.Lock()
        registry.register(self)

    def split_failed(self) -> None:
        with self._lock:
            self._split_failures += 1

    def collect(self) -> Iterator[Metric]:
        splits = split_counts(self._master)
        yield GaugeMetricFamily(
            "dpp_master_sessions", "Sessions the master holds.", splits.sessions
        )
        yield GaugeMetricFamily(
            "dpp_master_session_ttl_seconds",
            "A session no rank called for this long expires (session_ttl_s; 0: never).",
            splits.session_ttl_s,
        )
        yield CounterMetricFamily(
            "dpp_master_sessions_expired_total",
            "Sessions expired (session_ttl_s) since the master started.",
            value=splits.sessions_expired,
        )
        refused = CounterMetricFamily(
            "dpp_master_requests_refused_total",
            "MasterService calls answered with an error, by RPC and kind (the error's reason, "
            "or undecodable); the first of each is logged, the rest only counted.",
            labels=["rpc", "kind"],
        )
        if self._refusals is not None:
            for (rpc, kind), count in sorted(self._refusals.counts().items()):
                refused.add_metric([rpc, kind], count)
        yield refused
        by_state = GaugeMetricFamily(
            "dpp_master_splits",
            "Splits of every begun epoch and rank, by session and state.",
            labels=["session", "state"],
        )
        for session_id, (pending, leased, done) in sorted(splits.by_session.items()):
            by_state.add_metric([session_id, "pending"], pending)
            by_state.add_metric([session_id, "leased"], leased)
            by_state.add_metric([session_id, "done"], done)
        yield by_state
        with self._lock:
            failures = self._split_failures
        yield CounterMetricFamily(
            "dpp_master_split_failures_total",
            "Splits that failed on a worker (an error frame went to the rank).",
            value=failures,
        )
        yield GaugeMetricFamily(
            "dpp_master_workers_alive", "Workers heartbeating.", len(self._master.list_workers())
        )
        status = self._monitor.status()
        yield GaugeMetricFamily(
            "dpp_desired_workers",
            "Workers the autoscaler wants (demand / per-worker throughput, stall feedback, "
            "hysteresis); drives dpp up --autoscale and the Kubernetes HPA.",
            status.desired_workers,
        )
        yield GaugeMetricFamily(
            "dpp_master_operator_target_workers",
            "Workers the operator asked for with dpp scale (0: none).",
            status.operator_target,
        )
        info = GaugeMetricFamily(
            "dpp_master_verdict_info", "The bottleneck verdict's kind (value 1).", labels=["kind"]
        )
        if status.verdict is not None:
            info.add_metric([str(status.verdict.kind)], 1)
        yield info
        self._store.retain(splits.by_session)  # ranks of expired sessions are no labels
        yield from self._rank_metrics()

    def _rank_metrics(self) -> Iterator[Metric]:
        fields: list[tuple[str, str, Callable[[ClientFigures], float]]] = [
            (
                "dpp_rank_stall_seconds_total",
                "Seconds the trainer waited in next().",
                lambda f: f.stall_s,
            ),
            (
                "dpp_rank_wall_seconds_total",
                "Seconds since the trainer's first next().",
                lambda f: f.wall_s,
            ),
            ("dpp_rank_batches_total", "Batches handed to the trainer.", lambda f: f.batches),
            ("dpp_rank_rows_total", "Rows handed to the trainer.", lambda f: f.rows),
            (
                "dpp_rank_bytes_received_total",
                "Frame bytes the rank received.",
                lambda f: f.bytes_received,
            ),
            (
                "dpp_rank_decode_seconds_total",
                "Seconds the rank spent decoding frames.",
                lambda f: f.decode_s,
            ),
        ]
        snapshot = sorted(self._store.snapshot().items())
        for name, help_text, get in fields:
            family = CounterMetricFamily(
                name, help_text + " Reported by the rank's loader.", labels=["session", "rank"]
            )
            for (session_id, rank), (figures, _) in snapshot:
                family.add_metric([session_id, str(rank)], get(figures))
            yield family
        share = GaugeMetricFamily(
            "dpp_rank_stall_ratio",
            "Share of the last window the trainer waited in next().",
            labels=["session", "rank"],
        )
        for r in self._monitor.status().ranks:
            if not math.isnan(r.stall_share):
                share.add_metric([r.session_id, str(r.rank)], r.stall_share)
        yield share


# -- wiring for the entry points --------------------------------------------------------------


class WorkerObservability:
    """A worker process's metrics: the registry, :class:`WorkerMetrics`, process metrics and
    ``/metrics`` (``port`` -1: none of it, and no hook in the pipeline)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.enabled = port >= 0
        self.metrics = WorkerMetrics(self.registry) if self.enabled else None
        self.server: MetricsServer | None = None
        if self.enabled:
            add_process_metrics(self.registry)
            self.server = serve_metrics(self.registry, host, port)

    @property
    def observe(self) -> Callable[[str, float], None] | None:
        """The pipeline's statistics hook (None when metrics are off)."""
        return self.metrics.observe if self.metrics is not None else None

    def bind(self, worker: BufferView) -> None:
        if self.metrics is not None:
            self.metrics.bind(worker)

    def ready_extra(self) -> dict[str, str]:
        """What the ready file announces besides the address."""
        return {"metrics_address": self.server.address} if self.server is not None else {}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
