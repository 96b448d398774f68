"""dpp end to end beside an in-process pyarrow + polars pipeline, in one run.

Both do the same work on the same table: read the projected columns of every split with the
row filter pushed down, run the same feature transforms (polars), cut ``batch_size`` batches and
hand the trainer torch tensors. The in-process pipeline does it in the trainer's own process
(what a user writes without a service); dpp does it in a local cluster (1 master, N worker
processes) and streams frames to the trainer. Reported: median rows/s over repeats, and the
ratio dpp / in-process.

    python -m bench.e2e --rows 1000000 --workers 1,2 --repeats 3

The full suite (peers, both workloads, master rate, trainer CPU, worker memory) is
``python -m bench.run`` (``make bench``); see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import time
from pathlib import Path

from bench.pipelines import run_inprocess
from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_server.local_cluster import LocalCluster
from storage import GenConfig, generate_table

ROW_FILTER = "dense_12 IS NOT NULL OR label = 1"


def dlrm_spec(table: str, dense: int = 13, sparse: int = 26, batch_size: int = 4096) -> SessionSpec:
    """The demo's preprocessing: 13 dense (fill_null, clamp, log1p), 26 id lists (first_x,
    sigrid_hash)."""
    features = [
        Feature(
            f"d{i}",
            "dense",
            source=f"dense_{i}",
            ops=(Op("fill_null", {"value": 0.0}), Op("clamp", {"min": 0.0}), Op("log1p")),
        )
        for i in range(dense)
    ] + [
        Feature(
            f"s{i}",
            "sparse",
            source=f"sparse_{i}",
            ops=(Op("first_x", {"x": 20}), Op("sigrid_hash", {"salt": i, "max_value": 100_000})),
        )
        for i in range(sparse)
    ]
    return SessionSpec(
        table_uri=table,
        features=tuple(features),
        label="label",
        row_filter=ROW_FILTER,
        batch_size=batch_size,
        epochs=1,
    )


def ensure_table(directory: Path, rows: int) -> str:
    uri = directory / f"dlrm-{rows}"
    if not uri.exists():
        print(f"generating {rows} rows at {uri} ...", flush=True)
        generate_table(str(uri), GenConfig(rows=rows), progress=True)
    return str(uri)


def run_in_process(spec: SessionSpec) -> tuple[int, float]:
    """The same read/filter/transform/batch/decode in the trainer's process (the suite's
    in-process pipeline), timed."""
    started = time.perf_counter()
    rows, _ = run_inprocess(spec, max_rows=1 << 62)
    return rows, time.perf_counter() - started


def run_dpp(cluster: LocalCluster, spec: SessionSpec) -> tuple[int, float, float]:
    started = time.perf_counter()
    rows = 0
    with DppLoader(cluster.master_address, spec) as loader:
        for batch in loader:
            rows += batch.num_rows
        stall = loader.stats.stall_share
    return rows, time.perf_counter() - started, stall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--threads", type=int, default=2, help="pipeline threads per worker")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--table-dir", default=os.environ.get("DPP_BENCH_DIR", "/tmp/dpp-bench"))
    parser.add_argument("--json", default="bench/results/e2e.json")
    args = parser.parse_args()

    table = ensure_table(Path(args.table_dir), args.rows)
    spec = dlrm_spec(table)
    worker_counts = [int(w) for w in args.workers.split(",")]
    results: dict[str, list[float]] = collections.defaultdict(list)
    stalls: dict[str, list[float]] = collections.defaultdict(list)
    expected_rows = None

    run_in_process(spec)  # warm the page cache and imports once, untimed
    clusters = {
        n: LocalCluster(workers=n, pipeline_threads=args.threads).start() for n in worker_counts
    }
    try:
        for _ in range(args.repeats):
            rows, seconds = run_in_process(spec)
            expected_rows = expected_rows or rows
            assert rows == expected_rows, (rows, expected_rows)
            results["in-process"].append(rows / seconds)
            for n, cluster in clusters.items():
                rows, seconds, stall = run_dpp(cluster, spec)
                assert rows == expected_rows, f"dpp delivered {rows} rows, expected {expected_rows}"
                results[f"dpp {n} worker(s)"].append(rows / seconds)
                stalls[f"dpp {n} worker(s)"].append(stall)
    finally:
        for cluster in clusters.values():
            cluster.stop()

    base = statistics.median(results["in-process"])
    print(
        f"\n{args.rows} rows ({expected_rows} after the row filter), 13 dense + 26 sparse, "
        f"batch 4096, {os.cpu_count()} cores, median of {args.repeats}"
    )
    print(f"{'pipeline':<22}{'rows/s':>12}{'ratio':>8}{'trainer stall':>15}")
    summary = {}
    for name, values in results.items():
        median = statistics.median(values)
        stall = statistics.median(stalls[name]) if name in stalls else float("nan")
        summary[name] = {
            "rows_per_s": median,
            "ratio": median / base,
            "runs": values,
            "stall_share": stall,
        }
        stall_text = f"{stall:>14.0%}" if name in stalls else f"{'-':>14}"
        print(f"{name:<22}{median:>12,.0f}{median / base:>8.2f} {stall_text}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "rows": args.rows,
                "rows_after_filter": expected_rows,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "results": summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
