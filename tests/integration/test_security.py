"""Who may call what, on a real secured cluster (processes on 127.0.0.1): every RPC of every
service called by every kind of caller, and each attack of issue 13 as a regression test.

Callers (the run's credentials, tests/conftest.py): ``trainer`` (tenant "local", the victim's
tenant), ``other_tenant`` (a trainer of tenant "evil"), ``worker`` (the workers' identity),
``rogue_worker`` (another worker identity), ``admin``; ``none`` (TLS and a client certificate,
no token) and ``wrong`` (a token the server does not know).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dpp_client import Feature, Op, SessionSpec
from dpp_proto import master_pb2, master_pb2_grpc, worker_pb2
from dpp_proto.auth import Connection, load_connection, open_channel
from dpp_server.local_cluster import CREDENTIALS_ENV, LocalCluster
from dpp_server.pki import Authority

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
OK = None  # the call succeeds
UNAUTH, DENIED = Code.UNAUTHENTICATED, Code.PERMISSION_DENIED
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def _creds() -> Path:
    return Path(os.environ[CREDENTIALS_ENV])


def connection_of(caller: str, address: str) -> Connection:
    folder = _creds()
    user = load_connection(folder / "connection.json")
    assert user is not None
    base = user.with_address(address)
    named = {
        "trainer": "trainee",
        "other_tenant": "mallory",
        "admin": "ops",
        "rogue_worker": "rogue",
    }
    if caller in named:
        conn = load_connection(folder / f"{named[caller]}.json")
        assert conn is not None
        return conn.with_address(address)
    if caller == "worker":
        return Connection(
            address,
            base.ca_pem,
            base.cert_pem,
            base.key_pem,
            (folder / "worker.token").read_text().strip(),
        )
    if caller == "none":
        return Connection(address, base.ca_pem, base.cert_pem, base.key_pem, "")
    if caller == "wrong":
        return Connection(address, base.ca_pem, base.cert_pem, base.key_pem, "dpp_not-a-token")
    raise AssertionError(caller)


def spec_of(table: str, **fields: Any) -> SessionSpec:
    fields.setdefault(
        "features",
        (Feature("d0", "dense", source="dense_0", ops=(Op("fill_null", {"value": 0.0}),)),),
    )
    return SessionSpec(table_uri=table, batch_size=1000, **fields)


class Calls:
    """Stubs of one caller, and a way to call any RPC by name and get its status code."""

    def __init__(self, cluster: LocalCluster, caller: str) -> None:
        conn = connection_of(caller, cluster.master_address)
        self._channels = [open_channel(cluster.master_address, conn)]
        self.master = master_pb2_grpc.MasterServiceStub(self._channels[0])
        self.monitor = master_pb2_grpc.MonitorServiceStub(self._channels[0])
        self.conn = conn

    def code(self, fn: Callable[[], Any]) -> Code | None:
        try:
            fn()
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return exc.code()
        return None

    def stream_first_frame(self, worker_address: str, session_id: str) -> bytes:
        channel = open_channel(worker_address, self.conn.with_address(worker_address))
        self._channels.append(channel)
        call = channel.unary_stream(
            "/dpp.v1.WorkerService/StreamBatches",
            request_serializer=worker_pb2.StreamBatchesRequest.SerializeToString,
            response_deserializer=None,
        )(worker_pb2.StreamBatchesRequest(session_id=session_id, rank=0), timeout=30)
        try:
            frame: bytes = next(iter(call))
            return frame
        finally:
            call.cancel()

    def close(self) -> None:
        for c in self._channels:
            c.close()


@pytest.fixture(scope="module")
def secured(small_table: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One worker, a victim session of tenant "local" with an epoch begun, and a test worker
    id registered by the workers' identity."""
    table_dir = str(Path(small_table).parent)
    with LocalCluster(
        workers=1,
        pipeline_threads=1,
        allow_table=table_dir,
        work_dir=str(tmp_path_factory.mktemp("secured")),
    ) as cluster:
        user = Calls(cluster, "trainer")
        spec = spec_of(small_table, storage_options={"key": "AKIAEXAMPLE", "secret": SECRET})
        created = user.master.CreateSession(
            master_pb2.CreateSessionRequest(spec=spec.to_proto(), session_name="victim-job")
        )
        sid = created.session_id
        begun = user.master.BeginEpoch(
            master_pb2.BeginEpochRequest(session_id=sid, rank=0, epoch=0)
        )
        worker = Calls(cluster, "worker")
        fake = worker.master.RegisterWorker(
            master_pb2.RegisterWorkerRequest(address="127.0.0.1:9", pipeline_threads=1)
        )
        yield {
            "cluster": cluster,
            "table": small_table,
            "session": sid,
            "split": begun.split_ids[0],
            "worker_id": fake.worker_id,
            "spec": spec,
        }
        user.close()
        worker.close()


def _fresh_worker(cluster: LocalCluster) -> str:
    calls = Calls(cluster, "worker")
    try:
        request = master_pb2.RegisterWorkerRequest(address="127.0.0.1:9", pipeline_threads=1)
        worker_id: str = calls.master.RegisterWorker(request).worker_id
        return worker_id
    finally:
        calls.close()


def _admitted_as(answer: Code, call: Callable[[], Any]) -> str:
    """Calls ``call``; the handler's own refusal ``answer`` (after the guard) counts as admitted."""
    try:
        call()
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        if exc.code() != answer:
            raise
    return "admitted"


def _rpcs(s: dict[str, Any]) -> dict[str, Callable[[Calls], Any]]:
    sid, wid = s["session"], s["worker_id"]
    table = s["table"]
    workers_address = s["cluster"].workers[0].address
    return {
        "CreateSession": lambda c: c.master.CreateSession(
            master_pb2.CreateSessionRequest(spec=spec_of(table).to_proto())
        ),
        "GetSession": lambda c: c.master.GetSession(master_pb2.GetSessionRequest(session_id=sid)),
        "BeginEpoch": lambda c: c.master.BeginEpoch(
            master_pb2.BeginEpochRequest(session_id=sid, rank=0, epoch=0)
        ),
        "AckBatches": lambda c: c.master.AckBatches(
            master_pb2.AckBatchesRequest(session_id=sid, rank=0, epoch=0)
        ),
        "ListWorkers": lambda c: c.master.ListWorkers(master_pb2.ListWorkersRequest()),
        "RegisterWorker": lambda c: c.master.UnregisterWorker(
            master_pb2.UnregisterWorkerRequest(
                worker_id=c.master.RegisterWorker(
                    master_pb2.RegisterWorkerRequest(address="127.0.0.1:9", pipeline_threads=1)
                ).worker_id
            )
        ),
        "Heartbeat": lambda c: c.master.Heartbeat(master_pb2.HeartbeatRequest(worker_id=wid)),
        "AcquireSplit": lambda c: c.master.AcquireSplit(
            # Skipping the victim's stream: the test worker must not take its splits.
            master_pb2.AcquireSplitRequest(
                worker_id=wid, skip=[master_pb2.StreamKey(session_id=sid, rank=0)]
            )
        ),
        "ReportSplitProgress": lambda c: c.master.ReportSplitProgress(
            master_pb2.ReportSplitProgressRequest(
                worker_id=wid,
                session_id=sid,
                epoch=0,
                rank=0,
                split_id=s["split"],
                error="forged failure",
            )
        ),
        # A worker registered just now by the workers' identity, dropped by the caller.
        "UnregisterWorker": lambda c: c.master.UnregisterWorker(
            master_pb2.UnregisterWorkerRequest(worker_id=_fresh_worker(s["cluster"]))
        ),
        # The victim is a training session: once admitted, the master answers that it is not
        # a stats session (FAILED_PRECONDITION), which is what an admitted call gets.
        "GetStatsReport": lambda c: _admitted_as(
            grpc.StatusCode.FAILED_PRECONDITION,
            lambda: c.master.GetStatsReport(master_pb2.GetStatsReportRequest(session_id=sid)),
        ),
        # Sketches for a training session: once admitted, refused as not a stats session.
        "ReportSplitStats": lambda c: _admitted_as(
            grpc.StatusCode.FAILED_PRECONDITION,
            lambda: c.master.ReportSplitStats(
                master_pb2.ReportSplitStatsRequest(
                    worker_id=wid, session_id=sid, epoch=0, rank=0, split_id=s["split"]
                )
            ),
        ),
        "GetClusterStatus": lambda c: c.monitor.GetClusterStatus(
            master_pb2.GetClusterStatusRequest()
        ),
        "SetWorkerTarget": lambda c: c.monitor.SetWorkerTarget(
            master_pb2.SetWorkerTargetRequest(workers=0)
        ),
        "StreamBatches": lambda c: c.stream_first_frame(workers_address, sid),
    }


CALLERS = ("none", "wrong", "trainer", "other_tenant", "worker", "rogue_worker", "admin")
# The oracle, written out by hand (not derived from dpp_server.auth.RULES): "ok" or "no"
# (PERMISSION_DENIED) per caller. Callers without a valid token are refused before anything.
_TABLE = """
                     trainer other_tenant worker rogue_worker admin
CreateSession        ok      ok           no     no           no
GetSession           ok      no           ok     ok           ok
BeginEpoch           ok      no           no     no           no
AckBatches           ok      no           no     no           no
ListWorkers          ok      ok           no     no           ok
RegisterWorker       no      no           ok     ok           no
Heartbeat            no      no           ok     no           no
AcquireSplit         no      no           ok     no           no
ReportSplitProgress  no      no           ok     no           no
UnregisterWorker     no      no           ok     no           ok
GetStatsReport       ok      no           no     no           no
ReportSplitStats     no      no           ok     no           no
GetClusterStatus     no      no           no     no           ok
SetWorkerTarget      no      no           no     no           ok
StreamBatches        ok      no           no     no           no
"""
_HEAD, *_ROWS = (line.split() for line in _TABLE.strip().splitlines())
EXPECTED: dict[str, dict[str, Code | None]] = {
    row[0]: {c: OK if cell == "ok" else DENIED for c, cell in zip(_HEAD, row[1:], strict=True)}
    for row in _ROWS
}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("rpc", sorted(EXPECTED))
def test_every_rpc_by_every_caller(secured: dict[str, Any], rpc: str, caller: str) -> None:
    expected = UNAUTH if caller in ("none", "wrong") else EXPECTED[rpc][caller]
    calls = Calls(secured["cluster"], caller)
    try:
        try:
            result: Any = _rpcs(secured)[rpc](calls)
            got = None
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            got, details, result = exc.code(), exc.details() or "", None
        assert got == expected, f"{rpc} by {caller}: {got} ({locals().get('details')})"
        if got == UNAUTH:
            assert "token" in details
        if got == DENIED:
            # The message names what is needed, never another tenant's name.
            assert "needs role" in details or "another" in details, details
            assert "'local'" not in details or caller != "other_tenant", details
        if rpc == "StreamBatches" and got is None:
            assert result[:4] == b"DPPF"  # a real frame of the session
    finally:
        calls.close()


def test_get_session_redacts_storage_options_except_for_workers(secured: dict[str, Any]) -> None:
    cluster, sid = secured["cluster"], secured["session"]
    seen = {}
    for caller in ("trainer", "admin", "worker"):
        calls = Calls(cluster, caller)
        response = calls.master.GetSession(master_pb2.GetSessionRequest(session_id=sid))
        seen[caller] = dict(response.spec.storage_options)
        assert response.tenant == "local"
        calls.close()
    assert seen["trainer"] == seen["admin"] == {"key": "<redacted>", "secret": "<redacted>"}
    assert seen["worker"]["secret"] == SECRET  # workers read the table with it


def test_secrets_are_not_logged_nor_in_metrics(secured: dict[str, Any]) -> None:
    cluster = secured["cluster"]
    logs = cluster.master.log_tail(10_000) + "".join(w.log_tail(10_000) for w in cluster.workers)
    assert SECRET not in logs and "AKIAEXAMPLE" not in logs
    for process in (cluster.master, *cluster.workers):
        if process.metrics_address:
            with urllib.request.urlopen(f"http://{process.metrics_address}/metrics") as r:
                assert SECRET.encode() not in r.read()


def test_session_names_do_not_join_across_tenants(secured: dict[str, Any]) -> None:
    evil = Calls(secured["cluster"], "other_tenant")
    response = evil.master.CreateSession(
        master_pb2.CreateSessionRequest(spec=secured["spec"].to_proto(), session_name="victim-job")
    )
    evil.close()
    assert response.session_id != secured["session"] and not response.joined


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("table_uri", "/etc"),
        ("table_uri", "/root"),
        ("table_uri", "TABLE_DIR/../../../../etc"),
        ("table_uri", "http://127.0.0.1:1/table"),
        ("table_uri", "s3://some-bucket/table"),
        ("map_id", "/etc/shadow"),
        ("map_id", "s3://bucket/v.txt?endpoint_override=127.0.0.1:1"),
        ("endpoint_url", "http://127.0.0.1:1"),
        ("symlink", "/etc"),
    ],
)
def test_data_access_policy_refuses_without_disclosure(
    secured: dict[str, Any], field: str, value: str, tmp_path: Path
) -> None:
    table = secured["table"]
    table_dir = str(Path(table).parent)
    kwargs: dict[str, Any] = {}
    uri = table
    if field == "table_uri":
        uri = value.replace("TABLE_DIR", table_dir)
    elif field == "map_id":
        kwargs["features"] = (
            Feature("s0", "sparse", source="sparse_0", ops=(Op("map_id", {"path": value}),)),
        )
    elif field == "endpoint_url":
        kwargs["storage_options"] = {"endpoint_url": value}
    elif field == "symlink":  # a link planted inside an allowed folder, pointing outside
        link = Path(table_dir) / f"link-{os.getpid()}"
        link.unlink(missing_ok=True)
        link.symlink_to(value)
        uri = str(link)
    spec = spec_of(uri, **kwargs)
    calls = Calls(secured["cluster"], "trainer")
    with pytest.raises(grpc.RpcError) as raised:
        calls.master.CreateSession(master_pb2.CreateSessionRequest(spec=spec.to_proto()))
    calls.close()
    details = raised.value.details() or ""  # type: ignore[attr-defined]
    assert raised.value.code() == DENIED, details  # type: ignore[attr-defined]
    assert "--allow-table" in details or "--allow-endpoint" in details or "query" in details
    for leak in ("exist", "file(s)", "found", "root:", "permission"):
        assert leak not in details.lower().replace("does not exist", "§"), details


def test_vocabulary_error_does_not_echo_file_content(secured: dict[str, Any]) -> None:
    planted = Path(secured["table"]).parent / "planted.txt"
    planted.write_text("API_KEY=sk-live-0123456789abcdef\n")
    spec = spec_of(
        secured["table"],
        features=(
            Feature("s0", "sparse", source="sparse_0", ops=(Op("map_id", {"path": str(planted)}),)),
        ),
    )
    calls = Calls(secured["cluster"], "trainer")
    with pytest.raises(grpc.RpcError) as raised:
        calls.master.CreateSession(master_pb2.CreateSessionRequest(spec=spec.to_proto()))
    calls.close()
    details = raised.value.details() or ""  # type: ignore[attr-defined]
    assert raised.value.code() == Code.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "not one int64 id per line" in details and "sk-live" not in details


def test_a_client_that_does_not_trust_the_ca_cannot_connect(secured: dict[str, Any]) -> None:
    address = secured["cluster"].master_address
    trusted = connection_of("trainer", address)
    stranger = Authority.create("another CA").cert_pem
    for conn in (
        Connection(address, stranger, trusted.cert_pem, trusted.key_pem, trusted.token),
        Connection(address, insecure=True),  # plaintext against TLS
    ):
        with open_channel(address, conn) as channel:
            stub = master_pb2_grpc.MasterServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.ListWorkers(master_pb2.ListWorkersRequest(), timeout=5)
            assert raised.value.code() == Code.UNAVAILABLE  # type: ignore[attr-defined]


def test_under_mtls_a_worker_without_a_client_certificate_cannot_register(
    secured: dict[str, Any],
) -> None:
    address = secured["cluster"].master_address
    worker = connection_of("worker", address)
    no_cert = Connection(address, worker.ca_pem, token=worker.token)
    with open_channel(address, no_cert) as channel:
        stub = master_pb2_grpc.MasterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.RegisterWorker(
                master_pb2.RegisterWorkerRequest(address="127.0.0.1:9", pipeline_threads=1),
                timeout=5,
            )
        assert raised.value.code() == Code.UNAVAILABLE  # type: ignore[attr-defined]
    # The same worker with its certificate registers.
    with open_channel(address, worker) as channel:
        stub = master_pb2_grpc.MasterServiceStub(channel)
        wid = stub.RegisterWorker(
            master_pb2.RegisterWorkerRequest(address="127.0.0.1:9", pipeline_threads=1)
        ).worker_id
        stub.UnregisterWorker(master_pb2.UnregisterWorkerRequest(worker_id=wid))


def test_journal_keeps_storage_options_encrypted(small_table: str, tmp_path: Path) -> None:
    with LocalCluster(
        workers=0, journal=True, allow_table=str(Path(small_table).parent), work_dir=str(tmp_path)
    ) as cluster:
        user = Calls(cluster, "trainer")
        spec = spec_of(small_table, storage_options={"secret": SECRET})
        sid = user.master.CreateSession(
            master_pb2.CreateSessionRequest(spec=spec.to_proto())
        ).session_id
        user.close()
        assert cluster.journal_dir is not None
        journal = (cluster.journal_dir / "journal.jsonl").read_text()
        assert SECRET not in journal and sid in journal
        import base64

        spec_b64 = json.loads(journal.splitlines()[0])["spec_bytes"]
        assert SECRET.encode() not in base64.b64decode(spec_b64)
        key = cluster.journal_dir / "journal.key"
        assert key.stat().st_mode & 0o777 == 0o600
        cluster.restart_master()  # the sealed value is opened again on replay
        worker = Calls(cluster, "worker")
        response = worker.master.GetSession(master_pb2.GetSessionRequest(session_id=sid))
        worker.close()
        assert response.spec.storage_options["secret"] == SECRET


def test_credential_files_are_private(secured: dict[str, Any]) -> None:
    for path in _creds().iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    connection = secured["cluster"].connection_file
    assert connection.stat().st_mode & 0o777 == 0o600


def test_dpp_up_is_secured_with_no_extra_step(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from dpp_proto.auth import CONNECTION_ENV

    env = {k: v for k, v in os.environ.items() if k not in (CREDENTIALS_ENV, CONNECTION_ENV)}
    ready, state = tmp_path / "ready.json", tmp_path / "state"
    up = subprocess.Popen(
        [sys.executable, "-m", "dpp_server", "up", "--workers", "1", "--threads", "1",
         "--state-dir", str(state), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            assert time.monotonic() < deadline, "dpp up was not ready in 90s"
            time.sleep(0.1)
        announced = json.loads(ready.read_text())
        master, connection = announced["master"], Path(announced["connection"])
        assert master.startswith("127.0.0.1:") and connection.parent == state
        assert connection.stat().st_mode & 0o777 == 0o600
        for secret in (state / "secrets").iterdir():
            assert secret.stat().st_mode & 0o077 == 0, secret
        top = subprocess.run(
            [sys.executable, "-m", "dpp_server", "top", "--json", "--connection", str(connection)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert top.returncode == 0, top.stderr
        status = json.loads(top.stdout)
        assert status["insecure"] is False and "verdict" in status
        with open_channel(master, None) as plaintext:  # no credentials: no answer
            with pytest.raises(grpc.RpcError) as raised:
                master_pb2_grpc.MasterServiceStub(plaintext).ListWorkers(
                    master_pb2.ListWorkersRequest(), timeout=5
                )
            assert raised.value.code() == Code.UNAVAILABLE  # type: ignore[attr-defined]
        up.send_signal(signal.SIGINT)
        up.wait(30)
        out = up.stdout.read() if up.stdout else ""
        assert f"export DPP_CONNECTION={connection}" in out
    finally:
        if up.poll() is None:
            up.kill()


def test_insecure_is_loud(small_table: str) -> None:
    with LocalCluster(workers=1, pipeline_threads=1, secure=False) as cluster:
        assert cluster.connection_file is None
        logs = cluster.master.log_tail() + cluster.workers[0].log_tail()  # type: ignore[union-attr]
        assert logs.count("INSECURE") == 2
        from rich.console import Console

        from dpp_server.top import render

        console = Console(record=True, width=200)
        calls = master_pb2_grpc.MonitorServiceStub(open_channel(cluster.master_address, None))
        console.print(
            render(calls.GetClusterStatus(master_pb2.GetClusterStatusRequest()), "", True)
        )
        assert "INSECURE" in console.export_text()
