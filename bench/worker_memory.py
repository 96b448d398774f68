"""Worker memory: peak RSS of one worker streaming a table far larger than its budget.

    python -m bench.worker_memory [--rows 4400000] [--budgets 0,256,512,1024] [--rounds 2]

The budget is what the whole worker process may hold resident (``VmHWM``: interpreter,
libraries, gRPC, every pipeline thread's chunks and the frame buffers), not only the frame
buffer. Each budget runs one worker with ``--memory-mb BUDGET``, which sizes its buffers and
reads (:mod:`dpp_server.budget`); budget 0 is the worker without a budget (``--buffer-mb``,
``--read-batch-rows`` as given), the reference for throughput. The trainer sleeps
``--consumer-sleep-ms`` per batch, about the worker's pace on 2 cores, so frames queue up in
the worker rather than being taken as soon as they are made. Reported: the table's size on
disk and decoded (what the job's projection holds in memory), the worker's RSS when idle, its
peak (``VmHWM``), median and 99th percentile (sampled every 50 ms), the anonymous and file
(library code) parts at the peak, the worker's CPU per 1M rows, and whether the peak stayed
under the budget; with ``--rounds`` the budgets run interleaved and the table shows medians
and each budget's rows/s against no budget's, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.measure import ProcessSampler, peak_rss_mb
from bench.workloads import Workload
from dpp_client import DppLoader
from dpp_server.local_cluster import LocalCluster
from storage import GenConfig


class _RssParts:
    """Samples a process's resident set by kind (``/proc/PID/status``) every 50 ms and keeps
    the sample with the largest ``VmRSS``: how much of the peak is anonymous memory (heaps,
    allocator arenas, buffers) and how much file pages (library code the process touched)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak: dict[str, int] = {}
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                with open(f"/proc/{self._pid}/status") as f:
                    lines = f.read().splitlines()
            except OSError:
                return
            parts = {
                k: int(v.split()[0]) // 1024
                for k, v in (line.split(":", 1) for line in lines)
                if k in ("VmRSS", "RssAnon", "RssFile")
            }
            self.samples.append(parts.get("VmRSS", 0))
            if parts.get("VmRSS", 0) > self.peak.get("VmRSS", 0):
                self.peak = parts

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def _disk_bytes(uri: str) -> int:
    return sum(p.stat().st_size for p in Path(uri).rglob("*.parquet"))


def run(
    table_dir: Path,
    rows: int,
    budget_mb: int,
    buffer_mb: int,
    read_batch_rows: int,
    consumer_sleep_ms: float,
    max_seconds: float,
    memory_mb: int | None = None,
) -> dict[str, Any]:
    """One worker streaming the table; ``memory_mb`` (when given) is passed as ``--memory-mb``
    (0: no budget)."""
    workload = Workload("dlrm", GenConfig(rows=rows, seed=0), read_dense=13, read_sparse=26)
    uri = workload.ensure_table(table_dir)
    spec = workload.spec(uri)
    worker_args = ["--buffer-mb", str(buffer_mb), "--read-batch-rows", str(read_batch_rows)]
    if memory_mb is not None:
        worker_args += ["--memory-mb", str(memory_mb)]
    sampler = ProcessSampler().start()
    with LocalCluster(
        workers=1, pipeline_threads=1, worker_args=worker_args, secure=False
    ) as cluster:
        worker_pid = cluster.workers[0].process.pid
        time.sleep(1.0)
        idle_mb = peak_rss_mb(worker_pid)
        parts = _RssParts(worker_pid)
        sampler.mark()
        started = time.perf_counter()
        delivered = nbytes = 0
        with DppLoader(cluster.master_address, spec, prefetch_batches=4) as loader:
            for batch in loader:
                delivered += batch.num_rows
                nbytes += batch.dense.nbytes + sum(
                    j.values.nbytes + j.offsets.nbytes for j in batch.sparse.values()
                )
                if consumer_sleep_ms:
                    time.sleep(consumer_sleep_ms / 1000)
                if time.perf_counter() - started > max_seconds:
                    break
        seconds = time.perf_counter() - started
        processes = sampler.stop()
        peak_parts = parts.stop()
    worker = next(p for p in processes if p["pid"] == worker_pid)
    peak = float(worker["peak_rss_mb"])  # type: ignore[arg-type]
    decoded_estimate = nbytes / max(delivered, 1) * rows
    return {
        "table_rows": rows,
        "table_disk_mb": round(_disk_bytes(uri) / 1e6),
        "table_decoded_mb_estimate": round(decoded_estimate / 1e6),
        "rows_delivered": delivered,
        "seconds": round(seconds, 1),
        "rows_per_s": round(delivered / seconds) if seconds else 0,
        "memory_mb_flag": memory_mb,
        "budget_mb": budget_mb,
        "buffer_mb": buffer_mb,
        "read_batch_rows": read_batch_rows,
        "pipeline_threads": 1,
        "consumer_sleep_ms": consumer_sleep_ms,
        "worker_idle_rss_mb": round(idle_mb, 1),
        "worker_peak_rss_mb": peak,
        "worker_median_rss_mb": statistics.median(parts.samples) if parts.samples else 0,
        "worker_rss_p99_mb": sorted(parts.samples)[int(0.99 * (len(parts.samples) - 1))]
        if parts.samples
        else 0,
        "worker_peak_rss_anon_mb": peak_parts.get("RssAnon", 0),
        "worker_peak_rss_file_mb": peak_parts.get("RssFile", 0),
        "worker_core_s_per_1m_rows": round(float(worker["cpu_s"]) / max(delivered, 1) * 1e6, 2),  # type: ignore[arg-type]
        "under_budget": peak <= budget_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table-dir", default="/tmp/dpp-bench")
    parser.add_argument("--rows", type=int, default=4_400_000, help="about 2 GB of Parquet")
    parser.add_argument(
        "--budgets", default="0,256,512,1024", help="--memory-mb values (0: no budget, 512 MB goal)"
    )
    parser.add_argument("--buffer-mb", type=int, default=128)
    parser.add_argument("--read-batch-rows", type=int, default=16_384)
    parser.add_argument("--consumer-sleep-ms", type=float, default=20.0)
    parser.add_argument("--max-seconds", type=float, default=240.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="budgets run interleaved this many times (medians)"
    )
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    results: dict[int, list[dict[str, Any]]] = {b: [] for b in budgets}
    for _ in range(args.rounds):
        for budget in budgets:
            result = run(
                Path(args.table_dir),
                args.rows,
                budget or 512,
                args.buffer_mb,
                args.read_batch_rows,
                args.consumer_sleep_ms,
                args.max_seconds,
                memory_mb=budget,
            )
            print(json.dumps(result), flush=True)
            results[budget].append(result)

    def median(budget: int, key: str) -> float:
        return float(statistics.median(r[key] for r in results[budget]))

    reference = median(0, "rows_per_s") if 0 in results else 0.0
    print("memory_mb  peak_rss_mb(max)  median_rss_mb  rows/s(median)  vs_no_budget  core_s/1M")
    for budget in budgets:
        peak = max(r["worker_peak_rss_mb"] for r in results[budget])
        rate = median(budget, "rows_per_s")
        ratio = f"{rate / reference:.2f}" if reference else "-"
        print(
            f"{budget:>9}  {peak:>16.0f}  {median(budget, 'worker_median_rss_mb'):>13.0f}  "
            f"{rate:>14.0f}  {ratio:>12}  {median(budget, 'worker_core_s_per_1m_rows'):>9.2f}"
        )


if __name__ == "__main__":
    main()
