"""What the trainer's whole process pays per 1M rows through ``DppLoader`` on a real cluster.

    python -m bench.trainer_cpu [--epochs 5] [--repeats 3] [--out bench/results/trainer_cpu.json]

Issue 15's goal is the trainer's *whole* process (receive + decode + hand over tensors), so
this bench measures exactly what a training script runs: ``for batch in DppLoader(...)``
against a :class:`~dpp_server.local_cluster.LocalCluster` (master and worker as child
processes) over the suite's DLRM table (13 dense, 26 id lists ``first_x(20)`` +
``sigrid_hash(100000)``, batches of 4096). Four variants, side by side in one run, each in a
fresh process, their order rotated every repeat:

* ``grpc`` / ``grpc+tls``: frames over gRPC StreamBatches (``transport="grpc"``: the path
  before the data plane);
* ``data`` / ``data+tls``: frames over the worker's data port (``transport="auto"``, the
  default); ``+tls`` is the secure default cluster (mTLS, tokens), the others ``--insecure``.

Each run reads ``--epochs`` epochs and reports, from the trainer process's ``getrusage``
(every thread; the cluster is child processes, not counted):

* ``steady_cpu_s_per_m_rows``: CPU of epochs 1.. over their rows: the cost per row once the
  session runs, what decides how many rows/s one trainer core ingests;
* ``setup_cpu_s``: CPU from the loader's constructor to the first batch of epoch 0 (spec
  check, session, channels, TLS handshakes, threads): paid once per job;
* ``epoch0_cpu_s_per_m_rows``: epoch 0 with that setup included, for comparison with the
  suite's ``trainer CPU`` column (``bench.run``), which times one epoch from the constructor;
* ``worker_cpu_s_per_m_rows``: the worker processes' CPU over epochs 1.. (``/proc``);
* ``bytes_per_row``: frame bytes received per row; ``rows_per_s`` over epochs 1..; and the
  trainer's CPU per thread (stream threads, the trainer's own thread, the rest).

The trainer does nothing but take batches, so it waits on the one worker most of the time:
the CPU per row is what matters here, not rows/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.measure import cpu_s, self_cpu_s

VARIANTS = ("grpc", "data", "grpc+tls", "data+tls")
_TABLE_DIR = Path("/tmp/dpp-bench")


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by Python thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "native")
        if name.startswith("dpp-stream"):
            name = "stream threads"
        elif name not in ("MainThread", "native"):
            name = "other threads"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * tick_s
    return out


def run_variant(variant: str, epochs: int, workers: int) -> dict[str, Any]:
    """One variant in this process: a cluster, a loader, ``epochs`` epochs."""
    from bench.workloads import workloads
    from dpp_client import DppLoader
    from dpp_server.local_cluster import LocalCluster

    workload = workloads(True)["dlrm"]
    spec = workload.spec(workload.ensure_table(_TABLE_DIR))
    spec = dataclasses.replace(spec, epochs=epochs)
    secure = variant.endswith("+tls")
    transport = "grpc" if variant.startswith("grpc") else "auto"
    cluster = LocalCluster(workers=workers, pipeline_threads=2, secure=secure).start()
    try:
        worker_pids = [w.process.pid for w in cluster.workers]
        time.sleep(0.2)
        threads0 = _thread_cpu_s()
        cpu0 = self_cpu_s()
        epochs_out: list[dict[str, float]] = []
        setup_cpu_s = float("nan")
        with DppLoader(
            cluster.master_address, spec, connection=cluster.connection, transport=transport
        ) as loader:
            for epoch in range(epochs):
                start_cpu, start_wall = self_cpu_s(), time.perf_counter()
                start_bytes = loader.stats.bytes_received
                worker0 = sum(cpu_s(pid) for pid in worker_pids)
                rows = 0
                for batch in loader:
                    if epoch == 0 and rows == 0:
                        setup_cpu_s = self_cpu_s() - cpu0
                    rows += batch.num_rows
                epochs_out.append(
                    {
                        "rows": rows,
                        "cpu_s": self_cpu_s() - start_cpu,
                        "wall_s": time.perf_counter() - start_wall,
                        "bytes": loader.stats.bytes_received - start_bytes,
                        "worker_cpu_s": sum(cpu_s(pid) for pid in worker_pids) - worker0,
                    }
                )
            threads1 = _thread_cpu_s()
            stall_share = loader.stats.stall_share
    finally:
        cluster.stop()
    steady = epochs_out[1:] or epochs_out
    rows = int(sum(e["rows"] for e in steady))
    return {
        "variant": variant,
        "epochs": epochs,
        "rows_per_epoch": epochs_out[0]["rows"],
        "steady_cpu_s_per_m_rows": sum(e["cpu_s"] for e in steady) / rows * 1e6,
        "setup_cpu_s": setup_cpu_s,
        "epoch0_cpu_s_per_m_rows": epochs_out[0]["cpu_s"] / epochs_out[0]["rows"] * 1e6,
        "worker_cpu_s_per_m_rows": sum(e["worker_cpu_s"] for e in steady) / rows * 1e6,
        "bytes_per_row": sum(e["bytes"] for e in steady) / rows,
        "rows_per_s": rows / sum(e["wall_s"] for e in steady),
        "stall_share": stall_share,
        "per_epoch": [
            {
                "cpu_s_per_m_rows": e["cpu_s"] / e["rows"] * 1e6,
                "rows_per_s": e["rows"] / e["wall_s"],
            }
            for e in epochs_out
        ],
        "thread_cpu_s_per_m_rows": {
            name: (threads1.get(name, 0.0) - threads0.get(name, 0.0))
            / sum(e["rows"] for e in epochs_out)
            * 1e6
            for name in sorted(set(threads1) | set(threads0))
        },
    }


def _inner(variant: str, epochs: int, workers: int) -> dict[str, Any]:
    """Runs one variant in a fresh interpreter (clean thread and CPU accounting)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.trainer_cpu",
            "--inner",
            variant,
            "--epochs",
            str(epochs),
            "--workers",
            str(workers),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def table(runs: list[dict[str, Any]], variants: list[str]) -> str:
    """The markdown table of medians per variant."""
    lines = [
        "| variant | trainer core-s / 1M rows, epochs 1.. | stream threads | trainer's thread "
        "| setup core-s (once) | epoch 0 incl. setup | worker core-s / 1M rows | bytes / row "
        "| rows/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        threads = [r["thread_cpu_s_per_m_rows"] for r in mine]
        each = ", ".join(f"{r['steady_cpu_s_per_m_rows']:.2f}" for r in mine)
        lines.append(
            f"| {variant} | **{_median(mine, 'steady_cpu_s_per_m_rows'):.2f}** "
            f"({each}) "
            f"| {statistics.median(t.get('stream threads', 0.0) for t in threads):.2f} "
            f"| {statistics.median(t.get('MainThread', 0.0) for t in threads):.2f} "
            f"| {_median(mine, 'setup_cpu_s'):.3f} "
            f"| {_median(mine, 'epoch0_cpu_s_per_m_rows'):.2f} "
            f"| {_median(mine, 'worker_cpu_s_per_m_rows'):.2f} "
            f"| {_median(mine, 'bytes_per_row'):,.0f} "
            f"| {_median(mine, 'rows_per_s'):,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="", help="also write the JSON here")
    parser.add_argument("--inner", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(run_variant(args.inner, args.epochs, args.workers)))
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    runs: list[dict[str, Any]] = []
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        for variant in variants[repeat % len(variants) :] + variants[: repeat % len(variants)]:
            runs.append(_inner(variant, args.epochs, args.workers))
            loads.append(os.getloadavg()[0])
            print(
                f"repeat {repeat} {variant}: "
                f"{runs[-1]['steady_cpu_s_per_m_rows']:.3f} core-s / 1M rows",
                file=sys.stderr,
                flush=True,
            )
    result = {
        "command": "python -m bench.trainer_cpu " + " ".join(sys.argv[1:]),
        "load_average": [min(loads), max(loads)],
        "runs": runs,
    }
    print(table(runs, variants))
    print(f"\nload average {min(loads):.1f}-{max(loads):.1f}; medians of {args.repeats}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
