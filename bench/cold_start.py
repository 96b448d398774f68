"""Cold start on many files: the time from asking for a table of 10,000 Parquet files on S3,
20 ms away, to the first batch.

    python -m bench.cold_start [--files 10000] [--delay-ms 20] [--endpoint radosgw|moto]
                               [--baseline-tree DIR]

The table (``--files`` small files under ``ds=.../`` folders, 100 rows each) is uploaded
straight to a local S3 server (Ceph's radosgw by default); every read then goes through the
delaying proxy of :mod:`tests.helpers.delay_proxy`. Two measurements, each from a cold
process state (fsspec's listing cache cleared):

* ``storage``: the master's and the worker's own calls in this process, timed apart:
  :meth:`storage.Table.open` (one listing by prefix, 1,000 keys a page), ``plan_splits``
  (every footer, ``--plan-concurrency`` at once) and the first batch of the first split
  (:func:`storage.read_split`).
* ``cluster``: a real local cluster (1 master, 1 worker, processes on 127.0.0.1, started before
  the clock): from ``DppLoader(...)`` (CreateSession, planning on the master) to the first
  batch in the trainer's hands.

With ``--baseline-tree DIR`` (another checkout, e.g. ``git archive <commit> | tar -x -C
DIR``), each round also runs the ``storage`` measurement with that tree's code and with this
one's, each in a fresh child process, one after the other against the same server: a before
and after side by side. Each of those reports the CPU seconds spent while it ran by the
planner process, the delaying proxy and the S3 server's own processes (radosgw and Ceph's
mon and osd): on this 2-core machine the three share the cores, which bounds how fast any
planner that reads every footer can be.

Requests are counted by the proxy. Writes ``bench/results/cold_start.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpp_client import DppLoader, Feature, SessionSpec
from dpp_proto.auth import Connection
from dpp_server.local_cluster import LocalCluster
from storage import Table, read_split
from storage.filesystem import fsspec_filesystem_of
from tests.helpers.delay_proxy import DelayProxy, s3_endpoint

REPO = Path(__file__).resolve().parent.parent
BUCKET = "dpp-cold"
ROWS_PER_FILE = 100
FILES_PER_DAY = 1000


def file_bytes(index: int) -> bytes:
    """One small Parquet file: ``ROWS_PER_FILE`` rows with ids from ``index * ROWS_PER_FILE``."""
    ids = np.arange(index * ROWS_PER_FILE, (index + 1) * ROWS_PER_FILE, dtype=np.int64)
    table = pa.table(
        {
            "row_id": ids,
            "dense_0": (ids % 97).astype(np.float32),
            "sparse_0": pa.array([[int(i), int(i) + 1] for i in ids], pa.list_(pa.int64())),
            "label": (ids % 2).astype(np.int32),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def upload(direct: Any, files: int) -> None:
    """Writes the table straight to the server (not through the proxy), 500 files a call."""
    names = {
        f"{BUCKET}/t/ds=2026-01-{1 + i // FILES_PER_DAY:02d}/part-{i:05d}.parquet": file_bytes(i)
        for i in range(files)
    }
    items = list(names.items())
    for start in range(0, len(items), 500):
        direct.pipe(dict(items[start : start + 500]))


def storage_path(uri: str, options: dict[str, str], concurrency: int) -> dict[str, float]:
    started = time.perf_counter()
    table = Table.open(uri, options)
    opened = time.perf_counter()
    plan = table.plan_splits(1 << 20, max_concurrency=concurrency)
    planned = time.perf_counter()
    first = next(
        read_split(
            plan.splits[0],
            filesystem=table.filesystem,
            columns=["row_id", "dense_0", "sparse_0"],
            row_filter=None,
            batch_rows=4096,
        )
    )
    done = time.perf_counter()
    assert first.num_rows == ROWS_PER_FILE
    return {
        "files": len(table.files()),
        "splits": len(plan.splits),
        "open_s": opened - started,
        "plan_s": planned - opened,
        "first_batch_read_s": done - planned,
        "total_s": done - started,
    }


_CHILD = (
    "import json, sys, time\n"
    "from bench.cold_start import storage_path\n"
    "started = time.process_time()\n"
    "result = storage_path(*json.loads(sys.argv[1]))\n"
    "result['planner_cpu_s'] = time.process_time() - started\n"
    "print(json.dumps(result))\n"
)


def storage_path_in_child(
    tree: Path, uri: str, options: dict[str, str], concurrency: int
) -> dict[str, float]:
    """:func:`storage_path` with ``tree``'s code (its own ``bench.cold_start`` and
    ``storage``), in a fresh process: no client, connection or listing cache carried over."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([uri, options, concurrency])],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the storage path under {tree} failed:\n{done.stderr[-4000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the processes ``pids`` so far (from /proc)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _server_pids(root: Path) -> list[int]:
    """The S3 server's processes: the pid files radosgw's mon, osd and gateway write under
    ``root`` (none for moto, which runs inside the proxy's parent)."""
    pids = []
    for pid_file in root.rglob("*.pid"):
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def cluster_path(
    master: str, uri: str, options: dict[str, str], connection: Connection | None
) -> dict[str, float]:
    spec = SessionSpec(
        table_uri=uri,
        storage_options=options,
        features=(Feature("d0", "dense", source="dense_0"),),
        passthrough=("row_id",),
        batch_size=64,
    )
    started = time.perf_counter()
    # Planning 10,000 files can outlast the default 30 s deadline of CreateSession here.
    with DppLoader(master, spec, rpc_timeout_s=600.0, connection=connection) as loader:
        batch = next(iter(loader))
        first = time.perf_counter() - started
        plan = loader.plan
    assert batch.num_rows == 64
    return {"first_batch_s": first, "splits": plan.num_splits if plan else 0}


def _clear_listing_cache(uri: str, options: dict[str, str]) -> None:
    from storage.filesystem import resolve

    fs, _ = resolve(uri, options)
    inner = fsspec_filesystem_of(fs)
    if inner is not None:
        inner.invalidate_cache()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--endpoint", choices=("radosgw", "moto"), default="radosgw")
    parser.add_argument("--plan-concurrency", type=int, default=0, help="0: MasterConfig's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument(
        "--baseline-tree",
        default="",
        help="another checkout: also time its storage path beside this one's, each round",
    )
    parser.add_argument(
        "--baseline-concurrency",
        type=int,
        default=32,
        help="footers in flight for --baseline-tree (its MasterConfig default)",
    )
    parser.add_argument(
        "--local",
        default="",
        help="a folder: time the same table on local disk instead (written there if absent), "
        "the storage path only, beside --baseline-tree's when given",
    )
    parser.add_argument("--json", default=str(REPO / "bench/results/cold_start.json"))
    args = parser.parse_args(argv)
    from dpp_server.master import MasterConfig

    if args.local:
        local_main(args, args.plan_concurrency or MasterConfig.plan_concurrency, argv)
        return

    concurrency = args.plan_concurrency or MasterConfig.plan_concurrency
    results: dict[str, Any] = {
        "command": "python -m bench.cold_start " + " ".join(argv or sys.argv[1:]),
        "files": args.files,
        "delay_ms": args.delay_ms,
        "endpoint": args.endpoint,
        "plan_concurrency": concurrency,
        "storage": [],
        "cluster": [],
        "side_by_side": [],
    }
    server_root = Path(tempfile.mkdtemp(prefix="dpp-s3-"))
    with s3_endpoint(args.endpoint, server_root) as (
        endpoint,
        key,
        secret,
    ):
        import s3fs

        direct = s3fs.S3FileSystem(key=key, secret=secret, client_kwargs={"endpoint_url": endpoint})
        direct.mkdir(BUCKET)
        started = time.perf_counter()
        upload(direct, args.files)
        print(f"uploaded {args.files} files in {time.perf_counter() - started:.1f}s", flush=True)
        with DelayProxy(endpoint, args.delay_ms / 1000) as proxy:
            uri = f"s3://{BUCKET}/t"
            options = {"endpoint_url": proxy.endpoint, "key": key, "secret": secret}
            # The data-access policy allows exactly this bucket and endpoint (issue 13).
            cluster = None if args.skip_cluster else LocalCluster(
                workers=1,
                master_args=[f"--plan-concurrency={concurrency}"],
                allow_table=f"s3://{BUCKET}/",
                allow_endpoint=proxy.endpoint,
            )  # fmt: skip
            if cluster is not None:
                cluster.__enter__()
            processes = [*_server_pids(server_root)], [proxy.pid]
            try:
                for round_index in range(args.rounds):
                    if args.baseline_tree:
                        pair = {}
                        for name, tree, in_flight in (
                            ("before", Path(args.baseline_tree), args.baseline_concurrency),
                            ("after", REPO, concurrency),
                        ):
                            proxy.reset()
                            server_cpu, proxy_cpu = (_cpu_seconds(p) for p in processes)
                            result = storage_path_in_child(tree, uri, options, in_flight)
                            result["server_cpu_s"] = _cpu_seconds(processes[0]) - server_cpu
                            result["proxy_cpu_s"] = _cpu_seconds(processes[1]) - proxy_cpu
                            result["requests"] = dict(proxy.snapshot().requests)
                            pair[name] = result
                        results["side_by_side"].append(pair)
                        print(f"  round {round_index} side by side: {json.dumps(pair)}", flush=True)
                    _clear_listing_cache(uri, options)
                    proxy.reset()
                    result = storage_path(uri, options, concurrency)
                    stats = proxy.snapshot()
                    result["requests"] = dict(stats.requests)
                    results["storage"].append(result)
                    print(f"  round {round_index} storage: {json.dumps(result)}", flush=True)
                    if cluster is not None:
                        proxy.reset()
                        # A fresh session name each time: the master plans it anew.
                        result = cluster_path(
                            cluster.master_address, uri, options, cluster.connection
                        )
                        result["requests"] = dict(proxy.snapshot().requests)
                        results["cluster"].append(result)
                        print(f"  round {round_index} cluster: {json.dumps(result)}", flush=True)
            finally:
                if cluster is not None:
                    cluster.__exit__(None, None, None)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(summary(results), indent=2))


def local_main(args: argparse.Namespace, concurrency: int, argv: Sequence[str] | None) -> None:
    """``--local``: the table on local disk, each round in fresh child processes (the
    baseline tree's first when given), no server or proxy."""
    root = Path(args.local).resolve()
    if not root.exists():
        for index in range(args.files):
            folder = root / f"ds=2026-01-{1 + index // FILES_PER_DAY:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"part-{index:05d}.parquet").write_bytes(file_bytes(index))
    trees = [("after", REPO, concurrency)]
    if args.baseline_tree:
        trees.insert(0, ("before", Path(args.baseline_tree), args.baseline_concurrency))
    results: dict[str, Any] = {
        "command": "python -m bench.cold_start " + " ".join(argv or sys.argv[1:]),
        "files": args.files,
        "local": str(root),
        "storage": [],
        "cluster": [],
        "side_by_side": [],
    }
    for round_index in range(args.rounds):
        pair = {name: storage_path_in_child(tree, str(root), {}, n) for name, tree, n in trees}
        for result in pair.values():
            result["server_cpu_s"] = result["proxy_cpu_s"] = 0.0
        results["side_by_side"].append(pair)
        print(f"  round {round_index} local: {json.dumps(pair)}", flush=True)
    if not args.baseline_tree:
        results["storage"] = [pair["after"] for pair in results["side_by_side"]]
        results["side_by_side"] = []
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(summary(results), indent=2))


def summary(results: dict[str, Any]) -> dict[str, float]:
    """Medians over rounds."""
    import statistics

    out: dict[str, float] = {}
    for key in ("open_s", "plan_s", "first_batch_read_s", "total_s"):
        if results["storage"]:
            out[f"storage_{key}"] = statistics.median(r[key] for r in results["storage"])
    pairs = results["side_by_side"]
    for name in ("before", "after") if pairs else ():
        for key in ("open_s", "plan_s", "total_s", "planner_cpu_s", "proxy_cpu_s", "server_cpu_s"):
            out[f"{name}_{key}"] = statistics.median(p[name][key] for p in pairs)
    if pairs:
        out["before_over_after_total"] = statistics.median(
            p["before"]["total_s"] / p["after"]["total_s"] for p in pairs
        )
    if results["cluster"]:
        out["cluster_first_batch_s"] = statistics.median(
            r["first_batch_s"] for r in results["cluster"]
        )
    return out


if __name__ == "__main__":
    main()
