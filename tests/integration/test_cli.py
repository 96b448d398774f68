"""The ``dpp`` command as an operator runs it: gen, cluster, up (Ctrl-C stops everything)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

pytestmark = pytest.mark.integration


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_gen_writes_a_partitioned_table(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpp_server",
            "gen",
            uri,
            "--rows",
            "5000",
            "--days",
            "2",
            "--dense",
            "2",
            "--sparse",
            "3",
            "--seed",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 5000 rows" in result.stdout
    table = ds.dataset(uri, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 5000
    assert sorted(set(table.column("ds").to_pylist())) == ["2026-01-01", "2026-01-02"]
    assert {"row_id", "user_id", "session_id", "label", "dense_1", "sparse_2"} <= set(
        table.column_names
    )


def test_gen_interleaved_then_cluster_by_session(tmp_path: Path) -> None:
    raw, clustered = str(tmp_path / "raw"), str(tmp_path / "clustered")

    def dpp(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "dpp_server", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    dpp(
        "gen", raw, "--rows", "4000", "--days", "1", "--dense", "1", "--sparse", "4",
        "--rows-per-session", "8", "--max-list-len", "6", "--max-user-list-len", "40",
        "--no-cluster", "--quiet",
    )  # fmt: skip
    out = dpp("cluster", raw, clustered, "--by", "session_id")
    assert "clustered 4000 rows" in out
    table = ds.dataset(clustered, format="parquet", partitioning="hive").to_table()
    assert sorted(table.column("row_id").to_pylist()) == list(range(4000))
    sessions = table.column("session_id").to_numpy()
    runs = 1 + int((sessions[1:] != sessions[:-1]).sum())
    assert runs == len(set(sessions.tolist()))  # every session is one run of rows
    user_lengths = [len(v) for v in table.column("sparse_0").to_pylist()]
    item_lengths = [len(v) for v in table.column("sparse_3").to_pylist()]
    assert max(user_lengths) > 6 >= max(item_lengths)


def test_up_prints_its_address_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    up = subprocess.Popen(
        [sys.executable, "-m", "dpp_server", "up", "--workers", "2", "--ready-file", str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            assert time.monotonic() < deadline, "dpp up was not ready in 60s"
            time.sleep(0.1)
        master = json.loads(ready.read_text())["master"]
        assert master.startswith("127.0.0.1:")
        children = _children_of(up.pid)
        assert len(children) == 3  # one master, two workers
        up.send_signal(signal.SIGINT)
        up.wait(30)
        out = up.stdout.read() if up.stdout else ""
        assert f"master at {master}" in out
        # Every process's /metrics port, printed and in the ready file (issue 18).
        metrics = json.loads(ready.read_text())["metrics"].split(",")
        assert len(metrics) == 3 and all(m.startswith("127.0.0.1:") for m in metrics)
        for address in metrics:
            assert f"http://{address}/metrics" in out
        assert up.returncode == 0
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in children if _alive(p)]
    finally:
        if up.poll() is None:
            up.kill()
