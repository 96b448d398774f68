"""RecD deduplication: the same rows and spec three ways, in one run.

The table has realistic duplication: sessions of about ``--rows-per-session`` rows whose
user-side sparse features (``--user-share`` of them) are identical. User-side features are
history-like lists of up to ``--max-user-list-len`` ids, item-side ones up to
``--max-list-len`` (means about a third of the caps), as in production DLRM tables, where
user histories hold most of a row's ids. The table is generated with its sessions
interleaved (rows in arrival order), then rewritten with ``dpp cluster --by session_id``.

Columns:

* baseline: the interleaved table, no dedup (what a loader without RecD does);
* clustered: the clustered table, no dedup (storage clustering alone);
* RecD: the clustered table with the user-side features in one dedup group.

Measures (modes alternate, ``--repeats`` times; the medians are reported, and their ratios,
with the median of the per-repeat ratios in the JSON):

* Parquet bytes of the table read;
* worker rows/s: one worker's pipeline in process (``produce_split``: read, filter, transform,
  cut, dedup, encode) on one thread;
* wire bytes per row: frame bytes / rows;
* client rows/s: rows the trainer receives per second through a local cluster (1 master,
  ``--workers`` worker processes), tensors ready, no model;
* end-to-end rows/s: the same, with the trainer training the example DLRM
  (``dpp_client.examples.dlrm``) on every batch: RecD's "training throughput";
* model step time: the median training step of that DLRM on a batch as each mode delivers it
  (RecD pools unique rows, then expands).

    python -m bench.dedup --rows 300000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dpp_client import Batch, DppLoader, Feature, Op, SessionSpec, batch_from_arrow
from dpp_client.examples.dlrm import DLRM, train_step
from dpp_client.frames import decode_frame
from dpp_server.local_cluster import LocalCluster
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, StageTotals, produce_split
from dpp_server.spec import spec_from_proto
from storage import GenConfig, Table, generate_table
from storage.rewrite import cluster_table

BUCKETS = 100_000
PAPER = {
    "storage": "3.71x (RecD, MLSys 2023, Meta production tables)",
    "preprocessing": "1.79x throughput",
    "training": "2.48x throughput",
}


MODES = ("baseline", "clustered", "recd")


def make_spec(table: str, config: GenConfig, dedup: bool, batch_size: int) -> SessionSpec:
    """Dense: fill_null, log1p. Sparse: first_x (the list cap: nothing is cut), sigrid_hash;
    the user-side features form the dedup group ``user`` when ``dedup``."""
    features = [
        Feature(f"d{i}", "dense", source=f"dense_{i}", ops=(Op("fill_null"), Op("log1p")))
        for i in range(config.dense)
    ]
    for i in range(config.sparse):
        user = i < config.num_user_sparse
        features.append(
            Feature(
                f"s{i}",
                "sparse",
                source=f"sparse_{i}",
                ops=(
                    Op("first_x", {"x": config.list_len_cap(i)}),
                    Op("sigrid_hash", {"max_value": BUCKETS}),
                ),
                dedup_group="user" if dedup and user else "",
            )
        )
    return SessionSpec(
        table_uri=table,
        features=tuple(features),
        label="label",
        batch_size=batch_size,
        target_split_rows=65_536,
    )


def worker_pass(table: str, spec: SessionSpec) -> tuple[int, int, float, list[bytes]]:
    """One worker's pipeline (:func:`~dpp_server.produce.produce_split`, what a worker's
    pipeline thread runs) on one thread: returns rows, frame bytes, seconds, some frames."""
    server_spec = spec_from_proto(spec.to_proto())
    opened = Table.open(table)
    plan = opened.plan_splits(server_spec.target_split_rows)
    session = SessionPipeline.compile(server_spec, read_batch_rows=65_536)
    totals = StageTotals()
    first: list[bytes] = []
    started = time.perf_counter()
    for split in plan.splits:
        lease = LeaseGrant(session_id="", epoch=0, rank=0, split=split, start_batch=0)
        for frame in produce_split(session, lease, totals):
            if len(first) < 16:
                first.append(frame)
    seconds = time.perf_counter() - started
    full = [f for f in first if decode_frame(f)[0].num_rows == server_spec.batch_size]
    return totals.counts["rows_out"], totals.counts["bytes_out"], seconds, full[:8]


def client_pass(
    cluster: LocalCluster, spec: SessionSpec, model: DLRM | None = None
) -> tuple[int, int, float]:
    """One epoch through the cluster: rows, bytes received, seconds; with ``model``, one
    training step per batch (the end-to-end figure)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01) if model is not None else None
    started = time.perf_counter()
    rows = 0
    with DppLoader(cluster.master_address, spec) as loader:
        for batch in loader:
            if model is not None and opt is not None:
                train_step(model, opt, batch)
            rows += batch.num_rows
        received = loader.stats.bytes_received
    return rows, received, time.perf_counter() - started


def new_model(config: GenConfig) -> DLRM:
    torch.manual_seed(0)
    names = [f"s{i}" for i in range(config.sparse)]
    return DLRM(num_dense=config.dense, sparse_names=names, num_embeddings=BUCKETS)


def decoded(frame: bytes) -> Batch:
    _, rb = decode_frame(frame)
    if rb is None:
        raise ValueError("a kept frame has no rows")
    return batch_from_arrow(rb)


def step_ms(model: DLRM, batches: list[Batch]) -> float:
    """Median time of one training step over ``batches`` (ms); the first step warms up."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train_step(model, opt, batches[0])
    times = []
    for batch in batches:
        started = time.perf_counter()
        train_step(model, opt, batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def improvement(old: float, new: float, lower_is_better: bool) -> float:
    """How many times better ``new`` is than ``old`` (> 1: better)."""
    return old / new if lower_is_better else new / old


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rows-per-session", type=float, default=10.0)
    parser.add_argument("--user-share", type=float, default=0.5)
    parser.add_argument("--max-list-len", type=int, default=30, help="item-side list cap")
    parser.add_argument("--max-user-list-len", type=int, default=100, help="user-side list cap")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="pipeline threads per worker")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default="", help="where to write the tables (default: a temp)")
    parser.add_argument("--json", default="bench/results/dedup.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

    config = GenConfig(
        rows=args.rows,
        days=2,
        rows_per_session=args.rows_per_session,
        user_sparse_share=args.user_share,
        max_list_len=args.max_list_len,
        max_user_list_len=args.max_user_list_len,
        rows_per_file=131_072,
        row_group_rows=32_768,
        clustered=False,
    )
    if args.dir:
        run(args, config, Path(args.dir))
        return
    with tempfile.TemporaryDirectory(prefix="dpp-dedup-") as root:
        run(args, config, Path(root))


def run(args: argparse.Namespace, config: GenConfig, root: Path) -> None:
    """Generates and clusters the table under ``root``, measures, prints and writes JSON."""
    raw, clustered = str(root / "interleaved"), str(root / "clustered")
    raw_bytes = generate_table(raw, config).bytes
    clustered_bytes = cluster_table(raw, clustered, "session_id").bytes
    tables = {"baseline": raw, "clustered": clustered, "recd": clustered}
    specs = {
        mode: make_spec(tables[mode], config, mode == "recd", args.batch_size) for mode in MODES
    }

    # Every run of every measure, in repeat order (modes alternate within a repeat).
    results: dict[str, dict[str, list[float]]] = {mode: {} for mode in MODES}
    results["baseline"]["parquet_bytes"] = [raw_bytes]
    results["clustered"]["parquet_bytes"] = results["recd"]["parquet_bytes"] = [clustered_bytes]

    def record(mode: str, key: str, value: float) -> None:
        results[mode].setdefault(key, []).append(value)

    frames: dict[str, list[bytes]] = {}
    for _ in range(args.repeats):
        for mode in MODES:
            rows, size, seconds, frames[mode] = worker_pass(tables[mode], specs[mode])
            record(mode, "worker_rows_per_s", rows / seconds)
            record(mode, "wire_bytes_per_row", size / rows)
    with LocalCluster(workers=args.workers, pipeline_threads=args.threads) as cluster:
        for _ in range(args.repeats):
            for mode in MODES:
                rows, received, seconds = client_pass(cluster, specs[mode])
                record(mode, "client_rows_per_s", rows / seconds)
                record(mode, "client_wire_bytes_per_row", received / rows)
        for _ in range(args.repeats):
            for mode in MODES:
                rows, _, seconds = client_pass(cluster, specs[mode], new_model(config))
                record(mode, "train_rows_per_s", rows / seconds)

    batches = {mode: [decoded(f) for f in fs] for mode, fs in frames.items()}
    for _ in range(args.repeats):
        for mode in MODES:
            record(mode, "model_step_ms", step_ms(new_model(config), batches[mode]))
    unique_share = statistics.mean(b.dedup["user"].num_unique / b.num_rows for b in batches["recd"])

    measures = [
        ("Parquet bytes", "parquet_bytes"),
        ("worker rows/s (1 thread, in process)", "worker_rows_per_s"),
        ("wire bytes per row", "wire_bytes_per_row"),
        ("client rows/s (local cluster, no model)", "client_rows_per_s"),
        ("end-to-end rows/s (training example DLRM)", "train_rows_per_s"),
        ("model step ms (example DLRM)", "model_step_ms"),
    ]
    print(
        f"rows {args.rows}, {args.rows_per_session} rows/session, user share {args.user_share}, "
        f"list caps item {args.max_list_len} / user {args.max_user_list_len}"
    )
    head = ("measure", "baseline", "clustered", "RecD", "RecD/base", "RecD/clus")
    print(
        f"{head[0]:44s} {head[1]:>13s} {head[2]:>13s} {head[3]:>13s} {head[4]:>10s} {head[5]:>10s}"
    )
    summary: list[dict[str, Any]] = []
    for name, key in measures:
        runs = [results[mode][key] for mode in MODES]
        base, clus, recd = (statistics.median(r) for r in runs)
        lower = "bytes" in name or "ms" in name
        gain, gain_clustered = improvement(base, recd, lower), improvement(clus, recd, lower)
        # Per-repeat ratios pair runs that ran back to back, so drift hits both sides.
        paired = statistics.median(
            improvement(b, r, lower) for b, r in zip(runs[0], runs[2], strict=False)
        )
        print(
            f"{name:44s} {base:13,.1f} {clus:13,.1f} {recd:13,.1f} "
            f"{gain:9.2f}x {gain_clustered:9.2f}x"
        )
        summary.append(
            {
                "measure": name,
                "baseline": base,
                "clustered": clus,
                "recd": recd,
                "gain_vs_baseline": gain,
                "gain_vs_clustered": gain_clustered,
                "gain_vs_baseline_paired": paired,
                "runs": dict(zip(MODES, runs, strict=True)),
            }
        )
    print(f"unique rows per batch (user group): {unique_share:.3f} of B")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "args": vars(args),
                "results": summary,
                "unique_share": unique_share,
                "paper": PAPER,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
