"""The data plane (dpp_proto/data_plane.py) against gRPC StreamBatches: a real worker's frame
buffers served by both real servers (``FrameServer`` and ``WorkerServicer`` behind the
``AuthInterceptor``, one ``Guard``) on 127.0.0.1 with mTLS, read by both real clients
(``SocketStream``, ``GrpcStream``). Same frames byte for byte; the same refusals mapped to the
same client errors; no plaintext or certificate-less client gets through."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from dpp_client import DppLoader, Feature, SessionSpec
from dpp_client.errors import DppAccessError, DppClientError, DppUnavailableError, error_from_rpc
from dpp_client.fan_in import GrpcStream, StreamCall
from dpp_client.socket_stream import SocketStream
from dpp_proto import worker_pb2
from dpp_proto.auth import Connection, token_sha256
from dpp_server.auth import AuthInterceptor, SecuritySettings, bind, guard_of
from dpp_server.errors import NotFoundError
from dpp_server.frame_server import FrameServer
from dpp_server.local_cluster import CREDENTIALS_ENV, LocalCluster
from dpp_server.worker import Worker
from dpp_server.worker_service import GRPC_OPTIONS, WorkerServicer

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Planes:
    worker: Worker
    grpc_address: str
    data_address: str
    client: Connection  # alice, tenant ads, with the cluster's CA and client certificate


@pytest.fixture
def planes(tmp_path: Path) -> Iterator[Planes]:
    creds = Path(os.environ[CREDENTIALS_ENV])
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(
        f"{token_sha256('t-ads')} trainer alice ads\n{token_sha256('t-evil')} trainer eve evil\n"
    )
    settings = SecuritySettings(
        tls_cert=str(creds / "server.pem"),
        tls_key=str(creds / "server.key"),
        tls_ca=str(creds / "ca.pem"),
        token_file=str(tokens),
    )

    def tenant(session_id: str) -> str:
        if not session_id.startswith("s-ads"):
            raise NotFoundError(f"session {session_id!r} does not exist")
        return "ads"

    guard = guard_of(settings, tenant)
    # A real worker, never started: its frame buffers are filled by the test.
    worker = Worker(link=None, address="127.0.0.1:0")  # type: ignore[arg-type]
    server = grpc.server(
        futures.ThreadPoolExecutor(8), options=GRPC_OPTIONS, interceptors=[AuthInterceptor(guard)]
    )
    server.add_generic_rpc_handlers([WorkerServicer(worker, poll_s=0.05).handler()])
    port = bind(server, "127.0.0.1:0", settings)
    server.start()
    frames = FrameServer(worker, guard, settings, "127.0.0.1", 0, poll_s=0.05)
    frames.start()
    client = Connection(
        ca_pem=(creds / "ca.pem").read_bytes(),
        cert_pem=(creds / "client.pem").read_bytes(),
        key_pem=(creds / "client.key").read_bytes(),
        token="t-ads",
    )
    try:
        yield Planes(worker, f"127.0.0.1:{port}", f"127.0.0.1:{frames.port}", client)
    finally:
        frames.stop()
        server.stop(0).wait()


def _request(session_id: str, rank: int = 0) -> worker_pb2.StreamBatchesRequest:
    return worker_pb2.StreamBatchesRequest(session_id=session_id, rank=rank)


def _take(call: StreamCall, count: int) -> list[bytes]:
    got: list[bytes] = []
    try:
        for raw in call:
            got.append(bytes(raw))
            if len(got) == count:
                break
    finally:
        call.cancel()
        call.close()
    return got


def _refusal(call: StreamCall, what: str) -> DppClientError:
    with pytest.raises(grpc.RpcError) as info:
        _take(call, 1)
    return error_from_rpc(info.value, what)


def test_frames_equal_grpc_byte_for_byte(planes: Planes) -> None:
    rng = random.Random(7)
    # Sizes around the record word, TLS records (16 KiB) and socket buffers, and an empty one.
    frames = [rng.randbytes(n) for n in (0, 1, 7, 8, 16_383, 16_385, 1 << 20, 3_000_001)]
    for rank, (dial, address) in enumerate(
        [(GrpcStream, planes.grpc_address), (SocketStream, planes.data_address)]
    ):
        buffer = planes.worker.buffer("s-ads", rank)
        for frame in frames:
            assert buffer.put(frame)
        got = _take(dial(address, _request("s-ads", rank), planes.client), len(frames))
        assert got == frames, dial.__name__
        if dial is SocketStream:
            # No delivered frame is put back. (The gRPC servicer may put back the last one: a
            # cancel closes its generator at the ``yield`` after the send; the client drops
            # the repeat by (split, batch) when it comes again.)
            assert buffer.take(0) is None


def test_token_and_tenant_refusals_match_grpc(planes: Planes) -> None:
    cases = {
        "no token": (dataclasses.replace(planes.client, token=""), "s-ads"),
        "bad token": (dataclasses.replace(planes.client, token="t-nope"), "s-ads"),
        "foreign tenant": (dataclasses.replace(planes.client, token="t-evil"), "s-ads"),
        "unknown session": (planes.client, "s-other"),
    }
    for case, (connection, session) in cases.items():
        planes.worker.buffer(session, 0).put(b"secret")
        over_grpc = _refusal(GrpcStream(planes.grpc_address, _request(session), connection), case)
        over_data = _refusal(SocketStream(planes.data_address, _request(session), connection), case)
        assert type(over_data) is type(over_grpc), case
        assert (over_data.code, over_data.reason) == (over_grpc.code, over_grpc.reason), case
        assert str(over_data) == str(over_grpc), case
        if case != "unknown session":
            assert isinstance(over_data, DppAccessError), case
        # Refused before attaching: the frame is still there.
        assert planes.worker.buffer(session, 0).take(0) is not None, case


def test_insecure_or_certificateless_clients_cannot_read_a_secure_data_port(
    planes: Planes,
) -> None:
    buffer = planes.worker.buffer("s-ads", 0)
    buffer.put(b"secret")
    clients = {
        "plaintext": None,
        "no client certificate": dataclasses.replace(planes.client, cert_pem=b"", key_pem=b""),
        "another CA": dataclasses.replace(planes.client, ca_pem=b""),  # the system's roots
    }
    for case, connection in clients.items():
        error = _refusal(SocketStream(planes.data_address, _request("s-ads"), connection), case)
        assert isinstance(error, DppUnavailableError), (case, error)
    assert buffer.take(0) == (b"secret", None)


def test_a_newer_stream_of_the_same_rank_supersedes_the_older(planes: Planes) -> None:
    buffer = planes.worker.buffer("s-ads", 0)
    first = SocketStream(planes.data_address, _request("s-ads"), planes.client)
    iterator = iter(first)
    buffer.put(b"one")
    assert bytes(next(iterator)) == b"one"
    got: list[bytes] = []
    second = threading.Thread(
        target=lambda: got.extend(
            _take(SocketStream(planes.data_address, _request("s-ads"), planes.client), 1)
        )
    )
    second.start()
    deadline = time.monotonic() + 10
    while buffer.is_consumer(1) and time.monotonic() < deadline:  # the first stream's token
        time.sleep(0.01)
    buffer.put(b"two")
    second.join(10)
    assert got == [b"two"]
    assert list(iterator) == []  # the worker ended the superseded stream (status OK)
    first.close()


def test_an_insecure_cluster_streams_plaintext_on_the_data_plane(
    small_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = SessionSpec(
        table_uri=small_table,
        features=(Feature("d0", "dense", source="dense_0"),),
        passthrough=("row_id",),
        batch_size=1000,
    )
    with (
        LocalCluster(workers=1, pipeline_threads=1, secure=False) as cluster,
        caplog.at_level(logging.INFO, logger="dpp_client.fan_in"),
        DppLoader(cluster.master_address, spec, connection=Connection(insecure=True)) as loader,
    ):
        rows = sorted(r for b in loader for r in b.extras["row_id"].tolist())
    assert rows == list(range(len(rows))) and len(rows) > 0
    planes = [r.getMessage() for r in caplog.records if "streaming from worker" in r.getMessage()]
    assert planes and all(m.endswith("(data plane)") for m in planes), planes
