"""The ``dpp`` command: ``gen``, ``cluster``, ``master``, ``worker``, ``up`` and ``demo``.

Owns argument parsing, logging configuration and process signals. The flags of ``dpp master``,
``dpp worker`` and ``dpp up`` are derived from the settings dataclasses (:class:`MasterConfig`,
:class:`WorkerConfig`, :class:`ScalerConfig` and this module's process settings) by one helper,
:func:`add_config_flags`: a field gives its flag (``--lease-timeout-s``), its default, its help
(the class docstring's line for it) and its ``DPP_<NAME>`` environment override, read in one
place (:func:`_env`). So every setting has one default, one flag and one override, and
``dpp master --help`` lists them all. ``dpp top`` and ``dpp scale`` live in :mod:`dpp_server.top`,
``dpp stats`` and ``dpp shard-plan`` in :mod:`dpp_server.stats_command`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import os
import re
import signal
import sys
import threading
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dpp_server.demo import add_arguments as add_demo_arguments
from dpp_server.stats_command import add_stats_commands
from dpp_server.top import add_observability_commands

if TYPE_CHECKING:
    from dpp_server.local_cluster import LocalCluster

logger = logging.getLogger("dpp")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _env(name: str, default: Any) -> Any:
    """``DPP_<NAME>`` from the environment, converted to the type of ``default``."""
    raw = os.environ.get(f"DPP_{name.upper()}")
    if raw is None:
        return default
    if isinstance(default, bool):
        if raw.strip().lower() not in _TRUE | _FALSE:
            raise SystemExit(f"DPP_{name.upper()}={raw!r}: expected one of 1/0, true/false")
        return raw.strip().lower() in _TRUE
    try:
        return type(default)(raw)
    except ValueError:
        raise SystemExit(f"DPP_{name.upper()}={raw!r}: expected {type(default).__name__}") from None


# -- settings as flags ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one settings field appears on the command line, where the derived form won't do.

    Attributes:
        names: the option strings (default: ``--field-name``).
        env: the environment variable without ``DPP_`` (default: the field name); None: none.
        scale: the field holds the flag's value times this (``--buffer-mb`` for bytes).
        unit: the flag's unit when it differs from the field's, e.g. ``MiB``.
    """

    names: tuple[str, ...] = ()
    env: str | None = ""
    scale: int = 1
    unit: str = ""


@dataclasses.dataclass(frozen=True)
class MasterProcess:
    """The master process: its address, journal and observability.

    (Beside :class:`MasterConfig` and the scaler's settings, which are the master's own.)

    Attributes:
        host: address to bind; 0.0.0.0 serves other machines.
        port: the master's gRPC port.
        journal_dir: keep the journal here: a restarted master resumes every session from it
            (empty: in memory only, state is lost with the process).
        metrics_port: serve Prometheus /metrics on this port (0: any free port, announced in
            the ready file; -1: no metrics).
        initial_workers: the autoscaler's desired count before it has measured anything.
        monitor_interval_s: sampling window of the verdict and the autoscaler: shorter reacts
            sooner, longer is steadier.
        ready_file: write the bound address (and the metrics address) here, as JSON.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    journal_dir: str = ""
    metrics_port: int = 0
    initial_workers: int = 1
    monitor_interval_s: float = 5.0
    ready_file: str = ""


#: Where workers, ``dpp top`` and ``dpp scale`` find a master by default.
DEFAULT_MASTER = f"127.0.0.1:{MasterProcess.port}"


@dataclasses.dataclass(frozen=True)
class WorkerProcess:
    """The worker process: its master, address, draining and observability.

    (Beside :class:`WorkerConfig`, the worker's own settings.)

    Attributes:
        master: host:port of the master.
        host: address to bind; 0.0.0.0 serves other machines.
        port: the worker's gRPC port (0: any free port).
        data_port: the data plane's port (StreamBatches over TCP, TLS unless --insecure;
            cheaper for the trainer than gRPC): 0: any free port; -1: none, trainers stream
            over gRPC.
        advertise_host: host clients dial (empty: the bound host).
        drain_timeout_s: on SIGTERM: time to finish splits in hand and hand frames to clients.
        metrics_port: serve Prometheus /metrics on this port (0: any free port, announced in
            the ready file; -1: no metrics).
        ready_file: write the bound address (and the metrics address) here, as JSON.
    """

    master: str = DEFAULT_MASTER
    host: str = "127.0.0.1"
    port: int = 0
    data_port: int = 0
    advertise_host: str = ""
    drain_timeout_s: float = 30.0
    metrics_port: int = 0
    ready_file: str = ""


@dataclasses.dataclass(frozen=True)
class UpProcess:
    """A local cluster: a master and its workers, as child processes.

    (Beside the workers' pipeline threads and the scaler's bounds.)

    Attributes:
        workers: workers started at once.
        port: master port (0: any free port).
        autoscale: follow the master's desired worker count (dpp_desired_workers).
        ready_file: write the master's address (and the connection file's path) here, as JSON.
        state_dir: keep the cluster's files here: its throwaway CA, certificates, tokens and
            the connection file (empty: a fresh temporary folder, removed on exit).
        insecure: no TLS and no tokens (a trusted lab only; loud in logs and `dpp top`).
        allow_table: more [TENANT=]PREFIX rules beside the user's own places (home, the
            current folder, the temp folder), comma-separated.
        allow_endpoint: [TENANT=]URL storage endpoints specs may name, comma-separated.
    """

    workers: int = 2
    port: int = 0
    autoscale: bool = False
    ready_file: str = ""
    state_dir: str = ""
    insecure: bool = False
    allow_table: str = ""
    allow_endpoint: str = ""


_NO_ENV = Flag(env=None)
#: The flags whose name, environment variable or unit differ from the field's.
#: By class name: the server's settings classes are imported only for the command that runs.
FLAGS: Mapping[str, Mapping[str, Flag]] = {
    "MasterProcess": {"port": Flag(env="master_port"), "ready_file": _NO_ENV},
    "WorkerProcess": {"port": Flag(env="worker_port"), "ready_file": _NO_ENV},
    "UpProcess": {"port": Flag(env="master_port"), "ready_file": _NO_ENV},
    "WorkerConfig": {
        "pipeline_threads": Flag(names=("--threads", "--pipeline-threads")),
        "max_buffer_bytes": Flag(
            names=("--buffer-mb",), env="buffer_mb", scale=1 << 20, unit="MiB"
        ),
    },
}


def field_docs(cls: type[Any]) -> dict[str, str]:
    """Each field's description from the Google-style ``Attributes:`` section of a class's
    docstring (continuation lines joined)."""
    doc = inspect.getdoc(cls) or ""
    _, found, section = doc.partition("Attributes:\n")
    docs: dict[str, str] = {}
    current = ""
    for line in section.splitlines() if found else ():
        entry = re.match(r"^ {4}(\w+): (.*)$", line)
        if entry:
            current = entry[1]
            docs[current] = entry[2]
        elif current and line.startswith(" " * 8):
            docs[current] += " " + line.strip()
        elif line.strip():
            break
    return docs


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type[Any], only: Collection[str] | None = None
) -> None:
    """Adds one flag per field of the dataclass ``cls`` (or of the fields in ``only``): its
    default from the field (overridden by ``DPP_<NAME>``), its help from the docstring, the
    variable and default shown in ``--help``. The parsed value lands in ``args.<field>``."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    summary = (inspect.getdoc(cls) or cls.__name__).splitlines()[0].rstrip(".")
    group = parser.add_argument_group(f"{summary} ({cls.__name__})")
    for field in dataclasses.fields(cls):
        if only is not None and field.name not in only:
            continue
        flag = FLAGS.get(cls.__name__, {}).get(field.name, Flag())
        default: Any = field.default
        if default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name} needs a default to become a flag")
        if flag.scale != 1:
            default //= flag.scale
        env = field.name if flag.env == "" else flag.env
        if env is not None:
            default = _env(env, default)
        text = (docs.get(field.name) or field.name).replace("%", "%%")
        if flag.unit:
            text += f" In {flag.unit}."
        where = f"${'DPP_' + env.upper()}, " if env is not None else ""
        text += f" [{where}default: %(default)s]"
        names = flag.names or (f"--{field.name.replace('_', '-')}",)
        metavar = names[0].removeprefix("--").replace("-", "_").upper()
        if hints[field.name] is bool:
            group.add_argument(
                *names, dest=field.name, action="store_true", default=default, help=text
            )
        else:
            kind = hints[field.name]
            group.add_argument(
                *names, dest=field.name, type=kind, default=default, metavar=metavar, help=text
            )


_Config = typing.TypeVar("_Config")


def config_from_args(cls: type[_Config], args: argparse.Namespace) -> _Config:
    """The dataclass ``cls`` with every field that has a flag taken from ``args``."""
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if hasattr(args, field.name):
            scale = FLAGS.get(cls.__name__, {}).get(field.name, Flag()).scale
            values[field.name] = getattr(args, field.name) * scale
    return cls(**values)


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
    # Waits in slices: the kernel may deliver the signal to any thread, and Python runs the
    # handler only when the main thread wakes; a lock wait without a timeout might never wake
    # (seen as a worker that ignored SIGTERM while its data port's threads were busy).
    while not event.wait(0.2):
        pass
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


def _security(args: argparse.Namespace, role: str) -> Any:
    from dpp_server.auth import SecuritySettings

    security = config_from_args(SecuritySettings, args)
    try:
        security.check(role)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return security


def cmd_master(args: argparse.Namespace) -> int:
    from dpp_server.local_cluster import write_ready_file
    from dpp_server.master import Master, MasterConfig
    from dpp_server.master_service import MasterServer
    from dpp_server.monitor_service import MasterObservability
    from dpp_server.policy import DataPolicy, PolicySettings
    from dpp_server.scaling import ScalerConfig
    from dpp_server.state import Journal

    config = config_from_args(MasterConfig, args)
    security = _security(args, "master")
    policy = DataPolicy(config_from_args(PolicySettings, args), open_by_default=security.insecure)
    journal: Journal | None = None
    if args.journal_dir:
        from dpp_server.journal import FileJournal
        from dpp_server.secret_store import SealedJournal, SecretBox

        # Storage option values are journaled encrypted, with a key kept beside the journal.
        box = SecretBox(os.path.join(args.journal_dir, "journal.key"))
        journal = SealedJournal(FileJournal(args.journal_dir), box)
    # Replays the journal before the port opens: meanwhile callers get UNAVAILABLE and retry.
    master = Master(config, journal=journal)
    obs = MasterObservability(
        master,
        args.host,
        args.metrics_port,
        config_from_args(ScalerConfig, args),
        initial_workers=args.initial_workers,
        monitor_interval_s=args.monitor_interval_s,
    )
    server = MasterServer(
        master,
        host=args.host,
        port=args.port,
        interceptors=obs.interceptors,
        add_services=obs.add_services,
        security=security,
        policy=policy,
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
    from dpp_server.budget import MemoryPlan, configure_allocators
    from dpp_server.local_cluster import write_ready_file
    from dpp_server.metrics import WorkerObservability
    from dpp_server.worker import WorkerConfig
    from dpp_server.worker_service import WorkerServer

    config = config_from_args(WorkerConfig, args)
    try:
        MemoryPlan.of(config.memory_mb, config.pipeline_threads, config.max_buffer_bytes)
    except ValueError as exc:
        raise SystemExit(f"dpp worker: {exc}") from None
    configure_allocators(config.memory_mb)
    security = _security(args, "worker")
    obs = WorkerObservability(args.host, args.metrics_port)
    server = WorkerServer(
        args.master,
        config,
        host=args.host,
        port=args.port,
        advertise_host=args.advertise_host,
        observe=obs.observe,
        security=security,
        data_port=args.data_port,
    )
    obs.bind(server.worker)
    server.start()
    data = f", data plane at {server.data_address}" if server.data_address else ""
    print(f"dpp worker {server.worker.worker_id} listening on {server.address}{data}", flush=True)
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
    from dpp_server.policy import local_prefixes
    from dpp_server.pool import start_local_controller

    scaler_args = ["--min-workers", str(args.min_workers), "--max-workers", str(args.max_workers)]
    cluster = LocalCluster(
        workers=args.workers,
        pipeline_threads=args.pipeline_threads,
        master_args=(["--port", str(args.port)] if args.port else [])
        + [*scaler_args, "--initial-workers", str(args.workers)],
        work_dir=args.state_dir or None,
        secure=not args.insecure,
        allow_table=",".join(r for r in (local_prefixes(), args.allow_table) if r),
        allow_endpoint=args.allow_endpoint,
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
        print(_up_summary(cluster), flush=True)
        if args.ready_file:
            processes = [p for p in (cluster.master, *cluster.workers) if p is not None]
            write_ready_file(
                args.ready_file,
                cluster.master_address,
                master=cluster.master_address,
                metrics=",".join(p.metrics_address for p in processes if p.metrics_address),
                connection=str(cluster.connection_file or ""),
            )
        _wait_for_signal()
    finally:
        if controller is not None:
            controller.stop()
        cluster.stop()
    return 0


def _up_summary(cluster: LocalCluster) -> str:
    """What ``dpp up`` tells its user: where to point a trainer, ``dpp top`` and Prometheus."""
    master = cluster.master
    lines = [
        f"dpp cluster up: master at {cluster.master_address}",
        f"  trainer: DppLoader({cluster.master_address!r}, spec)"
        + (" with $DPP_CONNECTION set (below)" if cluster.connection_file else ""),
        f"  live view: dpp top --master {cluster.master_address}",
        "  Prometheus /metrics:",
    ]
    if master is not None:
        lines.append(f"    master  http://{master.metrics_address or '(none)'}/metrics")
    for worker in cluster.workers:
        lines.append(
            f"    worker  http://{worker.metrics_address or '(none)'}/metrics  "
            f"(streams at {worker.address}, pid {worker.process.pid})"
        )
    if cluster.connection_file:
        lines.append(f"secured (TLS, tokens): export DPP_CONNECTION={cluster.connection_file}")
    else:
        lines.append("INSECURE (--insecure): no TLS, no authentication")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def cmd_token(args: argparse.Namespace) -> int:
    """Issues a token: prints it once, appends its hash line to the token file."""
    from dpp_proto.auth import token_sha256
    from dpp_server.auth import TokenFile
    from dpp_server.pki import new_token

    token = new_token()
    line = f"{token_sha256(token)} {args.roles} {args.name} {args.tenant}".rstrip()
    try:
        TokenFile.parse(line, "the new line")  # refuses unknown roles, a trainer without tenant
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if args.token_file:
        with open(args.token_file, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    # Command output: the token is shown once and stored nowhere in clear.
    sys.stdout.write(f"{token}\n" if args.token_file else f"{token}\n{line}\n")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    """Makes a CA, a server certificate for the given hosts, tokens and a connection file."""
    from dpp_server.pki import make_credentials

    hosts = [h for h in args.host if h] or ["127.0.0.1", "localhost"]
    credentials = make_credentials(args.dir, hosts=hosts, tenant=args.tenant, user=args.user)
    sys.stdout.write(
        f"wrote a CA, a certificate for {', '.join(hosts)}, tokens and a connection file to "
        f"{credentials.directory} (0600)\n  master/worker flags: "
        f"{' '.join(credentials.server_args('worker'))}\n"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dpp_server.demo import run_args

    return run_args(args)


_SECURITY = ("insecure", "tls_cert", "tls_key", "tls_ca", "token_file", "auth_token_file")

_ENV_NOTE = (
    "Each setting also comes from the DPP_* environment variable shown beside it; a flag "
    "wins over the variable."
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``dpp`` parser. ``command``: the command about to run (only its flags are built);
    None: every command's flags."""
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

    # The server's settings classes come with the master's and the worker's modules (polars,
    # pyarrow, ...): their flags are built only for the command that runs, so that `dpp top`
    # and `dpp gen` start fast.
    server = command is None or command in ("master", "worker", "up")
    master = sub.add_parser("master", help="run a master", description="Run a master. " + _ENV_NOTE)
    worker = sub.add_parser("worker", help="run a worker", description="Run a worker. " + _ENV_NOTE)
    up = sub.add_parser(
        "up",
        help="run a local cluster: a master and N workers",
        description="Run a local cluster: a master and N workers. " + _ENV_NOTE,
    )
    if server:
        from dpp_server.auth import SecuritySettings
        from dpp_server.master import MasterConfig
        from dpp_server.policy import PolicySettings
        from dpp_server.scaling import ScalerConfig
        from dpp_server.worker import WorkerConfig

        add_config_flags(master, MasterProcess)
        add_config_flags(master, MasterConfig)
        add_config_flags(master, ScalerConfig)
        add_config_flags(
            master, SecuritySettings, only=[f for f in _SECURITY if f != "auth_token_file"]
        )
        add_config_flags(master, PolicySettings)
        add_config_flags(worker, WorkerProcess)
        add_config_flags(worker, WorkerConfig)
        add_config_flags(worker, SecuritySettings)
        add_config_flags(up, UpProcess)
        add_config_flags(up, WorkerConfig, only=("pipeline_threads",))
        add_config_flags(up, ScalerConfig, only=("min_workers", "max_workers"))
    master.set_defaults(func=cmd_master)
    worker.set_defaults(func=cmd_worker)
    up.set_defaults(func=cmd_up)

    add_observability_commands(sub, DEFAULT_MASTER)

    add_stats_commands(sub)
    token = sub.add_parser(
        "token", help="issue a token: print it once, append its hash to a token file"
    )
    token.add_argument("--roles", required=True, help="trainer, worker, admin (comma-separated)")
    token.add_argument("--name", required=True, help="the identity's name (shown in errors, logs)")
    token.add_argument("--tenant", default="", help="the tenant (required for trainers)")
    token.add_argument("--token-file", default="", help="append the hash line here")
    token.set_defaults(func=cmd_token)

    certs = sub.add_parser(
        "certs", help="make a CA, server certificate, tokens and a connection file (0600)"
    )
    certs.add_argument("dir", help="folder to write (created)")
    certs.add_argument(
        "--host", action="append", default=[], help="a name or IP the servers are reached by"
    )
    certs.add_argument("--tenant", default="default", help="the first user's tenant")
    certs.add_argument("--user", default="user", help="the first user's name")
    certs.set_defaults(func=cmd_certs)

    demo = sub.add_parser("demo", help="generate a table, start a cluster, train a DLRM")
    add_demo_arguments(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dpp_server.local_cluster import die_with_parent

    die_with_parent()
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command).parse_args(argv)
    _configure_logging(args.verbose)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
