"""``dpp stats`` on a live cluster: the report does not depend on the workers, nor on a worker
SIGKILLed mid-session (its splits are sketched again and count once).

Equality (docs/stats.md, "Determinism"): every exact field (rows, accesses, coverage, pooling
factors, null shares, min, max, mean) and every theta and frequent-items figure (distinct ids,
heavy hitters, access CDF, collisions, drift) is *equal*: payloads are merged in split-id order
and a split's payload does not depend on who produced it. Dense quantiles come from KLL, whose
compaction coin flips the library seeds from the OS: they are checked against the exact values
(every reported quantile's true rank lies within the report's ``kll_rank_error`` of the rank
asked), not for equality.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest

from dpp_proto import master_pb2, master_pb2_grpc, spec_pb2
from dpp_proto.auth import load_connection, open_channel
from dpp_server.local_cluster import LocalCluster
from dpp_server.spec import spec_from_proto
from dpp_server.stats_command import spec_from_file
from dpp_server.transforms import FeaturePipeline
from storage import GenConfig, generate_table

pytestmark = pytest.mark.integration

SPEC = """\
table_uri: {uri}
target_split_rows: 3000
batch_size: 1024
features:
  - {{name: d0, kind: dense, source: dense_0, ops: [{{op: clamp, min: 0.0}}, {{op: log1p}}]}}
  - {{name: d1, kind: dense, source: dense_1}}
  - {{name: s0, kind: sparse, source: sparse_0, ops: [{{op: first_x, x: 20}},
      {{op: sigrid_hash, salt: 0, max_value: 5000}}]}}
  - {{name: s1, kind: sparse, source: sparse_1, ops: [
      {{op: sigrid_hash, salt: 1, max_value: 100000}}]}}
  - {{name: s2, kind: sparse, source: sparse_2}}
"""
#: Dense fields whose values come from KLL (checked against exact ranks instead of equality).
_KLL_FIELDS = {"quantiles", "p50"}


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stats-live")
    uri = str(root / "table")
    config = GenConfig(
        rows=120_000, days=2, dense=3, sparse=4, seed=7, row_group_rows=3000, rows_per_file=30_000
    )
    generate_table(uri, config, {}, progress=False)
    path = root / "spec.yaml"
    path.write_text(SPEC.format(uri=uri))
    return path


def _stats_spec(spec_file: Path) -> spec_pb2.SessionSpec:
    msg = spec_from_file(str(spec_file))
    msg.stats.collisions = True
    return msg


def _stub(cluster: LocalCluster) -> master_pb2_grpc.MasterServiceStub:

    channel = open_channel(cluster.master_address, load_connection())
    return master_pb2_grpc.MasterServiceStub(channel)


def _create(stub: master_pb2_grpc.MasterServiceStub, msg: spec_pb2.SessionSpec) -> str:
    created = stub.CreateSession(master_pb2.CreateSessionRequest(spec=msg), timeout=60)
    assert created.plan.num_splits == 40
    return str(created.session_id)


def _wait(stub: master_pb2_grpc.MasterServiceStub, session_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    request = master_pb2.GetStatsReportRequest(session_id=session_id, top_k=20)
    while time.monotonic() < deadline:
        result = stub.GetStatsReport(request, timeout=60)
        assert list(result.errors) == []
        if result.complete:
            report: dict[str, Any] = json.loads(result.report_json)
            return report
        time.sleep(0.1)
    raise AssertionError(f"stats session {session_id} did not finish in 120 s")


def _without_kll(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_kll(v) for k, v in value.items() if k not in _KLL_FIELDS}
    return value


def _exact_values(spec_file: Path) -> dict[str, np.ndarray]:
    """Each dense feature's values after its ops, over the whole table (NaN for null)."""
    spec = spec_from_proto(spec_from_file(str(spec_file)))
    table = pads.dataset(spec.table_uri, format="parquet", partitioning="hive").to_table(
        columns=list(spec.input_columns)
    )
    columns = FeaturePipeline(spec).feature_columns(table)
    return {
        name: np.asarray(columns.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
        for name in ("d0", "d1")
    }


def _check_report(report: dict[str, Any], exact: dict[str, np.ndarray]) -> None:
    """Exact fields against the table; quantiles within the report's KLL rank error."""
    assert report["splits"] == 40
    rank_error = report["sketches"]["kll_rank_error"]
    for name, values in exact.items():
        dense = report["dense"][name]
        assert dense["rows"] == len(values) == 120_000
        nulls = int(np.isnan(values).sum())
        assert nulls > 0  # the fixture's dense columns hold nulls: the share is measured
        assert dense["null_share"] == pytest.approx(nulls / len(values), abs=0)
        finite = np.sort(values[~np.isnan(values)])
        assert dense["min"] == pytest.approx(finite[0], rel=1e-6)
        assert dense["max"] == pytest.approx(finite[-1], rel=1e-6)
        assert dense["mean"] == pytest.approx(finite.astype(np.float32).astype(np.float64).mean())
        for q, value in dense["quantiles"].items():
            rank = np.searchsorted(finite, value, side="right") / len(finite)
            assert abs(rank - float(q)) <= rank_error + 1e-9, (name, q, value, rank)
    s0 = report["sparse"]["s0"]
    assert s0["rows"] == 120_000 and s0["hash_rows"] == 5000
    assert s0["collisions"]["measured_share"] > 0


def _same_report(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert _without_kll(a) == _without_kll(b)


def test_one_and_three_workers_give_the_same_report(spec_file: Path) -> None:
    exact = _exact_values(spec_file)
    with LocalCluster(workers=1, pipeline_threads=2) as cluster:
        stub = _stub(cluster)
        one = _wait(stub, _create(stub, _stats_spec(spec_file)))
        cluster.add_worker()
        cluster.add_worker()
        three = _wait(stub, _create(stub, _stats_spec(spec_file)))
    _check_report(one, exact)
    _check_report(three, exact)
    _same_report(one, three)


def _leased(stub: master_pb2_grpc.MasterServiceStub, session_id: str) -> int:
    response = stub.GetSession(master_pb2.GetSessionRequest(session_id=session_id), timeout=10)
    return int(response.progress[0].splits_leased)


def test_a_worker_killed_mid_session_changes_nothing(spec_file: Path) -> None:
    """Worker 1 is paused before the session, so worker 0 alone takes splits; once it has
    sketched some, it is paused too, and SIGKILLed only when it holds a lease (it always does
    but for the instant between two leases). Worker 1 resumes and takes over."""
    exact = _exact_values(spec_file)
    with LocalCluster(
        workers=2,
        pipeline_threads=1,
        master_args=["--lease-timeout-s", "2", "--heartbeat-interval-s", "0.25"],
    ) as cluster:
        stub = _stub(cluster)
        reference = _wait(stub, _create(stub, _stats_spec(spec_file)))

        victim, other = cluster.workers[0].process, cluster.workers[1].process
        other.send_signal(signal.SIGSTOP)
        session_id = _create(stub, _stats_spec(spec_file))
        request = master_pb2.GetStatsReportRequest(session_id=session_id)
        while True:
            done = stub.GetStatsReport(request, timeout=10).splits_done
            if done >= 3:
                victim.send_signal(signal.SIGSTOP)
                if _leased(stub, session_id) >= 1:
                    break
                victim.send_signal(signal.SIGCONT)  # between two leases: try again
            time.sleep(0.005)
        done_at_kill = stub.GetStatsReport(request, timeout=10).splits_done
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        other.send_signal(signal.SIGCONT)
        disturbed = _wait(stub, session_id)
        master_log = cluster.master.log_tail(400) if cluster.master else ""
        victim_id = re.search(r"worker (w-[0-9a-f]+) serving", cluster.workers[0].log_tail(400))

    assert 3 <= done_at_kill < 40
    # The victim's lease was released when it stopped heartbeating; its split was sketched again.
    assert victim_id is not None
    released = re.search(rf"worker {victim_id.group(1)} missed .*dropped, (\d+) split", master_log)
    assert released is not None and int(released.group(1)) >= 1, master_log[-2000:]
    _check_report(reference, exact)
    _check_report(disturbed, exact)
    _same_report(reference, disturbed)


def test_dpp_stats_and_shard_plan_commands(spec_file: Path, tmp_path: Path) -> None:
    """The commands as a user runs them: a local cluster started and stopped by dpp stats."""
    out = tmp_path / "stats.json"
    command = [sys.executable, "-m", "dpp_server", "stats", str(spec_file), "--out", str(out)]
    command += ["--suggest-boundaries", "4", "--workers", "1", "--collisions", "-q"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "d0: {op: bucketize, boundaries: [" in done.stdout
    report = json.loads(out.read_text())
    assert report["session"]["collisions"] is True
    _check_report(report, _exact_values(spec_file))

    plan = tmp_path / "plan.json"
    args = ["--gpus", "2", "--hbm-gb", "0.0002", "--dim", "16", "--out", str(plan)]
    done = subprocess.run(
        [sys.executable, "-m", "dpp_server", "shard-plan", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratios baseline/plan" in done.stdout
    assert set(json.loads(plan.read_text())["torchrec"]["constraints"]) == {"s0", "s1", "s2"}

    tiny = ["--gpus", "1", "--hbm-gb", "0.00001", "--uvm-gb", "0.00001", "--dim", "16"]
    done = subprocess.run(
        [sys.executable, "-m", "dpp_server", "shard-plan", str(out), *tiny],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "dpp shard-plan:" in done.stderr and "GB" in done.stderr


def test_a_bad_stats_input_is_refused_with_the_field(spec_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec_file.read_text().replace("source: sparse_2", "source: no_such_column"))
    command = [sys.executable, "-m", "dpp_server", "stats", str(bad), "--out", "x.json", "-q"]
    done = subprocess.run(
        [*command, "--workers", "1"], capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert done.returncode == 2
    assert "features[4].source" in done.stderr and "no_such_column" in done.stderr
    assert not (tmp_path / "x.json").exists()
