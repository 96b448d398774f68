"""The worker's cache of transformed splits: first epoch beside second epoch and second job.

    python -m bench.cache [--rows 300000] [--repeats 3]
    python -m bench.cache --cluster [--rows 300000] [--jobs 3]
    python -m bench.cache --share [--rows 200000] [--jobs 3] [--rounds 2]

Runs the worker's own production (:func:`dpp_server.produce.produce_split`, frames encoded)
over every split of the DLRM job in this process, one thread, with a fresh cache per repeat:
epoch 0 (every split a miss: read, transform, write the cache), epoch 1 (every split a hit),
then a second job over the same features with another batch size (hits too: batching is after
the cache). Reported: rows/s and core-s per 1M rows of each, their ratios to the first epoch,
and whether every frame of the cached runs equals the uncached one's.

With ``--cluster`` the same through a real local cluster (1 master, 1 worker of 1 pipeline
thread, gRPC, a ``DppLoader``): with ``--cache-mb`` and without, one after the other: job A
epoch 0 and epoch 1, job B (another batch size, shuffled: both after the cache), job C (a
new job on job A's spec, as a sweep's next trial runs), each
timed by wall clock and the worker process's CPU (from /proc); then ``--jobs`` jobs on one
spec run at once, the worker's total CPU with the cache beside without (the cache-backed
form of sharing production across jobs, ``docs/worker-efficiency.md``). Every job's batch
sequence is compared with the uncached cluster's.

With ``--share``: shared production across jobs (spec ``share``, ``docs/worker-efficiency.md``)
beside its alternatives, each in a fresh cluster (1 master, 1 worker of 1 pipeline thread),
one after the other, ``--rounds`` times: one job alone (the "one job's preprocessing" the
goal compares with); ``--jobs`` jobs at once on one spec separately (no cache, no share);
through the disk cache (``--cache-mb``, no share); and with ``share: true`` (no disk
cache). Reported per configuration: the worker process's CPU (from /proc) and wall time,
medians over rounds, their ratios to the separate jobs and to one job, and whether every
job's batch sequence equals the separate run's. Then, in this process, what each member of
a share group costs the worker's production (``produce_split`` through one share window,
CPU, summed over the splits): the producer; two members with its batching (its frames
readdressed); one with twice the batch size and ``shuffle`` (the shared rows batched again).
The send (gRPC) is per job and only in the cluster figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.measure import cpu_s, self_cpu_s
from bench.workloads import Workload
from dpp_client import Batch, DppLoader, Op
from dpp_server.cache import SplitCache
from dpp_server.local_cluster import LocalCluster
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, StageTotals, produce_split
from dpp_server.share import ShareWindow
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


def _digest(batch: Batch) -> str:
    """A batch's tensors' bytes, hashed."""
    digest = hashlib.blake2b(batch.dense.numpy().tobytes(), digest_size=12)
    for jagged in batch.sparse.values():
        digest.update(jagged.values.numpy().tobytes())
        digest.update(jagged.offsets.numpy().tobytes())
    return digest.hexdigest()


class _Phases:
    """Wall and worker-CPU time of named phases; rows delivered per phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.out: dict[str, dict[str, float]] = {}
        self._mark = (cpu_s(pid), time.perf_counter())

    def start(self) -> None:
        self._mark = (cpu_s(self.pid), time.perf_counter())

    def end(self, name: str, rows: int) -> None:
        cpu, wall = cpu_s(self.pid) - self._mark[0], time.perf_counter() - self._mark[1]
        self.out[name] = {
            "rows": rows,
            "wall_s": round(wall, 2),
            "rows_per_s": round(rows / wall),
            "worker_cpu_s": round(cpu, 2),
            "worker_core_s_per_1m_rows": round(cpu / rows * 1e6, 2),
        }
        self.start()


def _epochs(loader: DppLoader, epochs: int, phases: _Phases, name: str) -> list[list[str]]:
    out = []
    for epoch in range(epochs):
        digests, rows = [], 0
        for batch in loader:
            digests.append(_digest(batch))
            rows += batch.num_rows
        phases.end(f"{name} epoch {epoch}" if epochs > 1 else name, rows)
        out.append(digests)
    return out


def run_cluster(table_dir: Path, rows: int, jobs: int) -> dict[str, Any]:
    """See the module docstring (``--cluster``)."""
    workload = Workload("dlrm", GenConfig(rows=rows, seed=0), read_dense=13, read_sparse=26)
    uri = workload.ensure_table(table_dir)
    job_a = dataclasses.replace(workload.spec(uri), epochs=2)
    job_b = dataclasses.replace(job_a, epochs=1, batch_size=job_a.batch_size * 2, shuffle=True)
    job_c = dataclasses.replace(job_a, epochs=1)
    features = list(job_a.features)
    features[-1] = dataclasses.replace(
        features[-1], ops=(Op("first_x", {"x": 19}), *features[-1].ops[1:])
    )
    sweep = dataclasses.replace(job_a, epochs=1, features=tuple(features))
    results: dict[str, Any] = {"rows": rows, "jobs": jobs}
    sequences: dict[str, Any] = {}
    for label, worker_args in (("uncached", []), ("cached", ["--cache-mb", "8192"])):
        with LocalCluster(
            workers=1, pipeline_threads=1, worker_args=worker_args, secure=False
        ) as cluster:
            time.sleep(1.0)
            phases = _Phases(cluster.workers[0].process.pid)
            seen: dict[str, Any] = {}
            with DppLoader(cluster.master_address, job_a) as loader:
                seen["job A"] = _epochs(loader, 2, phases, "job A")
            with DppLoader(cluster.master_address, job_b) as loader:
                seen["job B"] = _epochs(loader, 1, phases, "job B (shuffled, 2x batch)")
            # A sweep's next trial: a new job (its own session) on job A's spec.
            with DppLoader(cluster.master_address, job_c) as loader:
                seen["job C"] = _epochs(loader, 1, phases, "job C (job A's spec, a new job)")
            # A sweep: N jobs at once on one spec whose rows nobody cached yet (another
            # first_x: another digest). Separate sessions, each its own epochs and acks.
            outs: list[Any] = [None] * jobs

            def job(i: int, outs: list[Any] = outs, master: str = cluster.master_address) -> None:
                digests, rows = [], 0
                with DppLoader(master, sweep) as loader:
                    for batch in loader:
                        digests.append(_digest(batch))
                        rows += batch.num_rows
                outs[i] = (digests, rows)

            threads = [threading.Thread(target=job, args=(i,)) for i in range(jobs)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            phases.end(f"sweep: {jobs} jobs at once", sum(rows for _, rows in outs))
            seen["jobs"] = [digests for digests, _ in outs]
            results[label] = phases.out
            sequences[label] = seen
    results["byte_identical"] = sequences["cached"] == sequences["uncached"]
    results["byte_identical_by_phase"] = {
        name: seen == sequences["uncached"][name] for name, seen in sequences["cached"].items()
    }
    base = results["cached"]["job A epoch 0"]["rows_per_s"]
    for phase in results["cached"].values():
        phase["ratio_to_epoch_0"] = round(phase["rows_per_s"] / base, 2)
    name = f"sweep: {jobs} jobs at once"
    results["sweep_cpu_cached_over_uncached"] = round(
        results["cached"][name]["worker_cpu_s"] / results["uncached"][name]["worker_cpu_s"], 2
    )
    results["sweep_cpu_over_one_uncached_epoch"] = round(
        results["cached"][name]["worker_cpu_s"]
        / results["uncached"]["job A epoch 0"]["worker_cpu_s"],
        2,
    )
    return results


def run_share(table_dir: Path, rows: int, jobs: int, rounds: int) -> dict[str, Any]:
    """See the module docstring (``--share``)."""
    workload = Workload("dlrm", GenConfig(rows=rows, seed=0), read_dense=13, read_sparse=26)
    uri = workload.ensure_table(table_dir)
    # 65,536-row splits (about 30 MB transformed): a shared split's first frame waits for
    # the whole split, and the loader asks for splits again after 10 s without a frame.
    spec = dataclasses.replace(workload.spec(uri), epochs=1, target_split_rows=65_536)
    configs: dict[str, tuple[int, list[str], bool]] = {
        "one job": (1, [], False),
        f"{jobs} jobs separately": (jobs, [], False),
        f"{jobs} jobs, disk cache": (jobs, ["--cache-mb", "8192"], False),
        f"{jobs} jobs, share: true": (jobs, [], True),
    }
    figures: dict[str, dict[str, list[float]]] = {n: {"cpu": [], "wall": []} for n in configs}
    sequences: dict[str, list[list[str]]] = {}
    for _ in range(rounds):
        for name, (n, worker_args, share) in configs.items():
            job_spec = dataclasses.replace(spec, share=share)
            with LocalCluster(
                workers=1, pipeline_threads=1, worker_args=worker_args, secure=False
            ) as cluster:
                time.sleep(1.0)
                pid = cluster.workers[0].process.pid
                outs: list[list[str]] = [[] for _ in range(n)]

                def job(
                    i: int,
                    outs: list[list[str]] = outs,
                    master: str = cluster.master_address,
                    job_spec: Any = job_spec,
                ) -> None:
                    # No re-production requests: on this loaded 2-core machine one pipeline
                    # thread serving 3 jobs leaves gaps past the default 10 s.
                    with DppLoader(master, job_spec, reproduce_after_s=120) as loader:
                        outs[i] = [_digest(batch) for batch in loader]

                cpu0, wall0 = cpu_s(pid), time.perf_counter()
                threads = [threading.Thread(target=job, args=(i,)) for i in range(n)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                figures[name]["cpu"].append(cpu_s(pid) - cpu0)
                figures[name]["wall"].append(time.perf_counter() - wall0)
                sequences[name] = outs
    separate = f"{jobs} jobs separately"
    results: dict[str, Any] = {"rows": rows, "jobs": jobs, "rounds": rounds}
    results["in process, share members"] = _share_members(uri, spec)
    one = statistics.median(figures["one job"]["cpu"])
    sep = statistics.median(figures[separate]["cpu"])
    for name, f in figures.items():
        cpu = statistics.median(f["cpu"])
        results[name] = {
            "worker_cpu_s": round(cpu, 2),
            "worker_cpu_s_rounds": [round(c, 2) for c in f["cpu"]],
            "wall_s": round(statistics.median(f["wall"]), 2),
            "over_separate": round(cpu / sep, 2),
            "over_one_job": round(cpu / one, 2),
            "byte_identical": all(s == sequences[separate][0] for s in sequences[name]),
        }
    return results


def _share_members(uri: str, client_spec: Any) -> dict[str, float]:
    """CPU seconds of each member's ``produce_split`` over every split, one share window."""
    spec = spec_from_proto(dataclasses.replace(client_spec, share=True).to_proto())
    row_filter = parse_filter(spec.row_filter, "row_filter") if spec.row_filter else None
    splits = Table.open(uri).plan_splits(spec.target_split_rows, row_filter=row_filter).splits
    window = ShareWindow(8 << 30)
    same = SessionPipeline.compile(spec, read_batch_rows=65_536, share=window)
    other_spec = dataclasses.replace(spec, batch_size=spec.batch_size * 2, shuffle=True)
    other = SessionPipeline.compile(other_spec, read_batch_rows=65_536, share=window)
    members = (
        ("producer (reads, transforms, batches, encodes)", same, 3),
        ("member, same batching (frames readdressed)", same, 2),
        ("member, 2x batch and shuffle (rows batched again)", other, 1),
        ("member, same batching, last reader", same, 0),
    )
    cpu = {name: 0.0 for name, _, _ in members}
    for split in splits:
        for i, (name, pipeline, readers) in enumerate(members):
            lease = LeaseGrant(f"s-{i:012d}", 0, 0, split, 0, share_readers=readers)
            started = self_cpu_s()
            for _ in produce_split(pipeline, lease, StageTotals()):
                pass
            cpu[name] += self_cpu_s() - started
    return {name: round(seconds, 2) for name, seconds in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table-dir", default="/tmp/dpp-bench")
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cluster", action="store_true", help="through a real local cluster")
    parser.add_argument("--jobs", type=int, default=3, help="--cluster, --share: jobs at once")
    parser.add_argument("--share", action="store_true", help="shared production across jobs")
    parser.add_argument("--rounds", type=int, default=2, help="--share: rounds")
    args = parser.parse_args()
    if args.share:
        rows = args.rows if args.rows != parser.get_default("rows") else 200_000
        print(json.dumps(run_share(Path(args.table_dir), rows, args.jobs, args.rounds), indent=2))
        return
    if args.cluster:
        print(json.dumps(run_cluster(Path(args.table_dir), args.rows, args.jobs), indent=2))
        return
    print(json.dumps(run(Path(args.table_dir), args.rows, args.repeats), indent=2))


if __name__ == "__main__":
    main()
