"""The ``dpp`` command: ``gen``, ``cluster``, ``master``, ``worker``, ``up`` and ``demo``.

Owns argument parsing, logging configuration and process signals. The one place that reads
``DPP_*`` environment variables (:func:`_env`), so every setting has one default, one flag and
one override.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from dpp_server.demo import add_arguments as add_demo_arguments
from dpp_server.top import (
    add_master_observability_args,
    add_metrics_port_arg,
    add_observability_commands,
    add_up_scaling_args,
)

logger = logging.getLogger("dpp")


def _env(name: str, default: Any) -> Any:
    """``DPP_<NAME>`` from the environment, converted to the type of ``default``."""
    raw = os.environ.get(f"DPP_{name.upper()}")
    if raw is None:
        return default
    return type(default)(raw)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else _env("log_level", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def _storage_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--storage-option expects KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def _wait_for_signal() -> int:
    """Blocks until SIGINT or SIGTERM; returns the signal number."""
    received: list[int] = []
    event = threading.Event()

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        event.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    event.wait()
    return received[0]


def cmd_gen(args: argparse.Namespace) -> int:
    from storage import GenConfig, generate_table

    config = GenConfig(
        rows=args.rows,
        days=args.days,
        dense=args.dense,
        sparse=args.sparse,
        rows_per_session=args.rows_per_session,
        user_sparse_share=args.user_sparse_share,
        max_list_len=args.max_list_len,
        max_user_list_len=args.max_user_list_len,
        row_group_rows=args.row_group_rows,
        rows_per_file=args.rows_per_file,
        seed=args.seed,
        clustered=not args.no_cluster,
    )
    summary = generate_table(
        args.uri, config, _storage_options(args.storage_option), progress=not args.quiet
    )
    print(
        f"wrote {summary.rows} rows in {summary.files} files ({summary.bytes / 1e6:.1f} MB) "
        f"to {args.uri} in {summary.seconds:.1f}s"
    )
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from storage.rewrite import cluster_table

    summary = cluster_table(
        args.src,
        args.dst,
        args.by,
        _storage_options(args.storage_option),
        dictionary_lists=args.dictionary_lists,
    )
    ratio = summary.source_bytes / summary.bytes if summary.bytes else 0.0
    print(
        f"clustered {summary.rows} rows of {summary.partitions} partitions by {args.by} into "
        f"{summary.files} files: {summary.source_bytes / 1e6:.1f} MB -> "
        f"{summary.bytes / 1e6:.1f} MB ({ratio:.2f}x smaller) in {summary.seconds:.1f}s"
    )
    return 0


def cmd_master(args: argparse.Namespace) -> int:
    from dpp_server.local_cluster import write_ready_file
    from dpp_server.master import Master, MasterConfig
    from dpp_server.master_service import MasterServer
    from dpp_server.monitor_service import MasterObservability
    from dpp_server.scaling import ScalerConfig

    config = MasterConfig(
        heartbeat_interval_s=args.heartbeat_interval_s,
        lease_timeout_s=args.lease_timeout_s,
    )
    journal = None
    if args.journal_dir:
        from dpp_server.journal import FileJournal

        journal = FileJournal(args.journal_dir)
    # Replays the journal before the port opens: meanwhile callers get UNAVAILABLE and retry.
    master = Master(config, journal=journal)
    obs = MasterObservability(
        master,
        args.host,
        args.metrics_port,
        ScalerConfig(min_workers=args.min_workers, max_workers=args.max_workers),
        initial_workers=args.initial_workers,
        monitor_interval_s=args.monitor_interval_s,
    )
    server = MasterServer(
        master,
        host=args.host,
        port=args.port,
        interceptors=obs.interceptors,
        add_services=obs.add_services,
    )
    server.start()
    obs.start()
    print(f"dpp master listening on {server.address}", flush=True)
    if args.ready_file:
        write_ready_file(args.ready_file, server.address, **obs.ready_extra())
    signum = _wait_for_signal()
    logger.info("received signal %d; stopping", signum)
    server.stop()
    obs.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from dpp_server.local_cluster import write_ready_file
    from dpp_server.metrics import WorkerObservability
    from dpp_server.worker import WorkerConfig
    from dpp_server.worker_service import WorkerServer

    config = WorkerConfig(
        pipeline_threads=args.threads,
        max_buffer_bytes=args.buffer_mb << 20,
        read_batch_rows=args.read_batch_rows,
    )
    obs = WorkerObservability(args.host, args.metrics_port)
    server = WorkerServer(
        args.master,
        config,
        host=args.host,
        port=args.port,
        advertise_host=args.advertise_host,
        observe=obs.observe,
    )
    obs.bind(server.worker)
    server.start()
    print(f"dpp worker {server.worker.worker_id} listening on {server.address}", flush=True)
    if args.ready_file:
        write_ready_file(args.ready_file, server.address, **obs.ready_extra())
    signum = _wait_for_signal()
    # SIGTERM (an operator, Kubernetes, `dpp scale`) drains: splits in hand are finished and
    # handed over. SIGINT (Ctrl-C, stopping a whole local cluster) stops at once.
    drain_s = args.drain_timeout_s if signum == signal.SIGTERM else 0.0
    logger.info("received signal %d; %s", signum, "draining" if drain_s else "stopping")
    server.stop(drain_timeout_s=drain_s)
    obs.stop()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from dpp_server.local_cluster import LocalCluster, write_ready_file
    from dpp_server.pool import start_local_controller

    scaler_args = ["--min-workers", str(args.min_workers), "--max-workers", str(args.max_workers)]
    cluster = LocalCluster(
        workers=args.workers,
        pipeline_threads=args.threads,
        master_args=(["--port", str(args.port)] if args.port else [])
        + [*scaler_args, "--initial-workers", str(args.workers)],
    )
    controller = None
    try:
        cluster.start()
        # `dpp scale N` (and the autoscaler with --autoscale) reach the pool through the master.
        controller = start_local_controller(
            cluster,
            autoscale=args.autoscale,
            initial=args.workers,
            min_workers=args.min_workers,
            max_workers=args.max_workers,
        )
        print(f"dpp cluster up: master at {cluster.master_address}", flush=True)
        for worker in cluster.workers:
            print(f"  worker at {worker.address} (pid {worker.process.pid})", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        if args.ready_file:
            write_ready_file(args.ready_file, cluster.master_address, master=cluster.master_address)
        _wait_for_signal()
    finally:
        if controller is not None:
            controller.stop()
        cluster.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dpp_server.demo import run_args

    return run_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("gen", help="write a synthetic DLRM-shaped table")
    gen.add_argument("uri", help="table URI: a path, file://, memory:// or s3://")
    gen.add_argument("--rows", type=int, default=1_000_000)
    gen.add_argument("--days", type=int, default=3, help="partitions ds=2026-01-01...")
    gen.add_argument("--dense", type=int, default=13, help="dense float features")
    gen.add_argument("--sparse", type=int, default=26, help="sparse id-list features")
    gen.add_argument(
        "--rows-per-session",
        type=float,
        default=4.0,
        help="mean rows per user session (their user-side features are identical)",
    )
    gen.add_argument("--user-sparse-share", type=float, default=0.5)
    gen.add_argument(
        "--max-list-len", type=int, default=30, help="most ids per list (mean about a third)"
    )
    gen.add_argument(
        "--max-user-list-len",
        type=int,
        default=None,
        help="most ids per user-side list, e.g. 100 for history-like features "
        "(default: --max-list-len)",
    )
    gen.add_argument("--row-group-rows", type=int, default=32_768)
    gen.add_argument("--rows-per-file", type=int, default=131_072)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--no-cluster",
        action="store_true",
        help="interleave sessions (rows in arrival order) instead of keeping them adjacent",
    )
    gen.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=cmd_gen)

    cluster = sub.add_parser(
        "cluster",
        help="rewrite a table with the rows sharing a key (a session) adjacent per partition",
    )
    cluster.add_argument("src", help="table URI to read")
    cluster.add_argument("dst", help="table URI to write (must be empty or absent)")
    cluster.add_argument("--by", required=True, help="key column, e.g. session_id")
    cluster.add_argument(
        "--dictionary-lists",
        action="store_true",
        help="dictionary-encode list columns too: larger files that decode faster where "
        "lists are short (default: plain ids, which zstd stores about once per session)",
    )
    cluster.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    cluster.set_defaults(func=cmd_cluster)

    master = sub.add_parser("master", help="run a master")
    master.add_argument("--host", default=_env("host", "127.0.0.1"))
    master.add_argument("--port", type=int, default=_env("master_port", 50051))
    master.add_argument(
        "--heartbeat-interval-s", type=float, default=_env("heartbeat_interval_s", 1.0)
    )
    master.add_argument("--lease-timeout-s", type=float, default=_env("lease_timeout_s", 10.0))
    master.add_argument(
        "--journal-dir",
        default=_env("journal_dir", ""),
        help="keep the journal here: a restarted master resumes every session from it "
        "(empty: in memory only, state is lost with the process)",
    )
    master.add_argument("--ready-file", default="", help="write the bound address here")
    add_master_observability_args(master, _env)
    master.set_defaults(func=cmd_master)

    worker = sub.add_parser("worker", help="run a worker")
    worker.add_argument("--master", default=_env("master", "127.0.0.1:50051"))
    worker.add_argument("--host", default=_env("host", "127.0.0.1"))
    worker.add_argument("--port", type=int, default=_env("worker_port", 0))
    worker.add_argument(
        "--advertise-host", default=_env("advertise_host", ""), help="host clients dial"
    )
    worker.add_argument("--threads", type=int, default=_env("pipeline_threads", 2))
    worker.add_argument("--buffer-mb", type=int, default=_env("buffer_mb", 256))
    worker.add_argument("--read-batch-rows", type=int, default=_env("read_batch_rows", 65_536))
    worker.add_argument(
        "--drain-timeout-s",
        type=float,
        default=_env("drain_timeout_s", 30.0),
        help="on SIGTERM/SIGINT: time to finish splits in hand and hand frames to clients",
    )
    worker.add_argument("--ready-file", default="")
    add_metrics_port_arg(worker, _env)
    worker.set_defaults(func=cmd_worker)

    up = sub.add_parser("up", help="run a local cluster: a master and N workers")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--threads", type=int, default=2, help="pipeline threads per worker")
    up.add_argument("--port", type=int, default=0, help="master port (0: any free port)")
    up.add_argument("--ready-file", default="")
    add_up_scaling_args(up)
    up.set_defaults(func=cmd_up)

    add_observability_commands(sub)

    demo = sub.add_parser("demo", help="generate a table, start a cluster, train a DLRM")
    add_demo_arguments(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dpp_server.local_cluster import die_with_parent

    die_with_parent()
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
