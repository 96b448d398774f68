"""Worker core-s per 1M rows beside the in-process pipeline, side by side in one run.

    python -m bench.worker_cpu [--rounds 5] [--baseline-tree DIR]

Runs :mod:`bench.pipelines` ``inprocess`` (the trainer's CPU) and ``dpp`` with 1 worker of 1
pipeline thread (the worker process's CPU, from /proc) on the quick DLRM table, round after
round in rotating order. With ``--baseline-tree`` (a checkout of another commit, e.g. from
``git archive``), its ``dpp`` runs in the same rounds too, so a change is measured beside
what it replaced under the same load. Prints each round and the medians, and the per-round
ratios to in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.workloads import workloads

REPO = Path(__file__).resolve().parent.parent


def _run(tree: Path, args: list[str], table: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.pipelines", *args, "--table", table, "--quick"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, object] = json.loads(
        [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    )
    return result


def _core_s_per_m(result: dict[str, object], worker: bool) -> float:
    rows = float(result["rows"])  # type: ignore[arg-type]
    if not worker:
        return float(result["trainer_cpu_s"]) / rows * 1e6  # type: ignore[arg-type]
    processes = result["processes"]
    assert isinstance(processes, list)
    cpu = sum(float(p["cpu_s"]) for p in processes if "worker" in p["role"])
    return cpu / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-tree", default="", help="another checkout's dpp, beside")
    parser.add_argument("--table-dir", default=os.environ.get("DPP_BENCH_DIR", "/tmp/dpp-bench"))
    args = parser.parse_args()
    table = workloads(True)["dlrm"].ensure_table(Path(args.table_dir))
    dpp = ["dpp", "--workers", "1", "--threads", "1"]
    runs = [("inprocess", REPO, ["inprocess"]), ("dpp worker", REPO, dpp)]
    if args.baseline_tree:
        runs.append(("dpp worker (baseline)", Path(args.baseline_tree), dpp))
    figures: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for r in range(args.rounds):
        shift = r % len(runs)
        for name, tree, pipeline in runs[shift:] + runs[:shift]:
            value = _core_s_per_m(_run(tree, pipeline, table), name != "inprocess")
            figures[name].append(round(value, 2))
            print(f"round {r + 1}: {name}: {value:.2f} core-s per 1M rows", flush=True)
    for name, values in figures.items():
        ratios = [round(v / b, 2) for v, b in zip(values, figures["inprocess"], strict=True)]
        print(f"{name}: median {statistics.median(values):.2f} {values}; ratios {ratios}")


if __name__ == "__main__":
    main()
