"""No job can hurt another (issue 12), against a real master and workers on 127.0.0.1.

A crashed trainer's session lets go of the worker within ``consumer_timeout_s``; idle streams
cannot take every worker thread; the master refuses what it cannot journal, and the loader
gives up on an unreachable master after ``master_timeout_s`` instead of hanging.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_client.errors import DppUnavailableError
from dpp_proto import master_pb2, master_pb2_grpc, spec_pb2, worker_pb2
from dpp_proto.auth import load_connection, open_channel
from dpp_server.local_cluster import CREDENTIALS_ENV, LocalCluster
from storage import GenConfig, generate_table
from tests.helpers.server import make_spec

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


WIDE = GenConfig(
    rows=30_000,
    days=1,
    dense=1,
    sparse=16,
    max_list_len=48,
    row_group_rows=1_000,
    rows_per_file=10_000,
    seed=3,
)


@pytest.fixture(scope="module")
def wide_table(tmp_path_factory: pytest.TempPathFactory) -> str:
    """About 60 MB of frames: more than gRPC's windows and a client's queue hold, so a
    trainer that stops reading leaves its frames in the worker's buffer."""
    uri = str(tmp_path_factory.mktemp("tables") / "wide")
    generate_table(uri, WIDE)
    return uri


def spec(table: str, **overrides: object) -> SessionSpec:
    fields: dict[str, object] = {
        "table_uri": table,
        "features": (Feature("d0", "dense", "dense_0", (Op("fill_null", {"value": 0.0}),)),),
        "passthrough": ("row_id",),
        "batch_size": 100,
        "epochs": 1,
    }
    fields.update(overrides)
    return SessionSpec(**fields)  # type: ignore[arg-type]


def row_ids_of_one_epoch(loader: DppLoader) -> list[int]:
    rows: list[int] = []
    for batch in loader:
        rows.extend(batch.extras["row_id"].tolist())
    return rows


def metric(address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported at {address}")


def test_a_crashed_trainer_lets_a_new_session_through_and_frees_the_buffer(
    small_table: str, wide_table: str
) -> None:
    # One worker, a 1 MiB buffer: the stalled trainer's frames fill it and both pipeline
    # threads wait on it, as in the report (a 39-feature trainer SIGKILLed mid-epoch).
    with LocalCluster(
        workers=1,
        pipeline_threads=2,
        master_args=["--rank-timeout-s", "4", "--heartbeat-interval-s", "0.25"],
        worker_args=["--buffer-mb", "1", "--consumer-timeout-s", "3"],
    ) as cluster:
        worker = cluster.workers[0]
        trainer = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "stalled_trainer.py"),
                cluster.master_address,
                wide_table,
                "2",
                str(WIDE.sparse),
            ],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            assert trainer.stdout is not None
            assert trainer.stdout.readline().strip() == b"stalled"
            deadline = time.monotonic() + 30
            while metric(worker.metrics_address, "dpp_worker_buffer_occupancy_ratio") < 0.5:
                assert time.monotonic() < deadline, "the stalled session never filled the buffer"
                time.sleep(0.1)
        finally:
            trainer.send_signal(signal.SIGKILL)
            trainer.wait()
        killed = time.monotonic()
        with DppLoader(cluster.master_address, spec(small_table)) as loader:
            batches = iter(loader)
            first = next(batches)
            first_s = time.monotonic() - killed
            rows = first.extras["row_id"].tolist()
            for batch in batches:
                rows.extend(batch.extras["row_id"].tolist())
        # Exactly once for the new session, which waited at most the consumer timeout (3 s)
        # plus the sweep and a lease round (generous bound: CI machines are slow).
        assert sorted(rows) == list(range(24_000))
        assert first_s < 3 + 20, f"first batch after {first_s:.1f}s"
        log = worker.log_tail(400)
        assert "no client took a frame for 3s (consumer_timeout_s)" in log
        # Nothing of either session is buffered any more: the worker's memory is back.
        deadline = time.monotonic() + 15
        while metric(worker.metrics_address, "dpp_worker_buffered_bytes") > 0:
            assert time.monotonic() < deadline, "frames of a dead session stayed buffered"
            time.sleep(0.2)


def test_idle_streams_cannot_take_every_worker_thread(small_table: str) -> None:
    with LocalCluster(
        workers=1,
        pipeline_threads=2,
        master_args=["--heartbeat-interval-s", "0.25"],
        worker_args=["--max-streams", "64"],
    ) as cluster:
        connection = load_connection()
        with open_channel(cluster.master_address, connection) as master_channel:
            created = master_pb2_grpc.MasterServiceStub(master_channel).CreateSession(
                master_pb2.CreateSessionRequest(spec=make_spec(small_table), session_name="idle"),
                timeout=60,
            )
        # Streams of a real session (a secured worker refuses unknown ones before they take a
        # thread), each on its own rank, that nobody reads.
        session = created.session_id
        served = f"client streaming session {session}"
        address = cluster.workers[0].address
        channel = open_channel(address, connection)
        stream = channel.unary_stream(
            "/dpp.v1.WorkerService/StreamBatches",
            request_serializer=worker_pb2.StreamBatchesRequest.SerializeToString,
            response_deserializer=None,
        )
        try:
            idle = [
                stream(worker_pb2.StreamBatchesRequest(session_id=session, rank=1000 + i))
                for i in range(64)
            ]
            # Every idle stream is served (each holds a server thread) ...
            deadline = time.monotonic() + 30
            while cluster.workers[0].log_tail(200).count(served) < 64:
                assert time.monotonic() < deadline, "the idle streams were not all served"
                time.sleep(0.1)
            # ... and a live session still streams every row, exactly once.
            with DppLoader(cluster.master_address, spec(small_table)) as loader:
                rows = row_ids_of_one_epoch(loader)
            assert sorted(rows) == list(range(24_000))
            # Past max_streams (plus 8 spare for health checks) a stream is refused at once
            # with RESOURCE_EXHAUSTED, not queued unserved until its deadline.
            idle += [
                stream(worker_pb2.StreamBatchesRequest(session_id=session, rank=1000 + i))
                for i in range(64, 72)
            ]
            while cluster.workers[0].log_tail(400).count(served) < 72:
                assert time.monotonic() < deadline + 30, "the idle streams were not all served"
                time.sleep(0.1)
            extra = [
                stream(
                    worker_pb2.StreamBatchesRequest(session_id=session, rank=2000 + i), timeout=60
                )
                for i in range(16)
            ]
            refused = []
            for call in extra:
                try:
                    next(iter(call))
                except grpc.RpcError as exc:
                    refused.append(exc.code())  # type: ignore[attr-defined]
                    continue
            assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 16
            for call in idle + extra:
                call.cancel()
        finally:
            channel.close()


# -- every input bounded where it enters --------------------------------------------------


def _refusal(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code(), exc.details()  # type: ignore[attr-defined]
    raise AssertionError("the request was accepted")


def test_oversized_inputs_are_refused_at_the_entry_naming_field_and_limit(
    cluster: LocalCluster, small_table: str, tmp_path: Path
) -> None:
    big = 1 << 20
    with open_channel(
        cluster.master_address,
        load_connection(),
        options=[("grpc.max_send_message_length", 64 << 20)],
    ) as channel:
        stub = master_pb2_grpc.MasterServiceStub(channel)

        def create(spec: spec_pb2.SessionSpec, name: str = "") -> object:
            request = master_pb2.CreateSessionRequest(spec=spec, session_name=name)
            return lambda: stub.CreateSession(request, timeout=30)

        # world_size 2,000,000 once held the master's lock for 12.6 s.
        code, text = _refusal(create(make_spec(small_table, world_size=2_000_000)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "world_size: 2,000,000 ranks is over the limit of 16,384" in text
        code, text = _refusal(create(make_spec(small_table), name="n" * 300))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "session_name: 300 characters is over the limit of 256" in text
        # A 60 MB name (once journaled) is over the message limit: gRPC refuses it unread.
        code, _ = _refusal(create(make_spec(small_table), name="n" * (60 << 20)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A 5 MB spec once passed the master and failed every split on the workers.
        code, text = _refusal(create(make_spec(small_table, row_filter="x" * 5 * big)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "over the limit of 1,048,576 (dpp_proto/limits.py)" in text
        assert text.startswith("spec: 5,2")
        many = make_spec(small_table)
        for i in range(4_097):
            many.features.add(name=f"f{i}", source="dense_0", kind=spec_pb2.FEATURE_KIND_DENSE)
        code, text = _refusal(create(many))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "features: 4,098 features is over the limit of 4,096" in text
        # Two 34 MB addresses once made ListWorkers too large for every trainer.
        # Registering is a worker's call: a worker identity of the run's credentials.
        rogue = load_connection(Path(os.environ[CREDENTIALS_ENV]) / "rogue.json")
        worker_channel = open_channel(
            cluster.master_address, rogue, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        worker_stub = master_pb2_grpc.MasterServiceStub(worker_channel)
        for address in ("a" * 1000, "a" * (34 << 20)):
            request = master_pb2.RegisterWorkerRequest(address=address, pipeline_threads=1)
            code, text = _refusal(lambda r=request: worker_stub.RegisterWorker(r, timeout=30))
            if len(address) == 1000:
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                assert "address: 1,000 characters is over the limit of 256" in text
            else:
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        worker_channel.close()
        workers = stub.ListWorkers(master_pb2.ListWorkersRequest(), timeout=30).workers
        assert sorted(w.address for w in workers) == sorted(w.address for w in cluster.workers)

        # A folder with a symlink loop lists its real files only, in bounded time.
        table = tmp_path / "looped"
        shutil.copytree(small_table, table)
        (table / "ds=2026-01-01" / "loop").symlink_to(table)
        (table / "again").symlink_to(table)
        response = stub.CreateSession(
            master_pb2.CreateSessionRequest(spec=make_spec(str(table))), timeout=60
        )
        assert response.plan.num_rows == 24_000
        deep = tmp_path / "deep"
        shutil.copytree(small_table, deep)
        nested = deep.joinpath(*[f"d{i}" for i in range(40)])
        nested.mkdir(parents=True)
        code, text = _refusal(create(make_spec(str(deep))))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "depth: 33 folder levels is over the limit of 32" in text
    # The master served everyone else all along.
    with DppLoader(cluster.master_address, spec(small_table)) as loader:
        assert sorted(row_ids_of_one_epoch(loader)) == list(range(24_000))


# -- no silent hang ---------------------------------------------------------------------------


def _health(address: str) -> int:
    with open_channel(address, load_connection()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status  # type: ignore[no-any-return]


def _wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_an_unwritable_journal_turns_the_master_not_serving_and_the_trainer_raises(
    wide_table: str, small_table: str
) -> None:
    with LocalCluster(
        workers=1,
        pipeline_threads=1,
        master_args=["--lease-timeout-s", "2", "--heartbeat-interval-s", "0.25"],
        worker_args=["--buffer-mb", "1"],
        journal=True,
    ) as cluster:
        assert cluster.master is not None and cluster.journal_dir is not None
        status = health_pb2.HealthCheckResponse
        loader = DppLoader(
            cluster.master_address, spec(wide_table), rpc_timeout_s=2, master_timeout_s=4
        )
        with loader:
            batches = iter(loader)
            next(batches)
            # The journal's disk is full, as far as the master can tell: no write may grow it.
            journal = cluster.journal_dir / "journal.jsonl"
            limit = journal.stat().st_size
            pid = cluster.master.process.pid
            _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))
            started = time.monotonic()
            with pytest.raises(DppUnavailableError, match="master_timeout_s=4"):
                for _ in batches:
                    pass
            raised_s = time.monotonic() - started
        assert raised_s < 4 + 20, f"raised after {raised_s:.1f}s"
        _wait_for(
            lambda: _health(cluster.master_address) == status.NOT_SERVING,
            10,
            "the master stayed SERVING with an unwritable journal",
        )
        with open_channel(cluster.master_address, load_connection()) as channel:
            stub = master_pb2_grpc.MasterServiceStub(channel)
            request = master_pb2.CreateSessionRequest(spec=make_spec(small_table))
            code, text = _refusal(lambda: stub.CreateSession(request, timeout=30))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "cannot write its journal" in text
        # Room again: the master serves by itself, and the journal is whole.
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
        with DppLoader(cluster.master_address, spec(small_table)) as loader:
            assert sorted(row_ids_of_one_epoch(loader)) == list(range(24_000))
        _wait_for(
            lambda: _health(cluster.master_address) == status.SERVING,
            10,
            "the master did not serve again",
        )
        cluster.restart_master()  # replays the journal, every line of it whole
        with DppLoader(cluster.master_address, spec(small_table)) as loader:
            assert sorted(row_ids_of_one_epoch(loader)) == list(range(24_000))


def test_a_trainer_raises_when_the_master_stays_away(wide_table: str) -> None:
    with LocalCluster(
        workers=1,
        pipeline_threads=1,
        master_args=["--heartbeat-interval-s", "0.25"],
        worker_args=["--buffer-mb", "1"],
    ) as cluster:
        with DppLoader(
            cluster.master_address, spec(wide_table), rpc_timeout_s=2, master_timeout_s=3
        ) as loader:
            batches = iter(loader)
            next(batches)
            cluster.kill_master(signal.SIGTERM)  # and no restart
            started = time.monotonic()
            with pytest.raises(DppUnavailableError, match="unreachable for"):
                for _ in batches:
                    pass
            raised_s = time.monotonic() - started
        assert raised_s < 3 + 20, f"raised after {raised_s:.1f}s"


def test_sigusr1_dumps_every_thread_and_the_process_keeps_serving() -> None:
    """``kill -USR1`` is how an operator (and LocalCluster, before killing a process that
    did not stop) sees where a dpp process waits: every thread's stack, in its log."""
    with LocalCluster(workers=0) as cluster:
        assert cluster.master is not None
        cluster.master.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        log = ""
        while time.monotonic() < deadline and "most recent call first" not in log:
            time.sleep(0.1)
            log = cluster.master.log_path.read_text(errors="replace")
        assert "most recent call first" in log, log[-2000:]
        assert "_wait_for_signal" in log  # the main thread, waiting for a stop signal
        assert cluster.master.alive
        channel = open_channel(cluster.master_address, load_connection())
        stub = master_pb2_grpc.MasterServiceStub(channel)
        assert stub.ListWorkers(master_pb2.ListWorkersRequest(), timeout=10).workers == []
        channel.close()
