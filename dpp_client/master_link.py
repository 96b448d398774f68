"""The loader's link to the master: every control-plane RPC a trainer makes, and nothing else.

Owns :class:`MasterLink`, the seam the loader talks through (a test passes a fake), and
:class:`GrpcMasterLink`, the real one over the master's gRPC service. The same shape as the
worker's ``MasterLink``: one method per RPC, transient failures retried inside, anything else
raised. Knows the proto and grpc; must never import ``dpp_server`` or ``storage``.

Retrying is gRPC's own (:mod:`dpp_proto.retry`): every call waits for the channel to be ready
(``wait_for_ready``), so a master that is restarting is waited for, and UNAVAILABLE/ABORTED
answers are retried by the channel's retry policy; all of it within ``rpc_timeout_s`` per call.
Failures reach the loader already mapped to :class:`~dpp_client.errors.DppClientError` types.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import grpc

from dpp_client.errors import DppClientError, error_from_rpc, rpc_code
from dpp_client.spec import SessionSpec
from dpp_proto import limits, master_pb2, master_pb2_grpc
from dpp_proto.auth import Connection, open_channel
from dpp_proto.retry import channel_options

__all__ = ["MASTER_SERVICE", "GrpcMasterLink", "MasterLink"]

_log = logging.getLogger(__name__)

MASTER_SERVICE = "dpp.v1.MasterService"
_CHANNEL_OPTIONS = channel_options(
    [MASTER_SERVICE],
    max_receive_bytes=limits.MAX_MESSAGE_BYTES,
    max_send_bytes=limits.MAX_MESSAGE_BYTES,
)


class MasterLink(Protocol):
    """How a loader talks to the master. Implementations retry transient failures until their
    deadline and raise :class:`~dpp_client.errors.DppClientError` types on anything else
    (:class:`~dpp_client.errors.DppUnavailableError` once the master stayed unreachable).
    Called from several threads at once (trainer, acknowledger, refresher): must be
    thread-safe."""

    def create_session(
        self, spec: SessionSpec, session_name: str
    ) -> master_pb2.CreateSessionResponse: ...

    def validate_spec(self, spec: SessionSpec, session_name: str) -> None:
        """Has the master check ``spec`` (against its table, and ``session_name`` against the
        sessions of that name) without creating anything; raises
        :class:`~dpp_client.errors.SpecRejectedError` and the like when it is bad."""
        ...

    def session_exists(self, session_id: str) -> master_pb2.SessionPlan | None:
        """The session's plan when the master knows the session, else None."""
        ...

    def begin_epoch(
        self, request: master_pb2.BeginEpochRequest
    ) -> master_pb2.BeginEpochResponse | None:
        """The epoch's splits, or None when the session has no such epoch (past its last)."""
        ...

    def ack_batches(self, request: master_pb2.AckBatchesRequest) -> master_pb2.AckBatchesResponse:
        """Acknowledges consumption; the response carries the equal-batches limit."""
        ...

    def list_workers(self) -> list[master_pb2.WorkerInfo]: ...

    def close(self) -> None:
        """Releases the connection; calls in flight fail (CANCELLED) rather than wait on."""
        ...


class GrpcMasterLink:
    """:class:`MasterLink` over gRPC.

    Thread-safe: ``_lock`` guards ``_closed`` and the lazy creation of the channel and stub
    (made on the first call: a loader built with ``validate=False`` dials at its first
    ``iter()``); gRPC stubs are
    thread-safe.

    Args:
        address: ``host:port`` of the master.
        rpc_timeout_s: deadline of each call, the wait for a restarting master and gRPC's
            retries included.
        stub: a ready stub to call instead of dialling ``address`` (tests pass a fake one).
        connection: the credentials (TLS, client certificate, token); None: plaintext, for
            a cluster started with --insecure.
    """

    def __init__(
        self,
        address: str,
        rpc_timeout_s: float = 30.0,
        *,
        stub: master_pb2_grpc.MasterServiceStub | None = None,
        connection: Connection | None = None,
    ) -> None:
        self.address = address
        self.connection = connection
        self.rpc_timeout_s = rpc_timeout_s
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub_obj = stub
        self._closed = False

    def _stub(self) -> master_pb2_grpc.MasterServiceStub:
        with self._lock:
            if self._closed:
                raise DppClientError(f"the link to master {self.address} is closed")
            if self._stub_obj is None:
                self._channel = open_channel(self.address, self.connection, _CHANNEL_OPTIONS)
                self._stub_obj = master_pb2_grpc.MasterServiceStub(self._channel)
            return self._stub_obj

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()

    def create_session(
        self, spec: SessionSpec, session_name: str
    ) -> master_pb2.CreateSessionResponse:
        request = master_pb2.CreateSessionRequest(spec=spec.to_proto(), session_name=session_name)
        what = f"CreateSession(name={session_name!r}, table={spec.table_uri!r})"
        try:
            return self._stub().CreateSession(
                request, timeout=self.rpc_timeout_s, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"{what} at master {self.address}") from exc

    def validate_spec(self, spec: SessionSpec, session_name: str) -> None:
        request = master_pb2.CreateSessionRequest(
            spec=spec.to_proto(), session_name=session_name, validate_only=True
        )
        what = f"CreateSession(name={session_name!r}, table={spec.table_uri!r}, validate_only)"
        try:
            self._stub().CreateSession(request, timeout=self.rpc_timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"{what} at master {self.address}") from exc

    def session_exists(self, session_id: str) -> master_pb2.SessionPlan | None:
        request = master_pb2.GetSessionRequest(session_id=session_id)
        try:
            response = self._stub().GetSession(
                request, timeout=self.rpc_timeout_s, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            if rpc_code(exc) == grpc.StatusCode.NOT_FOUND:
                return None
            what = f"GetSession({session_id}) at master {self.address}"
            raise error_from_rpc(exc, what) from exc
        return response.plan

    def begin_epoch(
        self, request: master_pb2.BeginEpochRequest
    ) -> master_pb2.BeginEpochResponse | None:
        try:
            return self._stub().BeginEpoch(request, timeout=self.rpc_timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            if rpc_code(exc) == grpc.StatusCode.OUT_OF_RANGE:
                _log.info(
                    "session %s has no epoch %d (%s)",
                    request.session_id,
                    request.epoch,
                    exc.details() if isinstance(exc, grpc.Call) else exc,
                )
                return None
            what = (
                f"BeginEpoch(session {request.session_id}, rank {request.rank}, "
                f"epoch {request.epoch}) at master {self.address}"
            )
            raise error_from_rpc(exc, what) from exc

    def ack_batches(self, request: master_pb2.AckBatchesRequest) -> master_pb2.AckBatchesResponse:
        try:
            return self._stub().AckBatches(request, timeout=self.rpc_timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"AckBatches at master {self.address}") from exc

    def list_workers(self) -> list[master_pb2.WorkerInfo]:
        try:
            response = self._stub().ListWorkers(
                master_pb2.ListWorkersRequest(), timeout=self.rpc_timeout_s, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"ListWorkers at master {self.address}") from exc
        return list(response.workers)
