"""The cost of security: TLS + tokens (the default) beside --insecure, side by side in one run.

The DLRM job (bench/e2e.py's spec: 13 dense, 26 id lists, row filter) read by a trainer from
two local clusters of N workers, one secured and one --insecure, alternating A/B per repeat so
that the noisy machine hits both alike. Reported per mode: median rows/s, and the trainer's
and the workers' CPU seconds per 1M rows, and the ratio secured / insecure.

    python -m bench.security --rows 500000 --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.e2e import dlrm_spec, ensure_table
from bench.measure import cpu_s, self_cpu_s
from dpp_client import DppLoader
from dpp_server.local_cluster import LocalCluster


def read_once(cluster: LocalCluster, table: str) -> dict[str, float]:
    workers = [w.process.pid for w in cluster.workers]
    worker_cpu0 = sum(cpu_s(p) for p in workers)
    trainer_cpu0 = self_cpu_s()
    started = time.perf_counter()
    rows = 0
    with DppLoader(
        cluster.master_address, dlrm_spec(table), connection=cluster.connection_file or None
    ) as loader:
        for batch in loader:
            rows += int(batch.labels.shape[0])
    wall = time.perf_counter() - started
    per_m = 1e6 / rows
    return {
        "rows": rows,
        "rows_per_s": rows / wall,
        "trainer_core_s_per_1m": (self_cpu_s() - trainer_cpu0) * per_m,
        "worker_core_s_per_1m": (sum(cpu_s(p) for p in workers) - worker_cpu0) * per_m,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "dpp-bench"))
    args = parser.parse_args()
    table = ensure_table(Path(args.dir), args.rows)
    clusters = {
        "secured": LocalCluster(args.workers, pipeline_threads=args.threads),
        "insecure": LocalCluster(args.workers, pipeline_threads=args.threads, secure=False),
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in clusters}
    try:
        for cluster in clusters.values():
            cluster.start()
            read_once(cluster, table)  # warm-up: page cache, first connections
        for _ in range(args.repeats):
            for mode, cluster in clusters.items():
                results[mode].append(read_once(cluster, table))
    finally:
        for cluster in clusters.values():
            cluster.stop()
    summary = {
        mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for mode, runs in results.items()
    }
    summary["ratio_secured_over_insecure"] = {
        k: summary["secured"][k] / summary["insecure"][k] for k in summary["secured"] if k != "rows"
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
