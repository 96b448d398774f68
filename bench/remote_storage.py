"""A worker's rows/s reading a table through an S3 endpoint 20 ms away, beside the same table
on local disk, in one run.

    python -m bench.remote_storage [--quick] [--rounds 3] [--delay-ms 20] [--threads 2]

The table is the ``dlrm`` benchmark table (:mod:`bench.workloads`), written to local disk and
copied to an S3 server on loopback (Ceph's radosgw; ``--endpoint moto`` for moto's); a
delaying proxy (:mod:`tests.helpers.delay_proxy`) in front of it adds ``--delay-ms`` to every
round trip and counts the requests and bytes.
Each pass is the worker's own code: ``--threads`` pipeline threads (as
``WorkerConfig.pipeline_threads``) take the plan's splits one at a time and run
:func:`dpp_server.produce.produce_split` on each (read, filter, transform, cut, encode), as
the worker does. Two jobs: ``all`` reads every feature (the dlrm job), ``narrow`` 4 dense and
4 id-list features of 39 (projection: what coalescing fetches matters).

Variants (:class:`Variant`: read options, splits read ahead, footer cache) run interleaved
(round r runs every variant once, in a rotated order), each beside a pass over the local table
(before it in even rounds, after it in odd ones), and each S3 figure is divided by the local
figure of its pair; the report gives medians. Per S3 variant: rows/s, the ratio to local,
the worker process's CPU per row, GET (and HEAD) requests per split, bytes fetched per row
(what the endpoint sent back, headers included, over the rows read) beside the table's bytes
per row on disk.

Writes ``bench/results/remote_storage.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.workloads import workloads
from dpp_client import Feature, Op, SessionSpec
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, StageTotals, produce_split
from dpp_server.spec import Spec, spec_from_proto
from storage import Table, parse_filter
from storage.filesystem import fsspec_filesystem_of, resolve
from storage.readahead import ReadAhead
from storage.remote import READ_WAITS, FooterCache, ReadOptions
from tests.helpers.delay_proxy import DelayProxy, s3_endpoint

REPO = Path(__file__).resolve().parent.parent
BUCKET = "dpp-bench"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of reading the table.

    Attributes:
        read: the read options; None for the local table.
        lookahead: splits each pipeline thread takes ahead and opens early (as
            ``WorkerConfig.remote_lookahead_splits``; :mod:`storage.readahead`).
        footer_cache: whether the splits of a file share its footer (one GET per file); the
            cache starts empty at each pass, as in a new worker.
    """

    read: ReadOptions | None
    lookahead: int = 0
    footer_cache: bool = False


#: The variants measured.
VARIANTS: dict[str, Variant] = {
    "local disk": Variant(None),
    # What the worker does by default: one split ahead per thread, footers cached per file.
    "prefetch + 1 split ahead + footer cache (default)": Variant(ReadOptions(), 1, True),
    "prefetch + 1 split ahead, no footer cache": Variant(ReadOptions(), 1),
    "prefetch + footer cache, no read-ahead across splits": Variant(ReadOptions(), 0, True),
    "prefetch + 1 split ahead + footer cache, 8 KiB holes": Variant(
        ReadOptions(hole_size_limit_bytes=8 << 10), 1, True
    ),
    "prefetch + 1 split ahead + footer cache, 64 KiB holes": Variant(
        ReadOptions(hole_size_limit_bytes=64 << 10), 1, True
    ),
    "prefetch + 2 splits ahead + footer cache": Variant(ReadOptions(), 2, True),
    # The split's projected column chunks coalesced (1 MiB holes, 32 MiB ranges) and
    # requested concurrently ahead of decoding, once the split starts (last round's default).
    "prefetch, no read-ahead across splits": Variant(ReadOptions()),
    "prefetch, 8 KiB holes, no read-ahead across splits": Variant(
        ReadOptions(hole_size_limit_bytes=8 << 10)
    ),
    # pyarrow's pre_buffer over an uncached fsspec file (reads serialized by PythonFile).
    "pre_buffer, eager, 1 MiB holes": Variant(ReadOptions(mode="pre_buffer")),
    "pre_buffer, arrow's CacheOptions (8 KiB holes, 32 MiB ranges, lazy)": Variant(
        ReadOptions(mode="pre_buffer", hole_size_limit_bytes=8 << 10, lazy=True)
    ),
    "fsspec readahead 8 MiB blocks": Variant(ReadOptions(mode="readahead")),
    "fsspec readahead 50 MiB blocks (s3fs's default)": Variant(
        ReadOptions(mode="readahead", block_size_bytes=50 << 20)
    ),
}


def narrow_spec(table_uri: str) -> SessionSpec:
    """4 dense + 4 id-list features of 39: what a job reading a tenth of a table fetches."""
    features = [
        Feature(f"d{i}", "dense", source=f"dense_{i}", ops=(Op("fill_null", {"value": 0.0}),))
        for i in (0, 4, 8, 12)
    ] + [
        Feature(f"s{i}", "sparse", source=f"sparse_{i}", ops=(Op("first_x", {"x": 20}),))
        for i in (0, 7, 14, 21)
    ]
    return SessionSpec(
        table_uri=table_uri, features=tuple(features), label="label", batch_size=4096,
        target_split_rows=65_536,
    )  # fmt: skip


def run_worker(spec: Spec, variant: Variant, threads: int) -> tuple[int, float, int, float]:
    """One pass of the worker's pipeline threads over every split: (rows, seconds, splits,
    the worker process's CPU seconds).

    Each thread takes a split, then (``variant.lookahead``) the next ones, which it opens
    ahead (:meth:`~dpp_server.produce.SessionPipeline.read_ahead_split`) before producing
    the first, as the worker's lease loop does. Planning is outside the timed section (the
    master plans; a worker only reads).
    """
    table = Table.open(spec.table_uri, spec.storage_options)
    row_filter = parse_filter(spec.row_filter, "row_filter") if spec.row_filter else None
    plan = table.plan_splits(spec.target_split_rows, row_filter=row_filter)
    filesystem, _ = resolve(spec.table_uri, spec.storage_options)
    inner = fsspec_filesystem_of(filesystem)
    if inner is not None:
        inner.invalidate_cache()  # a worker process has not listed the table
    footers = FooterCache(max_bytes=(64 << 20) if variant.footer_cache else 0)
    read_ahead = ReadAhead(footers, max_entries=4 * threads + 2, threads=max(1, threads))
    session = SessionPipeline.compile(
        spec, 65_536, read_options=variant.read, read_ahead=read_ahead
    )
    todo: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for split in plan.splits:
        todo.put(split)
    rows = [0] * threads
    errors: list[BaseException] = []

    def next_lease() -> LeaseGrant | None:
        try:
            split = todo.get_nowait()
        except queue.Empty:
            return None
        return LeaseGrant(session_id="s", epoch=0, rank=0, split=split, start_batch=0)

    def pipeline_thread(index: int) -> None:
        recorder = StageTotals()
        ahead: collections.deque[LeaseGrant] = collections.deque()
        try:
            while True:
                lease = ahead.popleft() if ahead else next_lease()
                if lease is None:
                    break
                while len(ahead) < variant.lookahead and (following := next_lease()):
                    ahead.append(following)
                    session.read_ahead_split(following)
                for _frame in produce_split(session, lease, recorder):
                    pass
            rows[index] = recorder.counts["rows_out"]
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    started = time.perf_counter()
    cpu_started = time.process_time()
    workers = [threading.Thread(target=pipeline_thread, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    read_ahead.close()
    if errors:
        raise errors[0]
    return sum(rows), seconds, len(plan.splits), cpu_s


def servers_cpu_s() -> float:
    """CPU seconds used so far by this process's descendants: the S3 server (radosgw and its
    Ceph daemons, or moto) and the delaying proxy, which share this machine's cores with the
    worker (over a real network they would not)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children[int(fields[1])].append(int(entry))
        ticks[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime
    total, todo = 0, list(children[os.getpid()])
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children[pid])
    return total / os.sysconf("SC_CLK_TCK")


def measure(spec: Spec, variant: Variant, threads: int, proxy: DelayProxy) -> dict[str, float]:
    """One pass (:func:`run_worker`) and what the proxy saw."""
    proxy.reset()
    servers = servers_cpu_s()
    READ_WAITS.take()
    rows, seconds, splits, cpu_s = run_worker(spec, variant, threads)
    waited_s = READ_WAITS.take()
    servers = servers_cpu_s() - servers
    stats = proxy.snapshot()
    return {
        "rows": rows,
        "rows_per_s": rows / seconds,
        "worker_core_s_per_1m_rows": cpu_s / rows * 1e6,
        "servers_core_s_per_1m_rows": servers / rows * 1e6,
        "waited_ms_per_split": waited_s / splits * 1e3,
        "gets_per_split": stats.requests["GET"] / splits,
        "max_gets_per_file": max(stats.gets_by_path.values(), default=0),
        "heads_per_split": stats.requests["HEAD"] / splits,
        "bytes_per_row": stats.bytes_down / rows,
        "splits": splits,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300k rows (default 1M)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2, help="pipeline threads (worker's)")
    parser.add_argument("--jobs", default="all,narrow")
    parser.add_argument("--endpoint", choices=("radosgw", "moto"), default="radosgw",
                        help="the S3 server behind the proxy (radosgw: Ceph's, C++; moto: Python, "
                        "itself ~50 ms per request)")  # fmt: skip
    parser.add_argument("--variants", default="",
                        help="';'-separated variant name prefixes (names hold commas)")  # fmt: skip
    parser.add_argument("--split-rows", type=int, default=0,
                        help="target_split_rows of both jobs (0: the jobs' own)")  # fmt: skip
    parser.add_argument("--table-dir", default=str(Path(tempfile.gettempdir()) / "dpp-bench"))
    parser.add_argument("--json", default=str(REPO / "bench/results/remote_storage.json"))
    args = parser.parse_args(argv)
    workload = workloads(args.quick)["dlrm"]
    local = workload.ensure_table(Path(args.table_dir))
    chosen = {
        name: variant
        for name, variant in VARIANTS.items()
        if variant.read is None
        or not args.variants
        or any(name.startswith(p) for p in args.variants.split(";") if p)
    }
    disk_bytes = sum(p.stat().st_size for p in Path(local).rglob("*.parquet"))
    results: dict[str, Any] = {
        "command": "python -m bench.remote_storage " + " ".join(argv or sys.argv[1:]),
        "rows": workload.config.rows,
        "delay_ms": args.delay_ms,
        "endpoint": args.endpoint,
        "threads": args.threads,
        "disk_bytes_per_row": disk_bytes / workload.config.rows,
        "jobs": {},
    }
    with s3_endpoint(args.endpoint, Path(tempfile.mkdtemp(prefix="dpp-s3-"))) as (
        endpoint,
        key,
        secret,
    ):
        import s3fs

        direct = s3fs.S3FileSystem(key=key, secret=secret, client_kwargs={"endpoint_url": endpoint})
        direct.mkdir(BUCKET)
        direct.put(local, f"{BUCKET}/dlrm", recursive=True)
        with DelayProxy(endpoint, args.delay_ms / 1000) as proxy:
            options = {"endpoint_url": proxy.endpoint, "key": key, "secret": secret}
            for job in args.jobs.split(","):
                specs: dict[str, Spec] = {}
                for where, uri, storage in (("local", local, {}), ("s3", f"s3://{BUCKET}/dlrm",
                                                                    options)):  # fmt: skip
                    client = workload.spec(uri) if job == "all" else narrow_spec(uri)
                    client = dataclasses.replace(client, storage_options=storage)
                    if args.split_rows:
                        client = dataclasses.replace(client, target_split_rows=args.split_rows)
                    specs[where] = spec_from_proto(client.to_proto())
                # Warm the page cache and imports.
                run_worker(specs["local"], VARIANTS["local disk"], args.threads)
                samples: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
                remote = [name for name in chosen if chosen[name].read is not None]
                for round_index in range(args.rounds):
                    shift = round_index % len(remote)
                    for name in remote[shift:] + remote[:shift]:
                        # Each remote pass beside a local pass, in alternating order: on this
                        # shared machine the load moves within seconds.
                        pair = [VARIANTS["local disk"], chosen[name]]
                        if round_index % 2:
                            pair.reverse()
                        got = {
                            v.read is None: measure(
                                specs["local" if v.read is None else "s3"], v, args.threads, proxy
                            )
                            for v in pair
                        }
                        got[False]["paired_local_rows_per_s"] = got[True]["rows_per_s"]
                        samples["local disk"].append(got[True])
                        samples[name].append(got[False])
                        print(f"  {job} round {round_index} {name}: "
                              f"{got[False]['rows_per_s']:,.0f} rows/s, local "
                              f"{got[True]['rows_per_s']:,.0f}", flush=True)  # fmt: skip
                results["jobs"][job] = summarize(samples)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def summarize(samples: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Medians per variant; ``ratio`` is the median over passes of rows/s over the rows/s of
    the local pass run beside it."""
    out: dict[str, dict[str, float]] = {}
    for name, runs in samples.items():
        ratios = [r["rows_per_s"] / r.get("paired_local_rows_per_s", r["rows_per_s"]) for r in runs]
        out[name] = {
            key: statistics.median(r[key] for r in runs)
            for key in (
                "rows_per_s",
                "worker_core_s_per_1m_rows",
                "servers_core_s_per_1m_rows",
                "waited_ms_per_split",
                "gets_per_split",
                "heads_per_split",
                "bytes_per_row",
            )
        }
        out[name]["max_gets_per_file"] = max(r["max_gets_per_file"] for r in runs)
        out[name]["splits"] = runs[0]["splits"]
        out[name]["ratio_to_local"] = statistics.median(ratios)
        out[name]["ratio_min"], out[name]["ratio_max"] = min(ratios), max(ratios)
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['rows']:,} rows, {results['threads']} pipeline threads, "
        f"{results['delay_ms']:.0f} ms per round trip added in front of {results['endpoint']}; "
        "on disk "
        f"{results['disk_bytes_per_row']:.0f} B/row. `{results['command']}`",
        "",
        "| job | read path | rows/s | vs local disk (range) | worker core-s per 1M rows "
        "| S3 server + proxy core-s per 1M rows | waited on bytes per split | GETs per split "
        "| bytes fetched per row |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for job, variants in results["jobs"].items():
        for name, r in variants.items():
            remote = name != "local disk"
            lines.append(
                f"| {job} | {name} | {r['rows_per_s']:,.0f} | "
                f"{r['ratio_to_local']:.0%} ({r['ratio_min']:.0%}-{r['ratio_max']:.0%}) | "
                f"{r['worker_core_s_per_1m_rows']:.2f} | {r['servers_core_s_per_1m_rows']:.2f} | "
                f"{r['waited_ms_per_split']:.0f} ms | "
                f"{r['gets_per_split']:.1f} (+{r['heads_per_split']:.1f} HEAD) | "
                if remote
                else f"| {job} | {name} | {r['rows_per_s']:,.0f} | 100% | "
                f"{r['worker_core_s_per_1m_rows']:.2f} | - | - | - | "
            )
            lines[-1] += f"{r['bytes_per_row']:.0f} |" if remote else "- |"
    return "\n".join(lines)


if __name__ == "__main__":
    main()
