"""Stats-pass cost beside the plain DLRM job, per worker thread (issue 17's 1.5x budget).

    python -m bench.stats [--rows 131072] [--dir /tmp/dpp-bench-stats] [--splits N]
                          [--no-collisions]

Generates (once) a DLRM-shaped table with ``dpp gen``'s generator, then for each split runs
what a worker would: the plain job (read the split, apply the spec's pipeline: fill_null /
clamp / log1p on 13 dense, first_x(20) / sigrid_hash on 26 id lists) and the stats pass (the
same read and pipeline, plus the raw-id pipeline, unpacking the wire batch and feeding
:class:`~dpp_server.stats.SplitStats`, then serializing it). Prints one JSON line: rows/s of
each, the stats pass over the plain job (CPU seconds of this one thread), payload bytes per
split, and the plan's cost-model ratios on the resulting stats. Runs the production code
(FeaturePipeline, SplitStats, merge, build_report, build_plan), never a copy of it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.workloads import Workload
from dpp_server.spec import spec_from_proto
from dpp_server.stats import SplitStats, merge, partition_key
from dpp_server.stats.features import features_from_wire, measured_features, raw_id_spec
from dpp_server.stats.report import build_report
from dpp_server.stats.shard_plan import PlanConfig, build_plan, tables_from_report
from dpp_server.transforms import FeaturePipeline
from storage import GenConfig, Table, parse_filter, read_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=131_072)
    parser.add_argument("--dir", default="/tmp/dpp-bench-stats")
    parser.add_argument("--splits", type=int, default=0, help="0: every split")
    parser.add_argument(
        "--no-collisions", action="store_true", help="feed no raw ids (no collision figures)"
    )
    args = parser.parse_args()
    workload = Workload(
        "dlrm", GenConfig(rows=args.rows, days=2, seed=0), read_dense=13, read_sparse=26
    )
    uri = workload.ensure_table(Path(args.dir))
    spec = spec_from_proto(workload.spec(uri).to_proto())
    table = Table.open(uri)
    row_filter = parse_filter(spec.row_filter, "row_filter")
    plan = table.plan_splits(spec.target_split_rows, row_filter=row_filter)
    splits = plan.splits[: args.splits] if args.splits else plan.splits
    pipeline, raw_pipeline = FeaturePipeline(spec), FeaturePipeline(raw_id_spec(spec))  # type: ignore[arg-type]
    sparse, dense = measured_features(spec)
    plain_s = stats_s = sketch_s = 0.0
    rows = 0
    payloads = []
    for split in splits:
        start = time.process_time()
        batches = list(
            read_split(
                split,
                filesystem=table.filesystem,
                columns=pipeline.input_columns,
                row_filter=row_filter,
                batch_rows=65_536,
            )
        )
        read_s = time.process_time() - start
        start = time.process_time()
        wires = [pipeline.apply(b) for b in batches]
        apply_s = time.process_time() - start
        start = time.process_time()
        stats = SplitStats(split.split_id, partition_key(split.partition), sparse, dense)
        for batch, wire in zip(batches, wires, strict=True):
            raw = None if args.no_collisions else features_from_wire(raw_pipeline.apply(batch))
            stats.update(features_from_wire(wire), raw)
        payloads.append(stats.serialize())
        extra_s = time.process_time() - start
        rows += sum(w.num_rows for w in wires)
        plain_s += read_s + apply_s
        stats_s += read_s + apply_s + extra_s
        sketch_s += extra_s
    start = time.process_time()
    report = build_report(merge(payloads))
    merge_s = time.process_time() - start
    plan_json = build_plan(tables_from_report(report), PlanConfig(gpus=8, hbm_gb=0.02, dim=128))
    print(
        json.dumps(
            {
                "rows": rows,
                "splits": len(splits),
                "plain_rows_per_s": rows / plain_s,
                "stats_rows_per_s": rows / stats_s,
                "stats_over_plain": stats_s / plain_s,
                "sketch_only_rows_per_s": rows / sketch_s,
                "payload_bytes_per_split": sum(map(len, payloads)) / len(payloads),
                "merge_and_report_s": merge_s,
                "plan_ratios": plan_json["ratios"],
                "plan_imbalance": plan_json["plan"]["cost"]["imbalance"],
                "baseline_imbalance": plan_json["baseline"]["cost"]["imbalance"],
            }
        )
    )


if __name__ == "__main__":
    main()
