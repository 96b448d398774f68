"""The client's master link over a real gRPC channel to an in-process fake master: the
channel's retry policy and ``wait_for_ready`` are what retry, so they are tested here, where
a real channel exists. No fixed waits: each test ends when the call it makes returns."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from dpp_client import DppLoader, Feature, SessionSpec
from dpp_client.master_link import GrpcMasterLink
from dpp_proto import master_pb2, master_pb2_grpc
from dpp_proto.auth import Connection

pytestmark = pytest.mark.integration

SPEC = SessionSpec(
    table_uri="/t",
    features=(Feature("dense_0", "dense"),),
    label="label",
    batch_size=4,
    epochs=1,
)


class FlakyMaster(master_pb2_grpc.MasterServiceServicer):
    """Answers CreateSession with UNAVAILABLE ``unavailable_then_ok`` times, then a session."""

    def __init__(self, unavailable_then_ok: int) -> None:
        self.unavailable_then_ok = unavailable_then_ok
        self.attempts = 0
        self.lock = threading.Lock()

    def CreateSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.attempts += 1
            fail = self.attempts <= self.unavailable_then_ok
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return master_pb2.CreateSessionResponse(session_id="s1")

    def BeginEpoch(self, request: Any, context: grpc.ServicerContext) -> Any:
        return master_pb2.BeginEpochResponse(split_ids=[], epochs=1)

    def ListWorkers(self, request: Any, context: grpc.ServicerContext) -> Any:
        return master_pb2.ListWorkersResponse()

    def AckBatches(self, request: Any, context: grpc.ServicerContext) -> Any:
        return master_pb2.AckBatchesResponse()


def serve(servicer: FlakyMaster, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    master_pb2_grpc.add_MasterServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


@pytest.fixture
def flaky() -> Iterator[tuple[FlakyMaster, int]]:
    servicer = FlakyMaster(unavailable_then_ok=2)
    server, port = serve(servicer)
    yield servicer, port
    server.stop(0)


def test_unavailable_master_is_retried(flaky: tuple[FlakyMaster, int]) -> None:
    master, port = flaky
    # A plaintext stand-in master: the loader is told so (the run's $DPP_CONNECTION is TLS).
    # validate=False: the constructor's check is a CreateSession too; count only the real one.
    plaintext = Connection(insecure=True)
    with DppLoader(
        f"127.0.0.1:{port}", SPEC, rpc_timeout_s=5.0, validate=False, connection=plaintext
    ) as loader:
        iter(loader)
        assert loader.session_id == "s1"
    assert master.attempts == 3


def test_a_master_not_yet_up_is_waited_for() -> None:
    with socket.socket() as s:  # a free port, nothing listening on it yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = GrpcMasterLink(f"127.0.0.1:{port}", rpc_timeout_s=20.0)
    servicer = FlakyMaster(unavailable_then_ok=0)
    result: list[Any] = []
    call = threading.Thread(target=lambda: result.append(link.create_session(SPEC, "")))
    call.start()
    server = None
    try:
        # Start the master once the call is waiting on the (unconnectable) channel.
        channel_state = threading.Event()
        link_channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        link_channel.subscribe(
            lambda state: (
                state == grpc.ChannelConnectivity.TRANSIENT_FAILURE and channel_state.set()
            ),
            try_to_connect=True,
        )
        assert channel_state.wait(10)
        link_channel.close()
        server, _ = serve(servicer, port)
        call.join(20)
        assert [r.session_id for r in result] == ["s1"]
    finally:
        link.close()
        if server is not None:
            server.stop(0)
