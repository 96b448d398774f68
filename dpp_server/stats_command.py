"""``dpp stats`` and ``dpp shard-plan``: the commands around the stats session (docs/stats.md).

Owns the stats session's client side: the spec it measures (from a spec file, or every
column of a table), starting a local cluster when no master is given (as ``dpp up`` does),
creating the session, the progress bar (rich) and writing the outputs
(:func:`dpp_server.stats.commands.write_outputs`). The session itself is the master's and the
workers' (:meth:`dpp_server.master.Master.report_split_stats`,
:mod:`dpp_server.produce_stats`): planning, leases and exactly-once accounting are those of
any session. ``dpp shard-plan`` is :func:`dpp_server.stats.commands.run_shard_plan`.
Must never import torch or the client.

Worked example (``dpp stats /data/t --partition-filter "ds >= '2026-01-02'" --out s.json``):

1. No ``--master``: a local cluster starts (a master and ``--workers`` workers).
2. The table's schema gives the features: every id-list (or integer list) column is a sparse
   feature, every numeric column a dense one, all without ops. A spec file gives its own.
3. ``CreateSession`` with ``stats`` options: the master plans splits as for training and opens
   the session's one stream; workers lease splits, sketch them and hand the sketches in.
4. The command polls ``GetStatsReport`` twice a second and draws the splits done. A worker
   killed meanwhile loses its lease; its splits are produced again and count once.
5. Once every split is in, the master merges them (split-id order) and returns the report;
   the command writes ``s.json`` (and ``--png``), prints boundaries, stops the local cluster.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dpp_proto import spec_pb2
from dpp_proto.auth import Connection, load_connection

if TYPE_CHECKING:
    from dpp_proto import master_pb2

__all__ = ["add_stats_commands", "spec_from_file", "stats_spec", "table_spec"]

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KINDS = {"dense": spec_pb2.FEATURE_KIND_DENSE, "sparse": spec_pb2.FEATURE_KIND_SPARSE}
#: Rows per batch in a stats spec: a stats session cuts no batches, but a spec needs one.
_STATS_BATCH_SIZE = 65_536


def add_stats_commands(sub: Any) -> None:
    """Registers ``dpp stats`` and ``dpp shard-plan``."""
    from dpp_server.stats.commands import add_report_arguments, add_shard_plan_arguments

    stats = sub.add_parser(
        "stats",
        help="measure a table's features on the worker pool (sketches, merged into stats.json)",
        description="Run a stats session: every worker sketches its splits after the spec's "
        "ops; the master merges them. See docs/stats.md.",
    )
    stats.add_argument(
        "spec_or_table",
        metavar="SPEC_OR_TABLE",
        help="a spec file (.yaml, .yml, .json) or a table URI (every column measured, no ops)",
    )
    stats.add_argument("--master", help="a running master (default: start a local cluster)")
    stats.add_argument(
        "--partition-filter", help="e.g. \"ds >= '2026-01-02'\" (replaces the spec's)"
    )
    stats.add_argument(
        "--sample-rate",
        type=float,
        default=1.0,
        help="share of each split's rows sketched, in (0, 1] (counts then describe the sample)",
    )
    stats.add_argument(
        "--collisions",
        action="store_true",
        help="measure sigrid_hash collisions from raw ids (about 1.6x the stats pass's cost)",
    )
    stats.add_argument("--workers", type=int, default=2, help="workers of the local cluster")
    stats.add_argument("--threads", type=int, default=2, help="pipeline threads per local worker")
    stats.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    stats.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_report_arguments(stats)
    stats.set_defaults(func=cmd_stats)

    plan = sub.add_parser(
        "shard-plan",
        help="place embedding tables from stats.json (RecShard-style) beside a size baseline",
    )
    add_shard_plan_arguments(plan)
    plan.set_defaults(func=cmd_shard_plan)


# -- the spec measured ----------------------------------------------------------------------


def spec_from_file(path: str) -> spec_pb2.SessionSpec:
    """A spec file in the YAML/JSON form of ``docs/spec.md`` (ops as ``{op: name, param:
    value}``), as the proto the master validates (it names any bad field)."""
    from google.protobuf import json_format

    from dpp_server.errors import StatsError

    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - pyyaml is in the server extra
            raise StatsError(f"reading {path} needs pyyaml; pip install pyyaml") from exc
        data = yaml.safe_load(text)
    if not isinstance(data, Mapping):
        raise StatsError(f"{path}: a spec file holds a mapping, got {type(data).__name__}")
    data = dict(data)
    features = []
    for i, raw in enumerate(data.pop("features", None) or []):
        if not isinstance(raw, Mapping):
            raise StatsError(f"{path}: features[{i}] must be a mapping")
        feature = dict(raw)
        kind = feature.pop("kind", "")
        if kind not in _KINDS:
            raise StatsError(f"{path}: features[{i}].kind must be dense or sparse, got {kind!r}")
        ops = []
        for j, op in enumerate(feature.pop("ops", None) or []):
            if not isinstance(op, Mapping) or "op" not in op:
                raise StatsError(f"{path}: features[{i}].ops[{j}] must be {{op: NAME, ...}}")
            params = {k: v for k, v in op.items() if k != "op"}
            ops.append({"op": op["op"], "params": params})
        features.append({**feature, "kind": _KINDS[kind], "ops": ops})
    msg = spec_pb2.SessionSpec()
    try:
        json_format.ParseDict({**data, "features": features}, msg)
    except json_format.ParseError as exc:
        raise StatsError(f"{path}: {exc}") from exc
    return msg


def table_spec(uri: str, storage_options: Mapping[str, str]) -> spec_pb2.SessionSpec:
    """A spec measuring every column of a table as it is: integer lists are sparse features,
    numbers and booleans dense ones (partition columns and other types are left out)."""
    import pyarrow as pa

    from dpp_server.errors import StatsError
    from storage import Table

    table = Table.open(uri, dict(storage_options))
    msg = spec_pb2.SessionSpec(table_uri=uri, storage_options=dict(storage_options))
    for field in table.schema:
        if field.name in table.partition_columns or not _NAME_RE.fullmatch(field.name):
            continue
        dtype = field.type
        if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
            if pa.types.is_integer(dtype.value_type):
                msg.features.add(name=field.name, kind=spec_pb2.FEATURE_KIND_SPARSE)
        elif (
            pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)
        ):
            msg.features.add(name=field.name, kind=spec_pb2.FEATURE_KIND_DENSE)
    if not msg.features:
        raise StatsError(f"table {uri} has no numeric or integer-list column to measure")
    return msg


def stats_spec(args: argparse.Namespace) -> spec_pb2.SessionSpec:
    """The stats session's spec: the user's (or the table's), one epoch, one rank, no
    shuffle, with the ``stats`` options of the command line."""

    options = _storage_options(args.storage_option)
    source = args.spec_or_table
    if source.endswith((".yaml", ".yml", ".json")) and Path(source).is_file():
        msg = spec_from_file(source)
        if options:
            msg.storage_options.update(options)
    else:
        msg = table_spec(source, options)
    if args.partition_filter is not None:
        msg.partition_filter = args.partition_filter
    msg.epochs, msg.world_size, msg.shuffle, msg.deterministic = 1, 1, False, False
    msg.batch_size = msg.batch_size or _STATS_BATCH_SIZE
    msg.stats.CopyFrom(
        spec_pb2.StatsOptions(sample_rate=args.sample_rate, collisions=args.collisions)
    )
    return msg


def _storage_options(pairs: list[str]) -> dict[str, str]:
    from dpp_server.errors import StatsError

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise StatsError(f"--storage-option expects KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


# -- the session ----------------------------------------------------------------------------


def run_stats_session(
    master: str,
    spec: spec_pb2.SessionSpec,
    *,
    top_k: int,
    boundary_buckets: int,
    progress: bool,
    poll_s: float = 0.5,
    connection: Connection | None = None,
) -> master_pb2.GetStatsReportResponse:
    """Creates the stats session on ``master``, draws its progress, returns the finished result.
    ``connection``: the credentials for ``master`` (None: plaintext, an --insecure cluster).

    Raises:
        StatsError: a split failed on a worker (every failure is named), or an RPC failed
            with anything but a transient status.
    """

    from dpp_proto import master_pb2, master_pb2_grpc
    from dpp_proto.auth import open_channel
    from dpp_proto.retry import channel_options
    from dpp_server.errors import StatsError

    channel = open_channel(
        master,
        connection,
        options=channel_options(["dpp.v1.MasterService"], max_receive_bytes=256 << 20),
    )
    stub = master_pb2_grpc.MasterServiceStub(channel)
    try:
        created = _call(
            "CreateSession",
            lambda: stub.CreateSession(
                master_pb2.CreateSessionRequest(spec=spec), timeout=600, wait_for_ready=True
            ),
        )
        request = master_pb2.GetStatsReportRequest(
            session_id=created.session_id, top_k=top_k, boundary_buckets=boundary_buckets
        )
        with _Progress(created.plan.num_splits, progress) as bar:
            while True:
                result: master_pb2.GetStatsReportResponse = _call(
                    "GetStatsReport",
                    lambda: stub.GetStatsReport(request, timeout=600, wait_for_ready=True),
                )
                bar.update(result.splits_done)
                if result.errors:
                    raise StatsError(
                        f"stats session {created.session_id}: {len(result.errors)} split(s) "
                        "failed:\n  " + "\n  ".join(result.errors)
                    )
                if result.complete:
                    return result
                time.sleep(poll_s)
    finally:
        channel.close()


def _call(what: str, fn: Any) -> Any:
    import grpc

    from dpp_server.errors import StatsError

    try:
        return fn()
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        raise StatsError(f"{what} failed ({code.name if code else 'error'}): {details}") from exc


class _Progress:
    """Splits done of the stats session, as a rich progress bar on stderr (or nothing)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._total = total
        self._enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self._enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task("splits sketched", total=self._total)
        return self

    def update(self, done: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def cmd_stats(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``dpp stats``: returns 0, or 2 after printing what went wrong."""
    from dpp_server.errors import StatsError
    from dpp_server.stats.commands import write_outputs

    cluster = None
    try:
        if args.suggest_boundaries is not None and args.suggest_boundaries < 2:
            raise StatsError(f"--suggest-boundaries {args.suggest_boundaries}: give 2 or more")
        spec = stats_spec(args)
        master = args.master
        connection: Connection | None
        if not master:
            from dpp_server.local_cluster import LocalCluster

            cluster = LocalCluster(workers=args.workers, pipeline_threads=args.threads).start()
            master = cluster.master_address
            connection = cluster.connection
        else:
            # A running cluster: the user's connection file ($DPP_CONNECTION), if any.
            connection = load_connection()
            out.write(f"local cluster: master at {master}, {args.workers} worker(s)\n")
        result = run_stats_session(
            master,
            spec,
            connection=connection,
            top_k=args.top_k,
            boundary_buckets=args.suggest_boundaries or 0,
            progress=not args.quiet,
        )
        report = json.loads(result.report_json)
        report["session"] = {
            "source": args.spec_or_table,
            "partition_filter": spec.partition_filter,
            "sample_rate": spec.stats.sample_rate,
            "collisions": spec.stats.collisions,
        }
        boundaries = {b.feature: list(b.boundaries) for b in result.boundaries}
        write_outputs(report, boundaries, args, out)
    except StatsError as exc:
        sys.stderr.write(f"dpp stats: {exc}\n")
        return 2
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


def cmd_shard_plan(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``dpp shard-plan``: returns 0, or 2 on a stats or capacity error (printed)."""
    from dpp_server.errors import StatsError
    from dpp_server.stats.commands import run_shard_plan

    try:
        run_shard_plan(args, out)
    except StatsError as exc:
        sys.stderr.write(f"dpp shard-plan: {exc}\n")
        return 2
    return 0
