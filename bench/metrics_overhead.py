"""What metrics cost: dpp throughput with metrics on beside off, in one run.

"on": every process serves /metrics (workers observe every stage call into histograms, the
master times every AcquireSplit and stores every rank's figures), and a scraper fetches every
/metrics once a second (4x Prometheus' usual 15 s pace is the worst case here). "off": the
same cluster with ``--metrics-port -1`` (no hook in the pipeline, no HTTP server). Repeats
alternate on and off on fresh clusters so that drift hits both; reported: median rows/s of
each and the overhead. The target is under 2%.

    python -m bench.metrics_overhead --rows 1000000 --workers 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.e2e import dlrm_spec, ensure_table
from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_server.local_cluster import LocalCluster
from dpp_server.metrics import WorkerMetrics


def simple_spec(table: str, batch_size: int = 4096) -> SessionSpec:
    """Light transforms (more of the time goes to framing and streaming, where per-call
    metrics weigh most)."""
    return SessionSpec(
        table_uri=table,
        features=tuple(
            Feature(f"d{i}", "dense", source=f"dense_{i}", ops=(Op("log1p"),)) for i in range(13)
        )
        + tuple(Feature(f"s{i}", "sparse", source=f"sparse_{i}") for i in range(26)),
        label="label",
        batch_size=batch_size,
        epochs=1,
    )


class Scraper:
    """Fetches every /metrics address once per ``interval_s`` in a daemon thread."""

    def __init__(self, addresses: list[str], interval_s: float) -> None:
        self.addresses = addresses
        self.interval_s = interval_s
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            for address in self.addresses:
                with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
                    r.read()
                self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def hook_cost_s(calls: int = 200_000) -> float:
    """Seconds per call of the worker's statistics hook (a stage histogram observation and a
    counter add, averaged), measured in this process: a CPU bound that noise cannot blur."""
    metrics = WorkerMetrics(CollectorRegistry())
    started = time.perf_counter()
    for _ in range(calls // 2):
        metrics.observe("transform_s", 0.001)
        metrics.observe("rows_out", 4096)
    return (time.perf_counter() - started) / calls


def hook_calls_and_busy_s(address: str) -> tuple[float, float]:
    """From a worker's /metrics: hook calls made (stage observations, plus the counter adds:
    2 per read chunk, 3 per batch, 2 per split) and its pipeline's busy seconds."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("dpp_worker_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    stage_calls = sum(
        v for k, v in values.items() if k.startswith("dpp_worker_stage_seconds_count")
    )
    busy = sum(
        values.get(f'dpp_worker_stage_seconds_sum{{stage="{s}"}}', 0.0)
        for s in ("read", "filter", "transform", "batch", "serialize")
    )
    chunks = values.get('dpp_worker_stage_seconds_count{stage="read"}', 0.0)
    calls = (
        stage_calls
        + 2 * chunks
        + 3 * values.get("dpp_worker_batches_out_total", 0.0)
        + 2 * values.get("dpp_worker_splits_done_total", 0.0)
    )
    return calls, busy


HOOK_TOTALS = [0.0, 0.0]  # hook calls, worker busy seconds (metrics-on runs)


def run_once(table_spec: SessionSpec, workers: int, threads: int, metrics: bool) -> float:
    port = "0" if metrics else "-1"
    with LocalCluster(
        workers=workers,
        pipeline_threads=threads,
        master_args=["--metrics-port", port],
        worker_args=["--metrics-port", port],
    ) as cluster:
        assert cluster.master is not None
        addresses = [p.metrics_address for p in [cluster.master, *cluster.workers]]
        scraper = Scraper([a for a in addresses if a], 1.0)
        with scraper, DppLoader(cluster.master_address, table_spec) as loader:
            started = time.perf_counter()
            rows = sum(batch.num_rows for batch in loader)
            elapsed = time.perf_counter() - started
        if metrics:
            for worker in cluster.workers:
                calls, busy = hook_calls_and_busy_s(worker.metrics_address)
                HOOK_TOTALS[0] += calls
                HOOK_TOTALS[1] += busy
        if metrics and scraper.scrapes == 0 and elapsed > 2:
            raise RuntimeError("metrics on, but nothing was scraped")
    return rows / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="pipeline threads per worker")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ops", choices=["dlrm", "simple"], default="dlrm")
    parser.add_argument("--dir", default="/tmp/dpp-bench")
    parser.add_argument("--out", default="", help="also write the figures as JSON here")
    args = parser.parse_args()

    table = ensure_table(Path(args.dir), args.rows)
    spec = dlrm_spec(table) if args.ops == "dlrm" else simple_spec(table)
    run_once(spec, args.workers, args.threads, True)  # warm-up: page cache, imports
    on: list[float] = []
    off: list[float] = []
    for i in range(args.repeats):
        # Alternate the order so neither side always runs first.
        for metrics in (True, False) if i % 2 == 0 else (False, True):
            rate = run_once(spec, args.workers, args.threads, metrics)
            (on if metrics else off).append(rate)
            print(f"repeat {i} metrics {'on ' if metrics else 'off'}: {rate:,.0f} rows/s")
    on_median, off_median = statistics.median(on), statistics.median(off)
    overhead = 1.0 - on_median / off_median
    cost = hook_cost_s()
    hook_share = HOOK_TOTALS[0] * cost / HOOK_TOTALS[1] if HOOK_TOTALS[1] else 0.0
    result = {
        "rows": args.rows,
        "workers": args.workers,
        "threads": args.threads,
        "ops": args.ops,
        "repeats": args.repeats,
        "rows_per_s_on": on,
        "rows_per_s_off": off,
        "median_on": on_median,
        "median_off": off_median,
        "overhead": overhead,
        "hook_cost_s": cost,
        "hook_calls": HOOK_TOTALS[0],
        "worker_busy_s": HOOK_TOTALS[1],
        "hook_share_of_worker_cpu": hook_share,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    }
    print(
        f"metrics off: {off_median:,.0f} rows/s   on: {on_median:,.0f} rows/s   "
        f"overhead: {100 * overhead:+.2f}% (target < 2%)"
    )
    print(
        f"pipeline hook: {cost * 1e6:.2f} us/call x {HOOK_TOTALS[0]:,.0f} calls = "
        f"{100 * hook_share:.3f}% of the workers' {HOOK_TOTALS[1]:.1f} busy seconds"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
