"""No job can hurt another (issue 12), against a real master and workers on 127.0.0.1.

A crashed trainer's session lets go of the worker within ``consumer_timeout_s``; idle streams
cannot take every worker thread; the master refuses what it cannot journal, and the loader
gives up on an unreachable master after ``master_timeout_s`` instead of hanging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_proto import worker_pb2
from dpp_server.local_cluster import LocalCluster
from storage import GenConfig, generate_table

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


WIDE = GenConfig(
    rows=30_000, days=1, dense=1, sparse=16, max_list_len=48, row_group_rows=1_000,
    rows_per_file=10_000, seed=3,
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
            [sys.executable, str(HERE / "stalled_trainer.py"), cluster.master_address,
             wide_table, "2", str(WIDE.sparse)],
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
        address = cluster.workers[0].address
        channel = grpc.insecure_channel(address)
        stream = channel.unary_stream(
            "/dpp.v1.WorkerService/StreamBatches",
            request_serializer=worker_pb2.StreamBatchesRequest.SerializeToString,
            response_deserializer=None,
        )
        try:
            idle = [
                stream(worker_pb2.StreamBatchesRequest(session_id=f"idle-{i}", rank=0))
                for i in range(64)
            ]
            # Every idle stream is served (each holds a server thread) ...
            deadline = time.monotonic() + 30
            while cluster.workers[0].log_tail(200).count("client streaming session idle-") < 64:
                assert time.monotonic() < deadline, "the idle streams were not all served"
                time.sleep(0.1)
            # ... and a live session still streams every row, exactly once.
            with DppLoader(cluster.master_address, spec(small_table)) as loader:
                rows = row_ids_of_one_epoch(loader)
            assert sorted(rows) == list(range(24_000))
            # Past max_streams (plus 8 spare for health checks) a stream is refused at once
            # with RESOURCE_EXHAUSTED, not queued unserved until its deadline.
            idle += [
                stream(worker_pb2.StreamBatchesRequest(session_id=f"idle-{i}", rank=0))
                for i in range(64, 72)
            ]
            while cluster.workers[0].log_tail(400).count("client streaming session idle-") < 72:
                assert time.monotonic() < deadline + 30, "the idle streams were not all served"
                time.sleep(0.1)
            extra = [
                stream(worker_pb2.StreamBatchesRequest(session_id=f"more-{i}", rank=0),
                       timeout=60)
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
