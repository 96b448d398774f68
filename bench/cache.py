"""The worker's cache of transformed splits: first epoch beside second epoch and second job.

    python -m bench.cache [--rows 300000] [--repeats 3]

Runs the worker's own production (:func:`dpp_server.produce.produce_split`, frames encoded)
over every split of the DLRM job in this process, one thread, with a fresh cache per repeat:
epoch 0 (every split a miss: read, transform, write the cache), epoch 1 (every split a hit),
then a second job over the same features with another batch size (hits too: batching is after
the cache). Reported: rows/s and core-s per 1M rows of each, their ratios to the first epoch,
and whether every frame of the cached runs equals the uncached one's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import self_cpu_s
from bench.workloads import Workload
from dpp_server.cache import SplitCache
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, StageTotals, produce_split
from dpp_server.spec import Spec, spec_from_proto
from storage import GenConfig, Table, parse_filter


def _epoch(
    session: SessionPipeline, splits: list[Any], epoch: int
) -> tuple[float, float, list[int]]:
    totals = StageTotals()
    sizes: list[int] = []
    cpu, wall = self_cpu_s(), time.perf_counter()
    for split in splits:
        lease = LeaseGrant(session_id="s", epoch=epoch, rank=0, split=split, start_batch=0)
        sizes.extend(hash(f) for f in produce_split(session, lease, totals))
    wall = time.perf_counter() - wall
    cpu = self_cpu_s() - cpu
    rows = totals.counts["rows_out"]
    return rows / wall, cpu / rows * 1e6, sizes


def run(table_dir: Path, rows: int, repeats: int) -> dict[str, Any]:
    workload = Workload("dlrm", GenConfig(rows=rows, seed=0), read_dense=13, read_sparse=26)
    uri = workload.ensure_table(table_dir)
    spec: Spec = spec_from_proto(workload.spec(uri).to_proto())
    other_job = dataclasses.replace(spec, batch_size=spec.batch_size * 2)
    plan = Table.open(uri).plan_splits(
        spec.target_split_rows, row_filter=parse_filter(spec.row_filter, "row_filter")
    )
    splits = list(plan.splits)
    results: dict[str, list[tuple[float, float]]] = {"epoch 0": [], "epoch 1": [], "job 2": []}
    identical = True
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="dpp-bench-cache-") as folder:
            plain = SessionPipeline.compile(spec, read_batch_rows=65_536)
            cache = SplitCache(folder, 8 << 30)
            cached = SessionPipeline.compile(spec, read_batch_rows=65_536, cache=cache)
            second = SessionPipeline.compile(other_job, read_batch_rows=65_536, cache=cache)
            *first, frames0 = _epoch(cached, splits, 0)
            *again, frames1 = _epoch(cached, splits, 0)  # same header epoch: frames comparable
            *job, _ = _epoch(second, splits, 0)
            identical &= frames0 == frames1 == _epoch(plain, splits, 0)[2]
            results["epoch 0"].append((first[0], first[1]))
            results["epoch 1"].append((again[0], again[1]))
            results["job 2"].append((job[0], job[1]))
    base = statistics.median(r[0] for r in results["epoch 0"])
    out: dict[str, Any] = {"rows": rows, "repeats": repeats, "byte_identical": identical}
    for name, values in results.items():
        rate = statistics.median(v[0] for v in values)
        out[name] = {
            "rows_per_s": round(rate),
            "core_s_per_1m_rows": round(statistics.median(v[1] for v in values), 2),
            "ratio_to_epoch_0": round(rate / base, 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table-dir", default="/tmp/dpp-bench")
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(Path(args.table_dir), args.rows, args.repeats), indent=2))


if __name__ == "__main__":
    main()
