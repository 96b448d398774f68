"""``dpp top`` and ``dpp scale``: the operator's view of a running cluster, and its pool size.

Owns the two commands, their flags and their rendering (the flags of ``dpp master``,
``dpp worker`` and ``dpp up`` live in :mod:`dpp_server.cli`). ``dpp top`` polls the master's
``MonitorService.GetClusterStatus`` and draws workers (rows/s, MB/s, stage shares), ranks
(rows/s, stall share) and the bottleneck verdict with rich; ``--json`` prints one status as JSON
instead (the same fields as the RPC). ``dpp scale N`` calls ``SetWorkerTarget``: ``dpp up``
follows it (see :mod:`dpp_server.pool`); ``dpp scale auto`` hands the count back to the
autoscaler. Imports rich only when drawing.

Both connect with the connection file ``--connection`` (default ``$DPP_CONNECTION``: an
identity of role admin); without one they speak plaintext, and ``dpp top`` then shows in red
that the cluster it reached runs ``--insecure``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from dpp_proto import master_pb2
from dpp_proto.auth import Connection, ConnectionFileError, load_connection, open_channel

STAGE_ORDER = ("read", "filter", "transform", "batch", "serialize", "wait_consumer", "idle")


# -- the commands' flags ----------------------------------------------------------------------


def add_observability_commands(sub: Any, default_master: str) -> None:
    """Registers ``dpp top`` and ``dpp scale`` (``default_master``: where they look by default)."""
    connection_help = (
        "connection file (address, CA, client certificate, admin token) [$DPP_CONNECTION]; "
        "none: plaintext, for an --insecure cluster"
    )
    master_help = f"host:port of the master (default: the connection file's, else {default_master})"
    top = sub.add_parser("top", help="live view of a cluster: workers, ranks, verdict")
    top.add_argument("--master", default=None, help=master_help)
    top.add_argument("--connection", default=None, help=connection_help)
    top.add_argument("--interval-s", type=float, default=1.0)
    top.add_argument("--once", action="store_true", help="draw once and exit")
    top.add_argument("--json", action="store_true", help="print one status as JSON and exit")
    top.set_defaults(func=cmd_top)

    scale = sub.add_parser("scale", help="set the worker count of a running `dpp up`")
    scale.add_argument("workers", help="a count, or 'auto' to clear the operator's target")
    scale.add_argument("--master", default=None, help=master_help)
    scale.add_argument("--connection", default=None, help=connection_help)
    scale.set_defaults(func=cmd_scale, default_master=default_master)
    top.set_defaults(default_master=default_master)


# -- commands -------------------------------------------------------------------------------


def _target(args: argparse.Namespace) -> tuple[str, Connection | None]:
    """The master's address and the credentials, from the flags and $DPP_CONNECTION."""
    try:
        conn = load_connection(args.connection)
    except ConnectionFileError as exc:
        raise SystemExit(f"dpp {args.command}: {exc}") from None
    address = args.master or (conn.address if conn else "") or args.default_master
    return address, conn


def _stub(master: str, connection: Connection | None = None) -> Any:
    from dpp_proto import master_pb2_grpc

    return master_pb2_grpc.MonitorServiceStub(open_channel(master, connection))


def fetch_status(
    master: str, timeout_s: float = 5.0, connection: Connection | None = None
) -> master_pb2.GetClusterStatusResponse:
    response: master_pb2.GetClusterStatusResponse = _stub(master, connection).GetClusterStatus(
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
    master, conn = _target(args)
    args.master = master
    _stub(master, conn).SetWorkerTarget(
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
    master, conn = _target(args)
    insecure = conn is None or conn.insecure
    if args.json:
        status = status_to_dict(fetch_status(master, connection=conn))
        status["insecure"] = insecure
        sys.stdout.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
        return 0
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if args.once:
        console.print(render(fetch_status(master, connection=conn), master, insecure))
        return 0
    with Live(console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                live.update(render(fetch_status(master, connection=conn), master, insecure))
                time.sleep(args.interval_s)
        except KeyboardInterrupt:
            return 0


def _ttl(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds > 0 else "never"


def _pct(x: float) -> str:
    return f"{100 * x:4.0f}%"


def cache_hit_rate(hits: int, misses: int) -> str:
    """Share of split lookups the worker cache answered since the worker started, with the
    count ("-" without lookups: no cache, or nothing asked yet)."""
    lookups = hits + misses
    return f"{_pct(hits / lookups)} of {lookups}" if lookups else "-"


def render(
    status: master_pb2.GetClusterStatusResponse, master: str = "", insecure: bool = False
) -> Any:
    """The live view: a header, the workers table, the ranks table and the verdict; first, in
    red, a warning when the cluster answered without credentials (it runs --insecure)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    head = (
        f"master {master}  window {status.window_s:.1f}s  sessions {status.sessions} "
        f"(ttl {_ttl(status.session_ttl_s)}, {status.sessions_expired} expired)  "
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
    parts: list[Any] = [
        head,
        workers,
        ranks,
        *([failed] if failures else []),
        Panel(kind + verdict, title="verdict"),
    ]
    if insecure:
        warning = (
            "INSECURE: this cluster answered without TLS or credentials (--insecure): anyone "
            "who reaches it can read every session and control it"
        )
        parts.insert(0, Panel(warning, style="bold red"))
    return Group(*parts)
