"""The master's and the workers' metrics, the ranks' store and the monitor: fresh registry
per test, fake master, fake clock (no sockets, no sleeps)."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dpp_client.loader import LoaderStats
from dpp_client.metrics import LoaderCollector, client_stats_to_proto
from dpp_server.bottleneck import Kind
from dpp_server.master import StreamView, WorkerRecord
from dpp_server.metrics import MasterMetrics, WorkerMetrics
from dpp_server.monitor import ClientStatsStore, ClusterMonitor
from dpp_server.monitor_service import status_to_proto
from dpp_server.records import ClientFigures, StageSeconds, WorkerCounters, figures_from_proto
from dpp_server.refusals import Refusals
from dpp_server.scaling import Scaler, ScalerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeMaster:
    def __init__(self) -> None:
        self.workers: list[WorkerRecord] = []
        self.streams: dict[str, list[StreamView]] = {}

    def list_workers(self) -> list[tuple[WorkerRecord, float]]:
        return [(dataclasses.replace(w), 0.1) for w in self.workers]

    def session_ids(self) -> list[str]:
        return list(self.streams)

    def get_session(self, session_id: str) -> tuple[object, list[StreamView]]:
        return None, self.streams[session_id]

    def session_failures(self) -> dict[str, tuple[int, str]]:
        return {}

    def session_expiry(self) -> tuple[float, int]:
        return 3600.0, 2


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_worker_metrics_observe_stages_and_counts() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)

    class Buffers:
        def buffer_fill(self) -> tuple[int, float]:
            return 1234, 0.75

    metrics.bind(Buffers())
    metrics.observe("transform_s", 0.25)
    metrics.observe("transform_s", 0.5)
    metrics.observe("read_s", 0.125)
    metrics.observe("rows_read", 800)
    metrics.observe("rows_scanned", 1000)
    metrics.observe("rows_out", 800)
    metrics.observe("no_such_count", 5)
    assert value(registry, "dpp_worker_stage_seconds_sum", stage="transform") == 0.75
    assert value(registry, "dpp_worker_stage_seconds_count", stage="transform") == 2
    assert value(registry, "dpp_worker_stage_seconds_sum", stage="read") == 0.125
    assert value(registry, "dpp_worker_rows_out_total") == 800
    assert value(registry, "dpp_worker_bytes_out_total") == 0
    assert value(registry, "dpp_worker_filter_selectivity_ratio") == 0.8
    assert value(registry, "dpp_worker_buffered_bytes") == 1234
    assert value(registry, "dpp_worker_buffer_occupancy_ratio") == 0.75


def test_store_forgets_silent_ranks() -> None:
    clock = Clock()
    store = ClientStatsStore(stale_after_s=60, clock=clock)
    store.record("s-1", 0, ClientFigures(rows=10))
    clock.now += 30
    store.record("s-1", 1, ClientFigures(rows=20))
    clock.now += 40
    assert list(store.snapshot()) == [("s-1", 1)]


def _setup() -> tuple[FakeMaster, ClientStatsStore, ClusterMonitor, Clock, CollectorRegistry]:
    clock = Clock()
    master = FakeMaster()
    store = ClientStatsStore(clock=clock)
    monitor = ClusterMonitor(
        master, store, Scaler(ScalerConfig(up_after=1, max_workers=10), 1), clock=clock
    )
    registry = CollectorRegistry()
    MasterMetrics(registry, master, store, monitor, REFUSALS)
    return master, store, monitor, clock, registry


REFUSALS = Refusals()
REFUSALS.note("AckBatches", "SESSION_NOT_FOUND", "session 's-x' does not exist")


def test_monitor_windows_verdict_and_desired_workers() -> None:
    master, store, monitor, clock, registry = _setup()
    worker = WorkerRecord("w-1", "127.0.0.1:1", 2, last_heartbeat=0.0)
    master.workers = [worker]
    master.streams = {"s-1": [StreamView(0, 0, 10, 4, 2, 4)]}
    store.record("s-1", 0, ClientFigures(rows=0, wall_s=1.0))
    first = monitor.sample()
    assert first.verdict is None  # a baseline only

    # Ten seconds later: the module docstring's example of dpp_server/bottleneck.py.
    clock.now += 10
    worker.stage_seconds = StageSeconds(
        read_s=4, transform_s=12, batch_s=1, serialize_s=1, wait_consumer_s=1, idle_s=1
    )
    worker.counters = WorkerCounters(rows_out=60_000, bytes_out=6_000_000)
    store.record("s-1", 0, ClientFigures(rows=60_000, stall_s=4.0, wall_s=11.0, batches=60))
    status = monitor.sample()
    assert status.verdict is not None
    assert status.verdict.kind == Kind.WORKER_CPU_BOUND
    assert status.workers[0].rows_per_s == pytest.approx(6_000)
    assert status.ranks[0].stall_share == pytest.approx(0.4)
    assert status.desired_workers == 2

    assert value(registry, "dpp_desired_workers") == 2
    assert value(registry, "dpp_master_workers_alive") == 1
    assert value(registry, "dpp_master_sessions") == 1
    assert value(registry, "dpp_master_splits", session="s-1", state="pending") == 4
    assert value(registry, "dpp_master_splits", session="s-1", state="done") == 4
    assert value(registry, "dpp_rank_rows_total", session="s-1", rank="0") == 60_000
    assert value(registry, "dpp_rank_stall_seconds_total", session="s-1", rank="0") == 4.0
    assert value(registry, "dpp_rank_stall_ratio", session="s-1", rank="0") == pytest.approx(0.4)
    assert value(registry, "dpp_master_verdict_info", kind="worker-cpu-bound") == 1

    proto = status_to_proto(status)
    assert proto.verdict_kind == "worker-cpu-bound"
    assert proto.desired_workers == 2
    assert proto.workers[0].stage_shares["transform"] == pytest.approx(0.6)
    assert proto.splits_pending == 4


def test_operator_target_is_exported() -> None:
    _, _, monitor, _, registry = _setup()
    monitor.set_operator_target(5)
    assert value(registry, "dpp_master_operator_target_workers") == 5
    assert monitor.status().operator_target == 5


def test_metric_names_follow_conventions() -> None:
    """Counters end in _total, seconds histograms in _seconds, no id-like labels."""
    master, store, _, _, registry = _setup()
    WorkerMetrics(registry)
    master.workers = [WorkerRecord("w-1", "a", 1, 0.0)]
    master.streams = {"s-1": []}
    store.record("s-1", 0, ClientFigures())
    for family in registry.collect():
        assert family.name.startswith("dpp_"), family.name
        if family.type == "counter":
            assert any(s.name.endswith("_total") for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            assert not {"split", "split_id", "row", "row_id", "worker_id"} & set(sample.labels)
    assert b"dpp_master_assignment_seconds" in generate_latest(registry)


def test_client_stats_round_trip_and_loader_collector() -> None:
    stats = LoaderStats(
        batches=3, rows=300, bytes_received=9_000, stall_s=0.5, decode_s=0.25, wall_s=10.0
    )
    figures = figures_from_proto(client_stats_to_proto(stats))
    assert figures == ClientFigures(3, 300, 9_000, 0.5, 0.25, 10.0)
    registry = CollectorRegistry()
    LoaderCollector(lambda: stats, registry, rank=2)
    assert value(registry, "dpp_client_rows_total", rank="2") == 300
    assert value(registry, "dpp_client_stall_seconds_total", rank="2") == 0.5


def test_rank_series_are_bounded_and_follow_live_sessions() -> None:
    """Issue 12: at most max_series (session, rank) pairs, the most recently reported, and
    none of a session the master no longer holds (expired)."""
    master, _, monitor, clock, _ = _setup()
    store = ClientStatsStore(clock=clock, max_series=3)
    metrics_registry = CollectorRegistry()
    MasterMetrics(metrics_registry, master, store, monitor, Refusals())
    master.streams = {"s-1": [], "s-2": []}
    for rank in range(4):
        store.record("s-1", rank, ClientFigures(rows=rank))
    store.record("s-1", 1, ClientFigures(rows=10))  # a report moves a rank to the newest
    store.record("s-2", 0, ClientFigures(rows=20))
    assert sorted(store.snapshot()) == [("s-1", 1), ("s-1", 3), ("s-2", 0)]
    del master.streams["s-2"]  # expired
    assert value(metrics_registry, "dpp_rank_rows_total", session="s-2", rank="0") is None
    assert value(metrics_registry, "dpp_rank_rows_total", session="s-1", rank="1") == 10
    assert sorted(store.snapshot()) == [("s-1", 1), ("s-1", 3)]


def test_refusals_are_counted_by_rpc_and_kind() -> None:
    refusals = Refusals()
    _, store, monitor, _, _ = _setup()
    registry = CollectorRegistry()
    MasterMetrics(registry, FakeMaster(), store, monitor, refusals)
    for _ in range(3):
        refusals.note("AckBatches", "undecodable", "not a message")
    refusals.note("BeginEpoch", "OUT_OF_RANGE", "rank 9")
    assert (
        value(registry, "dpp_master_requests_refused_total", rpc="AckBatches", kind="undecodable")
        == 3
    )
    assert (
        value(registry, "dpp_master_requests_refused_total", rpc="BeginEpoch", kind="OUT_OF_RANGE")
        == 1
    )
    assert value(registry, "dpp_master_session_ttl_seconds") == 3600
    assert value(registry, "dpp_master_sessions_expired_total") == 2
