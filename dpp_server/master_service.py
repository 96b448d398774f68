"""The master's gRPC face: decodes requests, calls :class:`~dpp_server.master.Master`, encodes.

Owns nothing but translation and the server's lifecycle (health service, reaper thread,
graceful stop). Every exception is turned into a gRPC status, with its reason and field as
trailing metadata (:mod:`dpp_proto.reasons`), by :func:`dpp_server.errors.grpc_error_of`, in
one place (:func:`_rpc`). Who may call what is decided before any handler runs, by the one
:class:`~dpp_server.auth.AuthInterceptor` of the server (:mod:`dpp_server.auth`); the handlers
only take the caller's tenant from it, check a new spec against the data-access policy
(:mod:`dpp_server.policy`) and redact storage options for callers that are not workers
(:mod:`dpp_server.secret_store`).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dpp_proto import limits, master_pb2, master_pb2_grpc
from dpp_server import master as master_lib
from dpp_server import state
from dpp_server.auth import (
    AuthInterceptor,
    Role,
    SecuritySettings,
    bind,
    current_identity,
    guard_of,
    warn_insecure,
)
from dpp_server.errors import UnavailableError, grpc_error_of
from dpp_server.policy import DataPolicy, PolicySettings
from dpp_server.records import (
    StageSeconds,
    WorkerCounters,
    counters_to_proto,
    from_proto,
    split_to_proto,
    stage_seconds_to_proto,
    to_proto,
)
from dpp_server.secret_store import redact_spec
from dpp_server.spec import spec_from_proto

logger = logging.getLogger(__name__)

SERVICE_NAME = "dpp.v1.MasterService"
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", limits.MAX_MESSAGE_BYTES),
]

# (method, exception type) of the INTERNAL errors already logged with a traceback.
_TRACED: set[tuple[str, str]] = set()
_TRACED_LOCK = threading.Lock()

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def _rpc(
    method: Callable[[Any, _Req, grpc.ServicerContext], _Resp],
) -> Callable[[Any, _Req, grpc.ServicerContext], _Resp]:
    """Maps exceptions raised by a servicer method to gRPC statuses, with the error's reason
    and field as trailing metadata."""

    @functools.wraps(method)
    def wrapper(self: Any, request: _Req, context: grpc.ServicerContext) -> _Resp:
        try:
            return method(self, request, context)
        except Exception as exc:
            error = grpc_error_of(exc)
            if error.code == grpc.StatusCode.INTERNAL:
                # A traceback once per method and exception type: a client that keeps sending
                # what trips a bug must not flood the log (refusals are counted by kind, see
                # dpp_server/refusals.py).
                key = (method.__name__, type(exc).__name__)
                with _TRACED_LOCK:
                    first = key not in _TRACED
                    _TRACED.add(key)
                if first:
                    logger.exception("%s failed (logged once per exception type)", method.__name__)
                else:
                    logger.debug("%s failed again: %s: %s", method.__name__, key[1], exc)
            context.set_trailing_metadata(error.trailing_metadata())
            context.abort(error.code, error.message)

    return wrapper


def _plan_to_proto(plan: state.PlanSummary) -> master_pb2.SessionPlan:
    return to_proto(master_pb2.SessionPlan, plan)


class MasterServicer(master_pb2_grpc.MasterServiceServicer):
    """Thin translation layer; thread-safe because :class:`Master` and the policy are.

    Args:
        policy: the data-access policy new specs must pass; None: any (an --insecure lab).
    """

    def __init__(self, master: master_lib.Master, policy: DataPolicy | None = None) -> None:
        self.master = master
        self.policy = policy

    @_rpc
    def CreateSession(
        self, request: master_pb2.CreateSessionRequest, context: grpc.ServicerContext
    ) -> master_pb2.CreateSessionResponse:
        tenant = current_identity().tenant
        if self.policy is not None:  # before any I/O: a refusal reveals nothing of the files
            self.policy.check_spec(spec_from_proto(request.spec), tenant)
        if request.validate_only:
            self.master.validate_spec(request.spec, request.session_name, tenant)
            return master_pb2.CreateSessionResponse()
        view, joined = self.master.create_session(request.spec, request.session_name, tenant)
        return master_pb2.CreateSessionResponse(
            session_id=view.session_id, joined=joined, plan=_plan_to_proto(view.plan)
        )

    @_rpc
    def GetSession(
        self, request: master_pb2.GetSessionRequest, context: grpc.ServicerContext
    ) -> master_pb2.GetSessionResponse:
        view, streams = self.master.get_session(request.session_id)
        response = master_pb2.GetSessionResponse(
            session_id=view.session_id, plan=_plan_to_proto(view.plan), tenant=view.tenant
        )
        response.spec.ParseFromString(view.spec_bytes)
        if Role.WORKER not in current_identity().roles:  # workers need them to read the table
            redact_spec(response.spec)
        for s in streams:
            response.progress.add(
                epoch=s.epoch,
                rank=s.rank,
                splits_total=s.splits_total,
                splits_pending=s.splits_pending,
                splits_leased=s.splits_leased,
                splits_done=s.splits_done,
            )
        return response

    @_rpc
    def BeginEpoch(
        self, request: master_pb2.BeginEpochRequest, context: grpc.ServicerContext
    ) -> master_pb2.BeginEpochResponse:
        restore = (
            [(a.split_id, a.batches_consumed, a.done) for a in request.consumed]
            if request.restore
            else None
        )
        split_ids, epochs = self.master.begin_epoch(
            request.session_id, request.rank, request.epoch, restore
        )
        return master_pb2.BeginEpochResponse(split_ids=split_ids, epochs=epochs)

    @_rpc
    def RegisterWorker(
        self, request: master_pb2.RegisterWorkerRequest, context: grpc.ServicerContext
    ) -> master_pb2.RegisterWorkerResponse:
        worker_id = self.master.register_worker(
            request.address, request.pipeline_threads, request.data_address
        )
        return master_pb2.RegisterWorkerResponse(
            worker_id=worker_id,
            heartbeat_interval_s=self.master.config.heartbeat_interval_s,
            lease_timeout_s=self.master.config.lease_timeout_s,
        )

    @_rpc
    def Heartbeat(
        self, request: master_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> master_pb2.HeartbeatResponse:
        known = self.master.heartbeat(
            request.worker_id,
            from_proto(StageSeconds, request.stage_seconds),
            from_proto(WorkerCounters, request.counters),
            None
            if request.cached_unchanged
            else {c.output_digest: list(c.split_ids) for c in request.cached},
        )
        return master_pb2.HeartbeatResponse(reregister=not known)

    @_rpc
    def AcquireSplit(
        self, request: master_pb2.AcquireSplitRequest, context: grpc.ServicerContext
    ) -> master_pb2.AcquireSplitResponse:
        grant = self.master.acquire_split(
            request.worker_id, [(k.session_id, k.rank) for k in request.skip]
        )
        if grant is None:
            return master_pb2.AcquireSplitResponse(
                retry_after_ms=self.master.config.acquire_retry_ms
            )
        return master_pb2.AcquireSplitResponse(
            lease=master_pb2.SplitLease(
                session_id=grant.session_id,
                epoch=grant.epoch,
                rank=grant.rank,
                split=split_to_proto(grant.split),
                start_batch=grant.start_batch,
                share_readers=grant.share_readers,
            )
        )

    @_rpc
    def ReportSplitProgress(
        self, request: master_pb2.ReportSplitProgressRequest, context: grpc.ServicerContext
    ) -> master_pb2.ReportSplitProgressResponse:
        valid = self.master.report_split_progress(
            request.worker_id,
            request.session_id,
            request.epoch,
            request.rank,
            request.split_id,
            request.done,
            request.error,
        )
        return master_pb2.ReportSplitProgressResponse(lease_valid=valid)

    @_rpc
    def AckBatches(
        self, request: master_pb2.AckBatchesRequest, context: grpc.ServicerContext
    ) -> master_pb2.AckBatchesResponse:
        limit, final = self.master.ack_batches(
            request.session_id,
            request.rank,
            request.epoch,
            [(a.split_id, a.batches_consumed, a.done) for a in request.acks],
            request.batches_received,
            request.received_all,
            list(request.reproduce),
        )
        return master_pb2.AckBatchesResponse(batch_limit=limit, limit_final=final)

    @_rpc
    def UnregisterWorker(
        self, request: master_pb2.UnregisterWorkerRequest, context: grpc.ServicerContext
    ) -> master_pb2.UnregisterWorkerResponse:
        self.master.unregister_worker(request.worker_id)
        return master_pb2.UnregisterWorkerResponse()

    @_rpc
    def ReportSplitStats(
        self, request: master_pb2.ReportSplitStatsRequest, context: grpc.ServicerContext
    ) -> master_pb2.ReportSplitStatsResponse:
        accepted = self.master.report_split_stats(
            request.worker_id,
            request.session_id,
            request.epoch,
            request.rank,
            request.split_id,
            request.payload,
        )
        return master_pb2.ReportSplitStatsResponse(accepted=accepted)

    @_rpc
    def GetStatsReport(
        self, request: master_pb2.GetStatsReportRequest, context: grpc.ServicerContext
    ) -> master_pb2.GetStatsReportResponse:
        result = self.master.stats_report(
            request.session_id, request.top_k or 20, request.boundary_buckets
        )
        response = master_pb2.GetStatsReportResponse(
            splits_total=result.splits_total,
            splits_done=result.splits_done,
            complete=result.complete,
            errors=result.errors,
            report_json="" if result.report is None else json.dumps(result.report),
        )
        for name, values in result.boundaries.items():
            response.boundaries.add(feature=name, boundaries=values)
        return response

    @_rpc
    def ListWorkers(
        self, request: master_pb2.ListWorkersRequest, context: grpc.ServicerContext
    ) -> master_pb2.ListWorkersResponse:
        response = master_pb2.ListWorkersResponse()
        for record, since in self.master.list_workers():
            response.workers.add(
                worker_id=record.worker_id,
                address=record.address,
                seconds_since_heartbeat=since,
                stage_seconds=stage_seconds_to_proto(record.stage_seconds),
                counters=counters_to_proto(record.counters),
                pipeline_threads=record.pipeline_threads,
                data_address=record.data_address,
            )
        return response


class MasterServer:
    """A running master: gRPC server, health service and the reaper thread that drops silent
    workers even when no RPC arrives.

    Args:
        security: TLS and tokens (default: --insecure, for in-process tests and benchmarks;
            the ``dpp master`` command is secured unless told otherwise).
        policy: the data-access policy (default: none with --insecure, else nothing allowed).
    """

    def __init__(
        self,
        master: master_lib.Master,
        host: str = "127.0.0.1",
        port: int = 0,
        interceptors: tuple[grpc.ServerInterceptor[Any, Any], ...] = (),
        add_services: tuple[Callable[[grpc.Server], None], ...] = (),
        security: SecuritySettings | None = None,
        policy: DataPolicy | None = None,
    ) -> None:
        self.master = master
        self.security = security or SecuritySettings(insecure=True)
        self.guard = guard_of(self.security, master.session_tenant)
        if policy is None and not self.security.insecure:
            policy = DataPolicy(PolicySettings())
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="dpp-master-rpc"),
            options=GRPC_OPTIONS,
            # Auth first: the metrics interceptor (monitor_service.py) sees only admitted calls.
            interceptors=[AuthInterceptor(self.guard), *interceptors],
        )
        master_pb2_grpc.add_MasterServiceServicer_to_server(
            MasterServicer(master, policy), self._server
        )
        for add_service in add_services:  # e.g. MonitorService
            add_service(self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.port = bind(self._server, f"{host}:{port}", self.security)
        if self.port == 0:
            raise OSError(f"could not bind the master to {host}:{port}")
        self.address = f"{host}:{self.port}"
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="dpp-master-reaper", daemon=True)

    def start(self) -> None:
        self._server.start()
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._reaper.start()
        logger.info("master serving at %s", self.address)
        if self.security.insecure:
            warn_insecure("master", self.address)

    def stop(self, grace_s: float = 2.0) -> None:
        """Marks the service NOT_SERVING, then stops accepting RPCs and lets running ones end."""
        self._health.enter_graceful_shutdown()
        self._stop.set()
        self._server.stop(grace_s).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def _reap(self) -> None:
        serving = True
        while not self._stop.wait(self.master.config.heartbeat_interval_s):
            try:
                self.master.expire_workers()
                self.master.expire_sessions()
            except UnavailableError:
                pass  # the journal cannot be written: health below says so
            except Exception:
                logger.exception("expiring workers or sessions failed")
            # NOT_SERVING while the journal cannot be written: a load balancer or an operator
            # sees why every change is refused (UNAVAILABLE), rather than a healthy master.
            healthy = not self.master.journal_error
            if healthy != serving and not self._stop.is_set():
                status = health_pb2.HealthCheckResponse
                for name in ("", SERVICE_NAME):
                    self._health.set(name, status.SERVING if healthy else status.NOT_SERVING)
                serving = healthy
