"""The ``dpp stats`` output options and ``dpp shard-plan``, as argparse builders and runners.

Owns the command-line surface of the stats package, so ``dpp_server/cli.py`` only hooks these
in: ``add_report_arguments`` + ``write_outputs`` for the end of a stats session, and
``add_shard_plan_arguments`` + ``run_shard_plan`` for the plan. ``main_stats_report`` and
``main_shard_plan`` run them standalone (the former on saved split payloads). Must never import
grpc or storage. Prints to the ``out`` stream it is given (the entry point's stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from dpp_server.errors import StatsError
from dpp_server.stats.report import (
    bucketize_op_text,
    build_report,
    dense_boundaries,
    write_png,
)
from dpp_server.stats.shard_plan import PlanConfig, build_plan, tables_from_report
from dpp_server.stats.sketches import merge

__all__ = [
    "add_report_arguments",
    "add_shard_plan_arguments",
    "main_shard_plan",
    "main_stats_report",
    "run_shard_plan",
    "write_outputs",
]


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The output options of ``dpp stats`` (the session options are the CLI's)."""
    parser.add_argument("--out", required=True, help="where to write the report (stats.json)")
    parser.add_argument("--png", help="also draw access CDFs and pooling factors (matplotlib)")
    parser.add_argument(
        "--suggest-boundaries",
        type=int,
        metavar="N",
        help="print bucketize boundaries cutting each dense feature into N equal buckets",
    )
    parser.add_argument("--top-k", type=int, default=20, help="heavy hitters listed per feature")


def write_outputs(
    report: dict[str, Any],
    boundaries: Mapping[str, Sequence[float]],
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    """Writes the report (and the PNG), prints a summary line per sparse feature and any
    bucketize boundaries (``dpp stats``' last step, wherever the merge ran)."""
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for name, f in report["sparse"].items():
        cdf = ", ".join(
            f"top {p['id_share']:.1%} ids {p['access_share']:.1%}" for p in f["access_cdf"]
        )
        out.write(
            f"{name}: coverage {f['coverage']:.1%}, pooling {f['pooling']['mean']:.2f}, "
            f"distinct {f['distinct_ids']['estimate']:.0f}; {cdf}\n"
        )
    for name, values in boundaries.items():
        out.write(f"{name}: {bucketize_op_text(values)}\n")
    if args.png:
        write_png(report, args.png)
    out.write(f"wrote {args.out}" + (f" and {args.png}" if args.png else "") + "\n")


def main_stats_report(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """``python -m dpp_server.stats.commands report PAYLOAD... --out stats.json``: merges saved
    split payloads (:meth:`SplitStats.serialize` outputs, one file each) and writes the report."""
    parser = argparse.ArgumentParser(prog="dpp stats-report", description=main_stats_report.__doc__)
    parser.add_argument("payloads", nargs="+", help="split payload files")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    merged = merge(Path(p).read_bytes() for p in args.payloads)
    boundaries = dense_boundaries(merged, args.suggest_boundaries or 0)
    write_outputs(build_report(merged, top_k=args.top_k), boundaries, args, out)
    return 0


def add_shard_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``dpp shard-plan stats.json --gpus N --hbm-gb X --dim D [--uvm-gb Y]``."""
    parser.add_argument("stats", help="the stats.json dpp stats wrote")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs sharing the tables")
    parser.add_argument(
        "--hbm-gb", type=float, required=True, help="HBM per GPU for embeddings (GB, 10**9 B)"
    )
    parser.add_argument("--dim", type=int, required=True, help="embedding dimension")
    parser.add_argument("--uvm-gb", type=float, help="UVM/host memory per GPU (default: no limit)")
    parser.add_argument("--batch-size", type=int, default=4096, help="samples per step (global)")
    parser.add_argument(
        "--bytes-per-value", type=int, default=4, help="4 for fp32 weights, 2 for fp16"
    )
    parser.add_argument("--out", help="write the plan JSON here (default: stdout only)")


def run_shard_plan(args: argparse.Namespace, out: TextIO) -> dict[str, Any]:
    """Builds the plan, prints both cost-model figures and the ratios, writes the JSON.

    Raises:
        StatsError: unreadable stats or options out of range.
        CapacityError: the tables cannot fit (names the table and the shortfall).
    """
    try:
        report = json.loads(Path(args.stats).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StatsError(f"cannot read stats {args.stats!r}: {exc}; pass dpp stats' --out") from exc
    config = PlanConfig(
        gpus=args.gpus,
        hbm_gb=args.hbm_gb,
        dim=args.dim,
        uvm_gb=args.uvm_gb,
        batch_size=args.batch_size,
        bytes_per_value=args.bytes_per_value,
    )
    plan = build_plan(tables_from_report(report), config)
    rows = [("RecShard-style", plan["plan"]["cost"])]
    if plan["baseline"]["feasible"]:
        rows.append(("size-balanced baseline", plan["baseline"]["cost"]))
    else:
        out.write(f"baseline infeasible: {plan['baseline']['reason']}\n")
    for label, cost in rows:
        out.write(
            f"{label:>24}: max per-GPU lookups/batch {cost['max_gpu_lookups_per_batch']:,.0f} "
            f"(imbalance {cost['imbalance']:.2f}), slow-memory lookups/batch "
            f"{cost['slow_lookups_per_batch']:,.0f}\n"
        )
    ratios = plan["ratios"]
    if ratios:

        def fmt(value: float | None) -> str:
            return "inf (plan has none)" if value is None else f"{value:.2f}x"

        out.write(
            f"ratios baseline/plan: load balance {fmt(ratios['load_balance'])}, "
            f"slow-memory lookups {fmt(ratios['slow_lookups'])}\n"
        )
    text = json.dumps(plan, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        out.write(f"wrote {args.out}\n")
    return plan


def main_shard_plan(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """``dpp shard-plan`` standalone; returns the exit status (2 on a stats or capacity error)."""
    parser = argparse.ArgumentParser(prog="dpp shard-plan", description=__doc__)
    add_shard_plan_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_shard_plan(args, out)
    except StatsError as exc:
        sys.stderr.write(f"dpp shard-plan: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["--help"]
    if command == "report":
        sys.exit(main_stats_report(rest))
    sys.exit(main_shard_plan([command, *rest]))
