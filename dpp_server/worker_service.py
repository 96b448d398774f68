"""The worker's gRPC face: streams frames to clients, and the gRPC link to the master.

Owns translation only: :class:`WorkerServicer` drains a :class:`~dpp_server.worker.FrameBuffer`
into a StreamBatches response stream (raw-bytes frames, no protobuf copy), and
:class:`GrpcMasterLink` implements :class:`~dpp_server.worker.MasterLink` over the master's
gRPC service, retrying with the one policy of :mod:`dpp_proto.retry`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dpp_proto import limits, master_pb2, master_pb2_grpc, worker_pb2
from dpp_proto.auth import Connection, open_channel
from dpp_proto.retry import channel_options
from dpp_server.auth import (
    AuthInterceptor,
    SecuritySettings,
    TenantCache,
    bind,
    client_connection,
    guard_of,
    warn_insecure,
)
from dpp_server.errors import NotFoundError
from dpp_server.frame_server import FrameServer
from dpp_server.master import LeaseGrant
from dpp_server.records import (
    StageSeconds,
    WorkerCounters,
    counters_to_proto,
    split_from_proto,
    stage_seconds_to_proto,
)
from dpp_server.spec import Spec, spec_from_proto
from dpp_server.worker import Registration, Worker, WorkerConfig

logger = logging.getLogger(__name__)

SERVICE_NAME = "dpp.v1.WorkerService"
STREAM_METHOD = "StreamBatches"
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 512 << 20),  # frames (the data plane)
    ("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES),
]
MASTER_SERVICE = "dpp.v1.MasterService"
#: Server threads beyond ``max_streams``, for health checks.
_SPARE_RPCS = 8


class GrpcMasterLink:
    """The worker's connection to the master. Thread-safe (gRPC channels and stubs are).

    Retrying is gRPC's own (:mod:`dpp_proto.retry`, the policy the client uses too): each
    call waits for the channel to be ready, so a master that is restarting is waited for (the
    channel re-dials within ~1 s of its port opening, well within a lease timeout), and
    UNAVAILABLE/ABORTED answers are retried by the channel's retry policy; all of it within
    ``deadline_s`` per call. Anything else is raised.
    """

    def __init__(
        self, address: str, deadline_s: float = 30.0, connection: Connection | None = None
    ) -> None:
        options = channel_options(
            [MASTER_SERVICE],
            max_receive_bytes=limits.MAX_MESSAGE_BYTES,
            max_send_bytes=limits.MAX_MESSAGE_BYTES,
        )
        self._channel = open_channel(address, connection, options)
        self._stub = master_pb2_grpc.MasterServiceStub(self._channel)
        self._deadline_s = deadline_s
        #: The worker's data-plane address, registered with its gRPC address (set by
        #: :class:`WorkerServer` once the data port is bound; empty: gRPC only).
        self.data_address = ""

    def close(self) -> None:
        self._channel.close()

    def register(self, address: str, pipeline_threads: int) -> Registration:
        response = self._stub.RegisterWorker(
            master_pb2.RegisterWorkerRequest(
                address=address, pipeline_threads=pipeline_threads, data_address=self.data_address
            ),
            timeout=self._deadline_s,
            wait_for_ready=True,
        )
        return Registration(
            response.worker_id, response.heartbeat_interval_s, response.lease_timeout_s
        )

    def heartbeat(
        self,
        worker_id: str,
        stage_seconds: StageSeconds,
        counters: WorkerCounters,
        cached: Mapping[str, Sequence[str]] | None = None,
    ) -> bool:
        response = self._stub.Heartbeat(
            master_pb2.HeartbeatRequest(
                worker_id=worker_id,
                stage_seconds=stage_seconds_to_proto(stage_seconds),
                counters=counters_to_proto(counters),
                cached=[
                    master_pb2.CachedSplits(output_digest=d, split_ids=ids)
                    for d, ids in (cached or {}).items()
                ],
                cached_unchanged=cached is None,
            ),
            timeout=self._deadline_s,
            wait_for_ready=True,
        )
        return not response.reregister

    def acquire_split(self, worker_id: str, skip: list[tuple[str, int]]) -> LeaseGrant | None:
        request = master_pb2.AcquireSplitRequest(
            worker_id=worker_id,
            skip=[master_pb2.StreamKey(session_id=s, rank=r) for s, r in skip],
        )
        try:
            response = self._stub.AcquireSplit(
                request, timeout=self._deadline_s, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND:
                return None  # the heartbeat thread re-registers
            raise
        if not response.HasField("lease"):
            return None
        lease = response.lease
        return LeaseGrant(
            session_id=lease.session_id,
            epoch=lease.epoch,
            rank=lease.rank,
            split=split_from_proto(lease.split),
            start_batch=lease.start_batch,
            share_readers=lease.share_readers,
        )

    def report_split_progress(
        self, worker_id: str, lease: LeaseGrant, done: bool, error: str
    ) -> bool:
        request = master_pb2.ReportSplitProgressRequest(
            worker_id=worker_id,
            session_id=lease.session_id,
            epoch=lease.epoch,
            rank=lease.rank,
            split_id=lease.split.split_id,
            done=done,
            error=error,
        )
        response = self._stub.ReportSplitProgress(
            request, timeout=self._deadline_s, wait_for_ready=True
        )
        return response.lease_valid

    def report_split_stats(self, worker_id: str, lease: LeaseGrant, payload: bytes) -> bool:
        request = master_pb2.ReportSplitStatsRequest(
            worker_id=worker_id,
            session_id=lease.session_id,
            epoch=lease.epoch,
            rank=lease.rank,
            split_id=lease.split.split_id,
            payload=payload,
        )
        response = self._stub.ReportSplitStats(
            request, timeout=self._deadline_s, wait_for_ready=True
        )
        return response.accepted

    def unregister(self, worker_id: str) -> None:
        self._stub.UnregisterWorker(
            master_pb2.UnregisterWorkerRequest(worker_id=worker_id),
            timeout=self._deadline_s,
            wait_for_ready=True,
        )

    def get_spec(self, session_id: str) -> Spec:
        response = self._stub.GetSession(
            master_pb2.GetSessionRequest(session_id=session_id),
            timeout=self._deadline_s,
            wait_for_ready=True,
        )
        return spec_from_proto(response.spec)

    def session_tenant(self, session_id: str) -> str:
        """The tenant owning a session, as the master says (for the data plane's check).

        Raises:
            NotFoundError: the master does not know the session.
        """
        try:
            response = self._stub.GetSession(
                master_pb2.GetSessionRequest(session_id=session_id),
                timeout=self._deadline_s,
                wait_for_ready=True,
            )
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(
                    f"session {session_id!r} does not exist; create it with CreateSession first"
                ) from None
            raise
        return response.tenant


class WorkerServicer:
    """Serves StreamBatches from the worker's frame buffers. Thread-safe: each stream runs in
    its own server thread and only touches its (session, rank) buffer."""

    def __init__(self, worker: Worker, poll_s: float = 0.25) -> None:
        self.worker = worker
        self.poll_s = poll_s

    def stream_batches(
        self, request: worker_pb2.StreamBatchesRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        buffer = self.worker.buffer(request.session_id, request.rank)
        # This stream is now the (session, rank)'s only consumer on this worker: an older one
        # (a trainer that died or re-dialled) stops taking frames (see FrameBuffer).
        token = buffer.attach()
        context.add_callback(buffer.wake)  # a cancelled stream stops waiting at once
        logger.info("client streaming session %s rank %d", request.session_id, request.rank)
        self.worker.streams.add(1)
        try:
            while context.is_active() and not self.worker.stopping:
                if buffer.closed:
                    # Abandoned while this client did not read (a paused trainer): read the
                    # new buffer its splits are produced into again.
                    buffer.detach()
                    buffer = self.worker.buffer(request.session_id, request.rank)
                    token = buffer.attach()
                    context.add_callback(buffer.wake)
                if not buffer.is_consumer(token):
                    return  # superseded by a newer stream of the same (session, rank)
                item = buffer.take(self.poll_s, token, context.is_active)
                if item is None:
                    continue
                frame, lease = item
                sent = False
                try:
                    yield frame
                    sent = True
                finally:
                    if not sent:  # the RPC ended at the yield: the frame stays for the next
                        buffer.unget(frame, lease)
        finally:
            buffer.detach()
            self.worker.streams.add(-1)

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        """The StreamBatches handler with raw-bytes responses (no response serializer)."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                STREAM_METHOD: grpc.unary_stream_rpc_method_handler(
                    self.stream_batches,
                    request_deserializer=worker_pb2.StreamBatchesRequest.FromString,
                    response_serializer=None,
                )
            },
        )


class WorkerServer:
    """A running worker: gRPC server (StreamBatches + health) and the data plane's
    :class:`~dpp_server.frame_server.FrameServer` around a :class:`Worker`.

    ``security`` (default --insecure, for in-process tests): TLS on both ports, the token
    check of every stream (role trainer, the session's tenant, asked of the master once per
    session; one guard for both ports), and the worker's own credentials towards the master.
    ``data_port``: the data plane's port on ``host`` (0: any free one; -1: none, trainers
    stream over gRPC).
    """

    def __init__(
        self,
        master_address: str,
        config: WorkerConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        observe: Callable[[str, float], None] | None = None,
        security: SecuritySettings | None = None,
        data_port: int = 0,
    ) -> None:
        # Each open stream holds a thread; past ``max_streams`` (plus room for health checks)
        # gRPC answers RESOURCE_EXHAUSTED at once instead of queueing the call unserved.
        config = config or WorkerConfig()
        rpcs = config.max_streams + _SPARE_RPCS
        self.security = security or SecuritySettings(insecure=True)
        self.link = GrpcMasterLink(
            master_address, connection=client_connection(self.security, master_address)
        )
        guard = guard_of(self.security, TenantCache(self.link.session_tenant))
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=rpcs, thread_name_prefix="dpp-worker-rpc"),
            options=GRPC_OPTIONS,
            maximum_concurrent_rpcs=rpcs,
            interceptors=[AuthInterceptor(guard)],
        )
        self.port = bind(self._server, f"{host}:{port}", self.security)
        if self.port == 0:
            raise OSError(f"could not bind the worker to {host}:{port}")
        self.address = f"{advertise_host or host}:{self.port}"
        self.worker = Worker(self.link, self.address, config, observe)  # observe: metrics hook
        self.frames: FrameServer | None = None
        if data_port >= 0:
            self.frames = FrameServer(
                self.worker, guard, self.security, host, data_port, config.max_streams
            )
            self.link.data_address = f"{advertise_host or host}:{self.frames.port}"
        self._server.add_generic_rpc_handlers([WorkerServicer(self.worker).handler()])
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._stopped = threading.Event()

    @property
    def data_address(self) -> str:
        """host:port of the data plane; empty when it is off."""
        return self.link.data_address

    def start(self) -> None:
        self._server.start()
        if self.frames is not None:
            self.frames.start()
        self.worker.start()
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.security.insecure:
            warn_insecure("worker", self.address)

    def stop(self, grace_s: float = 2.0, drain_timeout_s: float = 0.0) -> None:
        """Marks NOT_SERVING, drains the pipeline (when ``drain_timeout_s`` > 0: finish the
        splits in hand and let clients take their frames) or stops it, then the server."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._health.enter_graceful_shutdown()
        if drain_timeout_s > 0:
            self.worker.drain(drain_timeout_s)
        else:
            self.worker.stop()
        if self.frames is not None:
            self.frames.stop()
        self._server.stop(grace_s).wait()
        self.link.close()

    def wait(self) -> None:
        self._server.wait_for_termination()
