"""Worker core-s per 1M rows beside the in-process pipeline, side by side in one run.

    python -m bench.worker_cpu [--rounds 5] [--baseline-tree DIR] [--stages] [--filter-ab]
        [--insecure]

Runs :mod:`bench.pipelines` ``inprocess`` (the trainer's CPU), ``inprocess --packed`` (the
same, with each batch's ids packed into the layout dpp delivers: one values and one offsets
buffer per batch, int32 ids, what a TorchRec model takes), that again with the allocator
settings a worker runs with (:data:`WORKER_ALLOCATORS`), and ``dpp`` with 1 worker of 1
pipeline thread (the worker process's CPU, from /proc) on the quick DLRM table, round after
round in rotating order. With ``--baseline-tree`` (a checkout of another commit, e.g. from
``git archive``), its ``dpp`` runs in the same rounds too, so a change is measured beside
what it replaced under the same load. Prints each round, then per pipeline the median and
the per-round ratios to each in-process variant with their median.

Both sides run the very same production code (:func:`dpp_server.produce.produce_batches` /
``produce_split``: one reader with the same settings, one filter, one transform, 65,536-row
read chunks, 4,096-row batches). What differs is only what each does after the cut: the
worker encodes frames and hands them to gRPC (plus its control plane: leases, heartbeats);
the in-process pipeline builds the trainer's tensors in place.

``--stages`` adds a per-stage CPU breakdown of production without a cluster (each tree: this
one and the baseline, one process per tree and round, interleaved): cumulative passes over
the table (decode; + filter, transform and cut; + pack; + encode), each timed with
``time.process_time`` (every thread), medians of the rounds; a stage's cost is the
difference of its pass's median to the previous pass's.

``--filter-ab`` adds :func:`filter_ab`: the row filter's path before and after this round's
change, interleaved in one process over chunks decoded once (decode noise excluded).

Secure by default, as clusters run (TLS on the loopback data plane costs the worker little
here); ``--insecure`` starts the clusters without TLS and tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from bench.workloads import workloads

REPO = Path(__file__).resolve().parent.parent

STAGES = ("decode", "filter+transform+cut", "pack", "encode")


#: The allocator settings a worker without a budget runs with (dpp_server.budget.
#: keep_freed_memory, dpp_server/__main__.py), as environment variables: given to the third
#: in-process run, so that the saving they bring is not counted as the worker's alone.
WORKER_ALLOCATORS = {
    "MIMALLOC_PURGE_DELAY": "-1",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(512 << 20),
}


def _run(tree: Path, args: list[str], table: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if "--allocators" in args:
        args = [a for a in args if a != "--allocators"]
        env.update(WORKER_ALLOCATORS)
    done = subprocess.run(
        [sys.executable, "-m", "bench.pipelines", *args, "--table", table, "--quick"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"bench.pipelines {args} in {tree} failed:\n{done.stderr[-3000:]}")
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


def stage_passes(table: str, rounds: int) -> dict[str, list[float]]:
    """Cumulative production passes over ``table`` in this process, core-s per 1M rows out:
    ``decode`` (:func:`storage.reader.scan_split` alone), ``filter+transform+cut``
    (:func:`dpp_server.produce.produce_batches`; the filter is not timed apart because this
    tree drops filtered rows inside the transform), ``pack`` (+ :func:`dpp_proto.wire.
    pack_sparse` per batch) and ``encode`` (:func:`dpp_server.produce.produce_split`: pack
    and the Arrow IPC frame)."""
    import time

    from bench.pipelines import _server_spec
    from dpp_proto.wire import pack_sparse
    from dpp_server.master import LeaseGrant
    from dpp_server.produce import SessionPipeline, StageTotals, produce_batches, produce_split
    from storage import Table, parse_filter
    from storage.reader import scan_split

    spec = _server_spec(workloads(True)["dlrm"].spec(table))
    row_filter = parse_filter(spec.row_filter, "row_filter")
    plan = Table.open(spec.table_uri).plan_splits(spec.target_split_rows, row_filter=row_filter)
    session = SessionPipeline.compile(spec, read_batch_rows=65_536)
    columns = session.pipeline.input_columns
    leases = [LeaseGrant("", 0, 0, split, 0) for split in plan.splits]
    narrow = session.encoder.options.int32_features

    def scans(lease: LeaseGrant) -> object:
        return scan_split(
            lease.split,
            filesystem=session.filesystem,
            columns=columns,
            row_filter=session.row_filter,
            batch_rows=session.read_batch_rows,
        )

    def decode() -> None:
        for lease in leases:
            for _ in scans(lease):  # type: ignore[attr-defined]
                pass

    def transform() -> None:
        for lease in leases:
            for _ in produce_batches(session, lease, StageTotals()):
                pass

    def pack() -> None:
        for lease in leases:
            for _, rows, _ in produce_batches(session, lease, StageTotals()):
                pack_sparse(rows, narrow, keep_one_column=True)

    def encode() -> int:
        totals = StageTotals()
        for lease in leases:
            for _ in produce_split(session, lease, totals):
                pass
        return totals.counts["rows_out"]

    rows = encode()  # warm: page cache, compiled expressions
    passes = dict(zip(STAGES, (decode, transform, pack, encode), strict=True))
    figures: dict[str, list[float]] = {name: [] for name in STAGES}
    for _ in range(rounds):
        for name, fn in passes.items():
            started = time.process_time()
            fn()
            figures[name].append((time.process_time() - started) / rows * 1e6)
    return figures


def filter_ab(table: str, rounds: int) -> dict[str, list[float]]:
    """The row filter's two paths over every decoded read chunk of ``table`` held in memory
    (decode excluded), interleaved in this process, core-s per 1M rows out: ``acero filter,
    then transform`` (what the worker did before: ``RecordBatch.filter(expression)`` over
    every column, then :meth:`~dpp_server.transforms.dedup.DedupPipeline.apply`) and ``mask,
    rows dropped in the transform`` (:func:`storage.reader.row_mask`, then ``apply(batch,
    keep)``), plus each filter step alone. Checks first that both give equal wire batches."""
    import time

    from bench.pipelines import _server_spec
    from dpp_server.produce import SessionPipeline
    from storage import Table, parse_filter
    from storage.reader import row_mask, scan_split

    spec = _server_spec(workloads(True)["dlrm"].spec(table))
    row_filter = parse_filter(spec.row_filter, "row_filter")
    plan = Table.open(spec.table_uri).plan_splits(spec.target_split_rows, row_filter=row_filter)
    session = SessionPipeline.compile(spec, read_batch_rows=65_536)
    columns = session.pipeline.input_columns
    chunks = [
        batch
        for split in plan.splits
        for batch in scan_split(
            split,
            filesystem=session.filesystem,
            columns=columns,
            row_filter=row_filter,
            batch_rows=65_536,
        )
    ]

    def before(batch: pa.RecordBatch) -> pa.RecordBatch:
        kept = batch.filter(row_filter.expression)
        return session.pipeline.apply(kept.select(columns))

    def after(batch: pa.RecordBatch) -> pa.RecordBatch:
        keep = row_mask(batch, row_filter)
        assert keep is not None
        return session.pipeline.apply(batch, None if keep.true_count == batch.num_rows else keep)

    rows = 0
    for batch in chunks:
        want = before(batch)
        if not after(batch).equals(want):
            raise SystemExit("the two filter paths disagree")
        rows += want.num_rows
    paths: dict[str, Callable[[pa.RecordBatch], object]] = {
        "acero filter, then transform": before,
        "mask, rows dropped in the transform": after,
        "acero filter alone": lambda b: b.filter(row_filter.expression),
        "mask alone": lambda b: row_mask(b, row_filter),
    }
    figures: dict[str, list[float]] = {name: [] for name in paths}
    order = list(paths.items())
    for r in range(rounds):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            started = time.process_time()
            for batch in chunks:
                fn(batch)
            figures[name].append((time.process_time() - started) / rows * 1e6)
    return figures


def _stages_of(tree: Path, table: str, rounds: int) -> dict[str, list[float]]:
    """:func:`stage_passes` run with ``tree``'s code (in a subprocess of its own)."""
    # This file's passes, over the production code of ``tree`` (on the path first).
    code = (
        "import importlib.util, json, sys; "
        "s = importlib.util.spec_from_file_location('passes', sys.argv[3]); "
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
        "print(json.dumps(m.stage_passes(sys.argv[1], int(sys.argv[2]))))"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", code, table, str(rounds), str(Path(__file__).resolve())],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"stage passes in {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, list[float]] = json.loads(done.stdout.splitlines()[-1])
    return result


def _print_stages(name: str, figures: dict[str, list[float]]) -> None:
    medians = {k: statistics.median(v) for k, v in figures.items()}
    previous = 0.0
    parts = []
    for stage in STAGES:
        parts.append(f"{stage} {medians[stage] - previous:.2f}")
        previous = medians[stage]
    print(f"stages, {name}: " + ", ".join(parts) + f"; total {previous:.2f} core-s per 1M rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-tree", default="", help="another checkout's dpp, beside")
    parser.add_argument("--table-dir", default=os.environ.get("DPP_BENCH_DIR", "/tmp/dpp-bench"))
    parser.add_argument("--stages", action="store_true", help="per-stage CPU breakdown too")
    parser.add_argument("--insecure", action="store_true", help="clusters without TLS")
    parser.add_argument(
        "--filter-ab", action="store_true", help="the row filter's old and new path, in process"
    )
    args = parser.parse_args()
    table = workloads(True)["dlrm"].ensure_table(Path(args.table_dir))
    dpp = ["dpp", "--workers", "1", "--threads", "1"] + (["--insecure"] if args.insecure else [])
    baselines = (
        "inprocess",
        "inprocess (packed ids)",
        "inprocess (packed ids, worker's allocator settings)",
    )
    runs = [
        (baselines[0], REPO, ["inprocess"]),
        (baselines[1], REPO, ["inprocess", "--packed"]),
        (baselines[2], REPO, ["inprocess", "--packed", "--allocators"]),
        ("dpp worker", REPO, dpp),
    ]
    if args.baseline_tree:
        runs.append(("dpp worker (baseline tree)", Path(args.baseline_tree), dpp))
    figures: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for r in range(args.rounds):
        shift = r % len(runs)
        for name, tree, pipeline in runs[shift:] + runs[:shift]:
            value = _core_s_per_m(_run(tree, pipeline, table), name not in baselines)
            figures[name].append(round(value, 2))
            print(f"round {r + 1}: {name}: {value:.2f} core-s per 1M rows", flush=True)
    for name, values in figures.items():
        line = f"{name}: median {statistics.median(values):.2f} {values}"
        if name not in baselines:
            for base in baselines:
                ratios = [round(v / b, 2) for v, b in zip(values, figures[base], strict=True)]
                line += f"; to {base}: median {statistics.median(ratios):.2f} {ratios}"
        print(line)
    if args.filter_ab:
        for name, values in filter_ab(table, max(args.rounds, 5)).items():
            rounded = [round(v, 2) for v in values]
            print(f"filter A/B: {name}: median {statistics.median(values):.2f} {rounded}")
    if args.stages:
        trees = {"this tree": REPO}
        if args.baseline_tree:
            trees["baseline tree"] = Path(args.baseline_tree)
        passes: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
        for _ in range(args.rounds):  # one process per tree and round, interleaved
            for name, tree in trees.items():
                for stage, values in _stages_of(tree, table, 1).items():
                    passes[name].setdefault(stage, []).extend(values)
        for name, figures in passes.items():
            _print_stages(name, figures)


if __name__ == "__main__":
    main()
