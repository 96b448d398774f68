"""`dpp scale N` resizes a running `dpp up`; `dpp top --json` and `--once` show the cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpp_proto import master_pb2, master_pb2_grpc
from tests.helpers import secure

pytestmark = pytest.mark.integration


def _dpp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpp_server", *args], capture_output=True, text=True, timeout=60
    )


def _workers(master: str) -> int:
    with secure.channel(master) as channel:
        stub = master_pb2_grpc.MasterServiceStub(channel)
        return len(stub.ListWorkers(master_pb2.ListWorkersRequest(), timeout=5).workers)


def _wait_for(master: str, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while _workers(master) != n:
        assert time.monotonic() < deadline, f"expected {n} workers, have {_workers(master)}"
        time.sleep(0.25)


def test_scale_resizes_a_running_up(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    up = subprocess.Popen(
        [sys.executable, "-m", "dpp_server", "up", "--workers", "1", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert up.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        master = json.loads(ready.read_text())["master"]
        _wait_for(master, 1)

        result = _dpp("scale", "2", "--master", master)
        assert result.returncode == 0, result.stderr
        assert f"worker target of {master}: 2" in result.stdout
        _wait_for(master, 2)

        status = json.loads(_dpp("top", "--json", "--master", master).stdout)
        assert status["operator_target"] == 2
        assert status["desired_workers"] >= 1
        once = _dpp("top", "--once", "--master", master)
        assert once.returncode == 0 and "verdict" in once.stdout, once.stderr

        # Cleared: back to the count `dpp up` started with, the extra worker drained away.
        assert _dpp("scale", "auto", "--master", master).returncode == 0
        _wait_for(master, 1)

        bad = _dpp("scale", "0", "--master", master)
        assert bad.returncode != 0 and "must be >= 1 (or 'auto')" in bad.stderr
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)


def test_top_json_shows_split_failures_and_the_last_error_per_session(
    tmp_path: Path, small_table: str
) -> None:
    """A file rewritten after planning fails its split on the worker: the trainer gets a
    WorkerDataError, and `dpp top --json` counts the failure under the session, with its
    error, so an operator sees it without the trainer's log."""
    import shutil

    from dpp_client import DppLoader, Feature, WorkerDataError
    from dpp_server.local_cluster import LocalCluster

    table = tmp_path / "table"
    shutil.copytree(small_table, table)
    victim = sorted(table.rglob("*.parquet"))[0]
    spec = {
        "table_uri": str(table),
        "features": [Feature("d0", "dense", source="dense_0")],
        "batch_size": 500,
        "deterministic": True,  # the rewritten file's split comes first: fail fast
    }
    with LocalCluster(
        workers=1, pipeline_threads=1, master_args=["--monitor-interval-s", "0.2"]
    ) as cluster:
        other = DppLoader(cluster.master_address, spec)  # a healthy session, for contrast
        len(other)  # creates (plans) the session
        with DppLoader(cluster.master_address, spec) as loader:
            len(loader)
            victim.write_bytes(victim.read_bytes() + b"appended")  # its size changes
            with pytest.raises(WorkerDataError, match="was rewritten"):
                for _ in loader:
                    pass
            session_id = loader.session_id
        deadline = time.monotonic() + 30
        while True:
            status = json.loads(_dpp("top", "--json", "--master", cluster.master_address).stdout)
            by_session = {f["session_id"]: f for f in status.get("session_failures", [])}
            if session_id in by_session and other.session_id in by_session:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        other.close()
    failed = by_session[session_id]
    assert int(failed["splits_failed"]) == 1
    assert victim.name in failed["last_error"] and "was rewritten" in failed["last_error"]
    healthy = by_session[other.session_id]
    assert (int(healthy["splits_failed"]), healthy["last_error"]) == (0, "")
