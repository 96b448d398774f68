"""``dpp top`` and ``dpp scale``: the operator's view of a running cluster, and its pool size.

Owns the two commands, their flags and their rendering (the flags of ``dpp master``,
``dpp worker`` and ``dpp up`` live in :mod:`dpp_server.cli`). ``dpp top`` polls the master's
``MonitorService.GetClusterStatus`` and draws workers (rows/s, MB/s, stage shares), ranks
(rows/s, stall share) and the bottleneck verdict with rich; ``--json`` prints one status as JSON
instead (the same fields as the RPC). ``dpp scale N`` calls ``SetWorkerTarget``: ``dpp up``
follows it (see :mod:`dpp_server.pool`); ``dpp scale auto`` hands the count back to the
autoscaler. Imports rich only when drawing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from dpp_proto import master_pb2

STAGE_ORDER = ("read", "filter", "transform", "batch", "serialize", "wait_consumer", "idle")


# -- the commands' flags ----------------------------------------------------------------------


def add_observability_commands(sub: Any, default_master: str) -> None:
    """Registers ``dpp top`` and ``dpp scale`` (``default_master``: where they look by default)."""
    top = sub.add_parser("top", help="live view of a cluster: workers, ranks, verdict")
    top.add_argument("--master", default=default_master)
    top.add_argument("--interval-s", type=float, default=1.0)
    top.add_argument("--once", action="store_true", help="draw once and exit")
    top.add_argument("--json", action="store_true", help="print one status as JSON and exit")
    top.set_defaults(func=cmd_top)

    scale = sub.add_parser("scale", help="set the worker count of a running `dpp up`")
    scale.add_argument("workers", help="a count, or 'auto' to clear the operator's target")
    scale.add_argument("--master", default=default_master)
    scale.set_defaults(func=cmd_scale)


# -- commands -------------------------------------------------------------------------------


def _stub(master: str) -> Any:
    import grpc

    from dpp_proto import master_pb2_grpc

    return master_pb2_grpc.MonitorServiceStub(grpc.insecure_channel(master))


def fetch_status(master: str, timeout_s: float = 5.0) -> master_pb2.GetClusterStatusResponse:
    response: master_pb2.GetClusterStatusResponse = _stub(master).GetClusterStatus(
        master_pb2.GetClusterStatusRequest(), timeout=timeout_s
    )
    return response


def status_to_dict(status: master_pb2.GetClusterStatusResponse) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    result: dict[str, Any] = MessageToDict(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


def cmd_scale(args: argparse.Namespace) -> int:
    if args.workers == "auto":
        workers = 0
    else:
        try:
            workers = int(args.workers)
        except ValueError:
            raise SystemExit(
                f"dpp scale: expected a worker count or 'auto', got {args.workers!r}"
            ) from None
        if workers < 1:
            raise SystemExit(f"dpp scale: a count must be >= 1 (or 'auto'), got {workers}")
    _stub(args.master).SetWorkerTarget(
        master_pb2.SetWorkerTargetRequest(workers=workers), timeout=10
    )
    # Command output (this module holds the `dpp top` / `dpp scale` commands), not logging.
    sys.stdout.write(
        f"worker target of {args.master}: {workers}\n"
        if workers
        else f"worker target of {args.master}: cleared (autoscaler decides)\n"
    )
    sys.stdout.flush()
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    if args.json:
        status = status_to_dict(fetch_status(args.master))
        sys.stdout.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
        return 0
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if args.once:
        console.print(render(fetch_status(args.master), args.master))
        return 0
    with Live(console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                live.update(render(fetch_status(args.master), args.master))
                time.sleep(args.interval_s)
        except KeyboardInterrupt:
            return 0


def _pct(x: float) -> str:
    return f"{100 * x:4.0f}%"


def cache_hit_rate(hits: int, misses: int) -> str:
    """Share of split lookups the worker cache answered since the worker started, with the
    count ("-" without lookups: no cache, or nothing asked yet)."""
    lookups = hits + misses
    return f"{_pct(hits / lookups)} of {lookups}" if lookups else "-"


def render(status: master_pb2.GetClusterStatusResponse, master: str = "") -> Any:
    """The live view: a header, the workers table, the ranks table and the verdict."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    head = (
        f"master {master}  window {status.window_s:.1f}s  sessions {status.sessions}  "
        f"splits pending {status.splits_pending} leased {status.splits_leased} "
        f"done {status.splits_done}\n"
        f"workers alive {len(status.workers)}  desired {status.desired_workers}"
        + (f"  operator target {status.operator_target}" if status.operator_target else "")
        + f"  rows/s {status.rows_per_s:,.0f}  MB/s {status.bytes_per_s / 1e6:,.1f}"
    )
    workers = Table(title="workers", expand=True)
    workers.add_column("worker")
    workers.add_column("address")
    workers.add_column("rows/s", justify="right")
    workers.add_column("MB/s", justify="right")
    for stage in STAGE_ORDER:
        workers.add_column(stage, justify="right")
    workers.add_column("cache hits", justify="right")
    for w in status.workers:
        workers.add_row(
            w.worker_id,
            w.address,
            f"{w.rows_per_s:,.0f}",
            f"{w.bytes_per_s / 1e6:,.1f}",
            *(_pct(w.stage_shares.get(stage, 0.0)) for stage in STAGE_ORDER),
            cache_hit_rate(w.cache_hits, w.cache_misses),
        )
    if status.workers:
        workers.add_row(
            "all",
            "",
            f"{status.rows_per_s:,.0f}",
            f"{status.bytes_per_s / 1e6:,.1f}",
            *(_pct(status.stage_shares.get(stage, 0.0)) for stage in STAGE_ORDER),
            cache_hit_rate(
                sum(w.cache_hits for w in status.workers),
                sum(w.cache_misses for w in status.workers),
            ),
            style="bold",
        )
    ranks = Table(title="ranks (trainers)", expand=True)
    for column in ("session", "rank", "rows/s", "stall", "last report"):
        ranks.add_column(column, justify="left" if column == "session" else "right")
    for r in status.ranks:
        ranks.add_row(
            r.session_id,
            str(r.rank),
            f"{r.rows_per_s:,.0f}",
            _pct(r.stall_share),
            f"{r.seconds_since_report:.0f}s ago",
        )
    failures = [f for f in status.session_failures if f.splits_failed]
    failed = Table(title="failed splits", expand=True)
    for column in ("session", "failed", "last error"):
        failed.add_column(column, justify="right" if column == "failed" else "left")
    for f in failures:
        failed.add_row(f.session_id, str(f.splits_failed), f.last_error)
    verdict = status.verdict or "not enough samples yet"
    kind = f"[{status.verdict_kind}] " if status.verdict_kind else ""
    parts: list[Any] = [head, workers, ranks, *([failed] if failures else [])]
    return Group(*parts, Panel(kind + verdict, title="verdict"))
