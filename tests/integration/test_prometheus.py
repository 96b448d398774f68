"""A real Prometheus server (the Debian package, a plain process on 127.0.0.1) scrapes a live
local cluster; its PromQL rows/s must agree with the trainer's own count within 10%."""

from __future__ import annotations

import bisect
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_server.local_cluster import LocalCluster
from storage import GenConfig, generate_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRAPE_S = 1
ROWS_PER_S = 10_000
BATCH = 3_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class Prometheus:
    def __init__(self, work: Path, targets: dict[str, list[str]]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run `make test` (it installs it)")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in targets.items()
            ],
        }
        (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = work / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        body = _get(f"{self.url}/api/v1/query?{params}")
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str, at: float) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def big_table(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("prom") / "table")
    generate_table(
        uri,
        GenConfig(
            rows=260_000, days=2, dense=4, sparse=4, row_group_rows=5_000, rows_per_file=26_000
        ),
    )
    return uri


@pytest.fixture
def observed(tmp_path: Path) -> Iterator[tuple[LocalCluster, Prometheus]]:
    with LocalCluster(
        workers=2,
        pipeline_threads=1,
        master_args=["--monitor-interval-s", "1", "--heartbeat-interval-s", "0.25"],
        worker_args=["--buffer-mb", "1"],
    ) as cluster:
        assert cluster.master is not None and cluster.master.metrics_address
        prometheus = Prometheus(
            tmp_path,
            {
                "dpp-master": [cluster.master.metrics_address],
                "dpp-worker": [w.metrics_address for w in cluster.workers],
            },
        )
        try:
            yield cluster, prometheus
        finally:
            prometheus.stop()


def _rows_at(times: list[float], rows: list[int], t: float) -> float:
    """The trainer's cumulative row count at wall time t (linear between batches)."""
    i = bisect.bisect_right(times, t)
    if i == 0:
        return 0.0
    if i == len(times):
        return float(rows[-1])
    t0, t1, r0, r1 = times[i - 1], times[i], rows[i - 1], rows[i]
    return r0 + (r1 - r0) * (t - t0) / (t1 - t0)


def test_promql_rows_rate_agrees_with_the_trainer(
    big_table: str, observed: tuple[LocalCluster, Prometheus]
) -> None:
    cluster, prometheus = observed
    spec = SessionSpec(
        table_uri=big_table,
        # Wide batches (about 1 MB each), so the buffers between the workers and the trainer
        # hold only a few seconds of the run.
        features=tuple(
            Feature(f"d{i}", "dense", source=f"dense_{i}", ops=(Op("log1p"),)) for i in range(4)
        )
        + tuple(Feature(f"s{i}", "sparse", source=f"sparse_{i}") for i in range(4)),
        label="label",
        batch_size=BATCH,
        epochs=1,
    )
    times: list[float] = []
    rows: list[int] = []
    total = 0
    # A trainer that takes ROWS_PER_S: buffers fill, and the workers produce at its pace.
    with DppLoader(cluster.master_address, spec, prefetch_batches=2) as loader:
        start = time.time()
        for i, batch in enumerate(loader):
            total += batch.num_rows
            times.append(time.time())
            rows.append(total)
            pause = start + (i + 1) * BATCH / ROWS_PER_S - time.time()
            if pause > 0:
                time.sleep(pause)
        stats = loader.stats
    assert total == 260_000
    run_s = times[-1] - start
    assert run_s > 22, run_s

    # A steady window: well after the buffers filled (a loaded machine fills them slowly),
    # before the workers ran out of splits; long, so a batch of lead or lag weighs little.
    window_s = 12
    at = start + 8 + window_s
    time.sleep(max(0.0, at + 2 * SCRAPE_S - time.time()))
    client_rate = (_rows_at(times, rows, at) - _rows_at(times, rows, at - window_s)) / window_s
    # The trainer's rows/s as the master exports it (the loader reports its figures with every
    # acknowledgement), scraped by Prometheus: the whole path from the trainer to PromQL.
    promql = f'sum(rate(dpp_rank_rows_total{{job="dpp-master"}}[{window_s}s]))'
    server_rate = prometheus.scalar(promql, at)
    assert server_rate == pytest.approx(client_rate, rel=0.10), (server_rate, client_rate)
    # The workers' side: they run ahead of a paced trainer by whatever their buffers and the
    # streams' flow-control windows hold, so their rate in a window can differ; over the run
    # they produced exactly the rows the trainer received.
    time.sleep(2 * SCRAPE_S)
    produced = prometheus.scalar("sum(dpp_worker_rows_out_total)", time.time())
    assert produced == 260_000

    # One scrape of the master shows the trainer's side, as its loader reported it.
    time.sleep(2 * SCRAPE_S)
    now = time.time()
    ranks = prometheus.query('dpp_rank_rows_total{job="dpp-master"}', now)
    assert [r["metric"]["rank"] for r in ranks] == ["0"]
    assert float(ranks[0]["value"][1]) >= 0.9 * stats.rows
    ups = prometheus.query("up", now)
    assert len(ups) == 3 and all(u["value"][1] == "1" for u in ups), ups
    assert prometheus.scalar("max(dpp_desired_workers)", now) >= 1
    assert prometheus.scalar("max(dpp_master_workers_alive)", now) == 2
    assert prometheus.scalar('count(dpp_worker_stage_seconds_count{stage="read"} > 0)', now) >= 1
