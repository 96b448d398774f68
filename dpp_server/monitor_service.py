"""The gRPC face of observability on the master: ``MonitorService`` and a server interceptor.

Owns translation only:

* :class:`MonitorServicer` answers ``GetClusterStatus`` from the
  :class:`~dpp_server.monitor.ClusterMonitor` and takes ``SetWorkerTarget`` (``dpp scale N``);
* :class:`MetricsInterceptor` watches MasterService calls without touching their handlers:
  it times ``AcquireSplit`` (``dpp_master_assignment_seconds``), counts ``ReportSplitProgress``
  calls that carry an error, and stores the ``client_stats`` of every ``AckBatches`` request
  the master answered (so only live sessions' ranks become labels);
* the :class:`~dpp_server.refusals.RefusalInterceptor` (outermost) counts refused calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from dpp_proto import master_pb2, master_pb2_grpc
from dpp_server.metrics import MasterMetrics, MetricsServer, add_process_metrics, serve_metrics
from dpp_server.monitor import (
    ClientStatsStore,
    ClusterMonitor,
    ClusterStatus,
    MasterView,
)
from dpp_server.records import figures_from_proto
from dpp_server.refusals import RefusalInterceptor, Refusals
from dpp_server.scaling import Scaler, ScalerConfig

_METHOD_PREFIX = "/dpp.v1.MasterService/"


def status_to_proto(status: ClusterStatus) -> master_pb2.GetClusterStatusResponse:
    response = master_pb2.GetClusterStatusResponse(
        window_s=status.window_s,
        desired_workers=status.desired_workers,
        operator_target=status.operator_target,
        sessions=status.splits.sessions,
        splits_pending=status.splits.pending,
        splits_leased=status.splits.leased,
        splits_done=status.splits.done,
        session_ttl_s=status.splits.session_ttl_s,
        sessions_expired=status.splits.sessions_expired,
    )
    for session_id, (failed, last_error) in status.splits.failures.items():
        response.session_failures.add(
            session_id=session_id, splits_failed=failed, last_error=last_error
        )
    for w in status.workers:
        response.workers.add(
            worker_id=w.worker_id,
            address=w.address,
            pipeline_threads=w.threads,
            rows_per_s=w.rows_per_s,
            bytes_per_s=w.bytes_per_s,
            stage_shares=dict(w.stage_shares),
            seconds_since_heartbeat=w.seconds_since_heartbeat,
            cache_hits=w.cache_hits,
            cache_misses=w.cache_misses,
        )
    for r in status.ranks:
        response.ranks.add(
            session_id=r.session_id,
            rank=r.rank,
            rows_per_s=r.rows_per_s,
            stall_share=r.stall_share,
            seconds_since_report=r.seconds_since_report,
        )
    if status.verdict is not None:
        response.rows_per_s = status.verdict.rows_per_s
        response.bytes_per_s = status.verdict.bytes_per_s
        response.stage_shares.update(status.verdict.stage_shares)
        response.verdict_kind = str(status.verdict.kind)
        response.verdict = status.verdict.text
    return response


class MonitorServicer(master_pb2_grpc.MonitorServiceServicer):
    """Thread-safe because :class:`ClusterMonitor` is."""

    def __init__(self, monitor: ClusterMonitor) -> None:
        self.monitor = monitor

    def GetClusterStatus(
        self, request: master_pb2.GetClusterStatusRequest, context: grpc.ServicerContext
    ) -> master_pb2.GetClusterStatusResponse:
        return status_to_proto(self.monitor.status())

    def SetWorkerTarget(
        self, request: master_pb2.SetWorkerTargetRequest, context: grpc.ServicerContext
    ) -> master_pb2.SetWorkerTargetResponse:
        self.monitor.set_operator_target(request.workers)
        return master_pb2.SetWorkerTargetResponse()


def add_monitor_service(monitor: ClusterMonitor) -> Callable[[grpc.Server], None]:
    """A hook for ``MasterServer(add_services=...)`` that registers :class:`MonitorServicer`."""

    def add(server: grpc.Server) -> None:
        master_pb2_grpc.add_MonitorServiceServicer_to_server(MonitorServicer(monitor), server)

    return add


class MetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Feeds the master's metrics from MasterService calls. Thread-safe: it only calls
    thread-safe objects."""

    def __init__(
        self,
        store: ClientStatsStore,
        observe_assignment: Callable[[str, float], None],
        split_failed: Callable[[], None],
    ) -> None:
        self._store = store
        self._observe_assignment = observe_assignment
        self._split_failed = split_failed

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(_METHOD_PREFIX):
            return handler
        name = method.removeprefix(_METHOD_PREFIX)
        inner = handler.unary_unary
        if name == "AcquireSplit":

            def timed(request: Any, context: grpc.ServicerContext) -> Any:
                started = time.perf_counter()
                response = inner(request, context)
                outcome = "lease" if response.HasField("lease") else "empty"
                self._observe_assignment(outcome, time.perf_counter() - started)
                return response

            wrapped = timed
        elif name == "ReportSplitProgress":

            def counted(request: Any, context: grpc.ServicerContext) -> Any:
                if request.error:
                    self._split_failed()
                return inner(request, context)

            wrapped = counted
        elif name == "AckBatches":

            def recorded(request: Any, context: grpc.ServicerContext) -> Any:
                # After the handler, and only if it answered: a session or rank the master
                # refused (unknown, expired, an epoch not begun) never becomes a label.
                response = inner(request, context)
                if request.HasField("client_stats"):
                    self._store.record(
                        request.session_id, request.rank, figures_from_proto(request.client_stats)
                    )
                return response

            wrapped = recorded
        else:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class MasterObservability:
    """A master process's observability: the ranks' figures, the monitor and its scaler, the
    metrics registry and ``/metrics`` (``metrics_port`` -1: no HTTP server; the monitor and
    ``MonitorService`` still run), the interceptor and the MonitorService hook."""

    def __init__(
        self,
        master: MasterView,
        host: str = "127.0.0.1",
        metrics_port: int = 0,
        scaler_config: ScalerConfig | None = None,
        initial_workers: int = 1,
        monitor_interval_s: float = 5.0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.store = ClientStatsStore()
        self.refusals = Refusals()
        self.monitor = ClusterMonitor(master, self.store, Scaler(scaler_config, initial_workers))
        self.metrics = MasterMetrics(self.registry, master, self.store, self.monitor, self.refusals)
        self.monitor_interval_s = monitor_interval_s
        histogram = self.metrics.assignment_seconds
        self.interceptors: tuple[grpc.ServerInterceptor[Any, Any], ...] = (
            RefusalInterceptor(self.refusals),
            MetricsInterceptor(
                self.store,
                lambda outcome, s: histogram.labels(outcome).observe(s),
                self.metrics.split_failed,
            ),
        )
        self.add_services = (add_monitor_service(self.monitor),)
        self.server: MetricsServer | None = None
        if metrics_port >= 0:
            add_process_metrics(self.registry)
            self.server = serve_metrics(self.registry, host, metrics_port)

    def start(self) -> None:
        self.monitor.start(self.monitor_interval_s)

    def ready_extra(self) -> dict[str, str]:
        return {"metrics_address": self.server.address} if self.server is not None else {}

    def stop(self) -> None:
        self.monitor.stop()
        if self.server is not None:
            self.server.stop()
