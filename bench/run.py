"""The benchmark suite: dpp beside the loaders users would use instead, in one run.

    make bench                        # = .venv/bin/python -m bench.run
    .venv/bin/python -m bench.run --quick              # smaller tables, one repeat
    .venv/bin/python -m bench.run --pipelines inprocess,dpp-1w,dpp-2w --workloads dlrm

Runs every pipeline of :mod:`bench.pipelines` on both workloads of :mod:`bench.workloads`,
each run in its own process, repeats interleaved (the order rotates each repeat, so drift on
a shared machine hits every pipeline alike); then the master's assignment rate
(:mod:`bench.master_rate`), the trainer's CPU split (:mod:`bench.client_cpu`) and a worker's
memory on a table far larger than its budget (:mod:`bench.worker_memory`). Optional peers
(Ray Data) are skipped cleanly when not installed: ``pip install -e '.[bench-peers]'``.

Writes ``bench/results/suite.json``, the chart ``docs/benchmarks.png`` and the generated part
of ``docs/benchmarks.md`` (between its ``bench:begin`` / ``bench:end`` markers; the rest of
the page is left as it is). Nothing is installed by this command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import client_cpu, master_rate, worker_memory
from bench.workloads import workloads

REPO = Path(__file__).resolve().parent.parent
ALL_PIPELINES = (
    "ceiling",
    "inprocess",
    "dpp-1w",
    "dpp-2w",
    "dpp-1w-insecure",
    "torch",
    "torch-vec",
    "tfdata",
    "ray",
)
LABELS = {
    "ceiling": "pyarrow scan (ceiling)",
    "inprocess": "in-process pyarrow + polars",
    "dpp-1w": "dpp, 1 worker",
    "dpp-2w": "dpp, 2 workers",
    "dpp-1w-insecure": "dpp, 1 worker, no TLS",
    "torch": "torch DataLoader, per-sample",
    "torch-vec": "torch DataLoader, vectorized row groups",
    "tfdata": "tf.data service (TFRecord copy)",
    "ray": "Ray Data",
}
#: The peers' comparison: where each pipeline's preprocessing CPU is read (bench.pipelines'
#: ``preprocess_cpu_s``), for the "CPU per row" table.
WHERE = {
    "ceiling": "the trainer (all of it)",
    "inprocess": "the trainer (all of it)",
    "dpp-1w": "the dpp worker",
    "dpp-2w": "the 2 dpp workers",
    "dpp-1w-insecure": "the dpp worker",
    "torch": "the 2 DataLoader workers",
    "torch-vec": "the 2 DataLoader workers",
    "tfdata": "the 2 tf.data workers",
    "ray": "Ray's processes",
}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    import polars
    import pyarrow
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
        "polars": polars.__version__,
        "torch": torch.__version__,
    }


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_pipeline(
    name: str, workload: str, table: str, quick: bool, threads: int, torch_rows: int
) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.pipelines"]
    if name.startswith("dpp-"):
        workers, _, mode = name[4:].partition("w")
        args += ["dpp", "--workers", workers, "--threads", str(threads)]
        if mode == "-insecure":
            args.append("--insecure")
    else:
        args += [name]
    args += ["--workload", workload, "--table", table]
    if quick:
        args.append("--quick")
    if name == "torch":
        args += ["--max-rows", str(torch_rows)]
    load = loadavg()
    try:
        done = subprocess.run(
            args, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        return {"pipeline": name, "error": "timed out after 600 s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.splitlines()[-8:])
        return {"pipeline": name, "error": f"exit {done.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    result["pipeline"] = name
    result["loadavg_before"] = load
    return result


def check_peers(pipelines: list[str], workload: str, spec: Any) -> dict[str, str]:
    """Untimed, before the runs: the vectorized peers' outputs against dpp's (an unequal one
    stops the suite), and tf.data's one-time TFRecord copy of the table."""
    checked: dict[str, str] = {}
    if "torch-vec" in pipelines:
        from bench.peers.torch_vectorized import check_golden

        got = check_golden(spec)
        checked["torch-vec"] = (
            f"{got['rows']:,} rows, {got['ids']:,} ids of the first split, dense, ids, "
            "lengths and labels equal"
        )
    if "tfdata" in pipelines and workload == "dlrm":
        from bench.peers import tfdata_launch

        try:
            got = tfdata_launch.check_golden(spec.table_uri, spec)
            checked["tfdata"] = (
                f"{got['rows']:,} rows, {got['ids']:,} ids of the first row group, dense, ids, "
                "offsets and labels equal to the torch-vec peer's"
            )
        except tfdata_launch.TfSkip as exc:
            checked["tfdata"] = f"not checked: {exc}"
    return checked


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "rows_per_s" in r]
    if not ok:
        reason = next((r.get("skipped") or r.get("error") for r in runs), "not run")
        return {"skipped": reason}

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in ok)

    roles: dict[str, dict[str, float]] = {}
    for r in ok:
        for p in r.get("processes", []):
            role = str(p["role"])
            entry = roles.setdefault(role, {"peak_rss_mb": 0.0, "count": 0})
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], float(p["peak_rss_mb"]))
    for role in roles:
        roles[role]["count"] = max(
            sum(1 for p in r.get("processes", []) if p["role"] == role) for r in ok
        )
    return {
        "runs": len(ok),
        "rows": ok[0]["rows"],
        "rows_per_s": med("rows_per_s"),
        "rows_per_s_all": [round(float(r["rows_per_s"])) for r in ok],
        "mb_per_s": med("mb_per_s"),
        "trainer_cpu_s_per_m_rows": med("trainer_cpu_s_per_m_rows"),
        "other_cpu_s_per_m_rows": statistics.median(
            float(r["other_cpu_s"]) / r["rows"] * 1e6 for r in ok
        ),
        "preprocess_cpu_s_per_m_rows": statistics.median(
            float(r.get("preprocess_cpu_s", "nan")) / r["rows"] * 1e6 for r in ok
        ),
        "total_cpu_s_per_m_rows": statistics.median(
            (float(r["trainer_cpu_s"]) + float(r["other_cpu_s"])) / r["rows"] * 1e6 for r in ok
        ),
        "trainer_peak_rss_mb": max(float(r["trainer_peak_rss_mb"]) for r in ok),
        "other_processes": roles,
        "stall_share": med("stall_share") if "stall_share" in ok[0] else None,
        "loadavg_before": [r.get("loadavg_before") for r in ok],
    }


def ratio(results: dict[str, Any], a: str, b: str) -> float | None:
    ra, rb = results.get(a, {}), results.get(b, {})
    if "rows_per_s" not in ra or "rows_per_s" not in rb:
        return None
    return float(ra["rows_per_s"]) / float(rb["rows_per_s"])


def paired_ratio(suite: dict[str, Any], workload: str, a: str, b: str) -> float | None:
    """Median over repeats of a/b measured in the same repeat (minutes apart, so a load
    change on a shared machine hits both): steadier than the ratio of the medians."""
    raw = suite.get("raw", {}).get(workload, {})
    pairs = [
        float(x["rows_per_s"]) / float(y["rows_per_s"])
        for x, y in zip(raw.get(a, []), raw.get(b, []), strict=False)
        if "rows_per_s" in x and "rows_per_s" in y
    ]
    return statistics.median(pairs) if pairs else None


def paired_cpu_ratio(suite: dict[str, Any], workload: str, a: str, b: str) -> list[float]:
    """Per repeat, a's preprocessing CPU per row over b's (runs minutes apart in one repeat)."""
    raw = suite.get("raw", {}).get(workload, {})
    return [
        (float(x["preprocess_cpu_s"]) / x["rows"]) / (float(y["preprocess_cpu_s"]) / y["rows"])
        for x, y in zip(raw.get(a, []), raw.get(b, []), strict=False)
        if "preprocess_cpu_s" in x and "preprocess_cpu_s" in y
    ]


def targets(suite: dict[str, Any]) -> list[dict[str, Any]]:
    dlrm = suite["pipelines"].get("dlrm", {})
    best = max(("dpp-1w", "dpp-2w"), key=lambda n: dlrm.get(n, {}).get("rows_per_s", 0.0))
    rows = []

    def add(name: str, goal: str, value: float | None, ok: bool | None, note: str) -> None:
        rows.append({"target": name, "goal": goal, "measured": value, "met": ok, "note": note})

    for peer, goal in (("inprocess", 0.9), ("ray", 2.0), ("torch", 3.0)):
        r = ratio(dlrm, best, peer)
        paired = paired_ratio(suite, "dlrm", best, peer)
        add(
            f"dpp / {LABELS[peer]}",
            f">= {goal:g}x",
            r,
            None if r is None else r >= goal,
            f"DLRM job, best dpp = {best}; median of per-repeat ratios {_fmt(paired)}",
        )
    cpu = lowest_cpu(dlrm)
    if cpu is not None:
        pairs = paired_cpu_ratio(suite, "dlrm", cpu["name"], cpu["peer"])
        add(
            "dpp worker CPU per row / the lowest peer's preprocessing CPU per row",
            "<= 1.0x",
            cpu["ratio"],
            cpu["ratio"] <= 1.0,
            f"DLRM job; {cpu['name']} worker {cpu['dpp']:.2f} core-s / 1M rows, lowest peer "
            f"{LABELS[cpu['peer']]} {cpu['lowest']:.2f}; per repeat "
            + ", ".join(f"{x:.2f}" for x in pairs),
        )
    client = suite.get("client_cpu", {})
    if client and "ingest" in client:
        whole = client_cpu.pick(client, "after", "grpc", 1)["cpu_s_per_m_rows"]
        before = client_cpu.pick(client, "before", "grpc", 1)["cpu_s_per_m_rows"]
        add(
            "trainer CPU, whole path (core-s / 1M rows)",
            "<= 0.5",
            whole,
            whole <= 0.5,
            f"receive + decode + tensors, grpc, 1 stream; before issue 15: {before:.2f}",
        )
    r = ratio(dlrm, "dpp-2w", "dpp-1w")
    paired = paired_ratio(suite, "dlrm", "dpp-2w", "dpp-1w")
    add(
        "1 -> 2 workers",
        ">= 1.7x",
        r,
        None if r is None else r >= 1.7,
        f"DLRM job; median of per-repeat ratios {_fmt(paired)}",
    )
    rate = suite.get("master_rate", {})
    if rate:
        value = rate["memory_journal"]["splits_per_s"]
        add(
            "master assignments (splits/s)",
            ">= 10000",
            value,
            value >= 10_000,
            f"in-process, memory journal; file journal {rate['file_journal']['splits_per_s']:.0f}"
            + (f", gRPC {rate['grpc']['splits_per_s']:.0f}" if "grpc" in rate else ""),
        )
    for mem in suite.get("worker_memory", []):
        add(
            f"worker peak RSS, {mem['label']} (MB)",
            f"<= {mem['budget_mb']}",
            mem["worker_peak_rss_mb"],
            mem["under_budget"],
            f"{mem['table_disk_mb']} MB table",
        )
    return rows


def lowest_cpu(results: dict[str, Any]) -> dict[str, Any] | None:
    """dpp's one worker's preprocessing CPU per row beside the lowest of the peers' (the
    pipelines that do the whole job: in-process, the DataLoaders, tf.data, Ray)."""
    # Like for like: the peers use no TLS, so dpp without it where measured.
    name = "dpp-1w-insecure" if "dpp-1w-insecure" in results else "dpp-1w"
    dpp = results.get(name, {}).get("preprocess_cpu_s_per_m_rows")
    peers = {
        p: results[p]["preprocess_cpu_s_per_m_rows"]
        for p in ("inprocess", "torch", "torch-vec", "tfdata", "ray")
        if "preprocess_cpu_s_per_m_rows" in results.get(p, {})
    }
    if dpp is None or not peers:
        return None
    peer = min(peers, key=lambda p: float(peers[p]))
    lowest = float(peers[peer])
    return {
        "name": name,
        "dpp": float(dpp),
        "peer": peer,
        "lowest": lowest,
        "ratio": float(dpp) / lowest,
    }


def chart(suite: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')")
        return False
    names = list(suite["pipelines"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], names, strict=True):
        results = suite["pipelines"][workload]
        shown = [p for p in ALL_PIPELINES if "rows_per_s" in results.get(p, {})]
        values = [results[p]["rows_per_s"] / 1000 for p in shown]
        colors = ["#1f77b4" if p.startswith("dpp") else "#999999" for p in shown]
        ax.barh([LABELS[p] for p in shown], values, color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("thousand rows / s (median)")
        ax.set_title(f"{workload} job")
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,.0f}k", va="center", fontsize=8)
    m = suite["machine"]
    load = suite.get("loadavg") or [0.0]
    fig.suptitle(
        f"{m['cpus']} cores, {m['cpu_model']}; all pipelines in one run, median of "
        f"{suite['repeats']}; machine shared (load average {min(load):.1f}-{max(load):.1f})",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def markers(name: str) -> tuple[str, str]:
    """The comment pair around a generated section of the doc (``bench`` for the suite's)."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def markdown(suite: dict[str, Any], chart_name: str | None, section: str = "bench") -> str:
    m = suite["machine"]
    begin, end = markers(section)
    out = [
        begin,
        "<!-- generated by `python -m bench.run`; edit outside the markers -->",
        "",
        f"Run of {suite['finished']} ({'quick' if suite['quick'] else 'full'} mode, "
        f"{suite['repeats']} repeat(s), median shown), `{suite['command']}`.",
        "",
        f"Machine: {m['cpus']} cores ({m['cpu_model']}), {m['memory_gb']} GB, "
        f"{m['platform']}; Python {m['python']}, pyarrow {m['pyarrow']}, polars "
        f"{m['polars']}, torch {m['torch']}. Load average before the pipeline runs: "
        f"{_fmt(min(suite['loadavg']), 1)} to {_fmt(max(suite['loadavg']), 1)} "
        "(other jobs shared the machine when above 0; figures move by tens of percent "
        "between repeats then, ratios within one repeat less).",
        "",
    ]
    if chart_name:
        out += [f"![rows/s of each pipeline]({chart_name})", ""]
    for workload, results in suite["pipelines"].items():
        w = suite["workloads"][workload]
        out += [
            f"#### {workload}: {w['columns_total']} feature columns, the job reads "
            f"{w['read_columns']} ({w['rows']:,} rows, {w['disk_mb']} MB of Parquet)",
            "",
            "| pipeline | rows/s | MB/s | ratio to in-process (per-repeat median) "
            "| trainer CPU core-s / 1M rows "
            "| other processes' CPU core-s / 1M rows | peak RSS MB: trainer; others |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for name in ALL_PIPELINES:
            r = results.get(name)
            if r is None:
                continue
            if "rows_per_s" not in r:
                out.append(f"| {LABELS[name]} | skipped: {r.get('skipped')} | | | | | |")
                continue
            others = "; ".join(
                f"{role} x{int(v['count'])}: {v['peak_rss_mb']:.0f}"
                for role, v in sorted(r["other_processes"].items())
            )
            out.append(
                f"| {LABELS[name]} | {r['rows_per_s']:,.0f} | {r['mb_per_s']:,.0f} | "
                f"{_fmt(ratio(results, name, 'inprocess'))} "
                f"({_fmt(paired_ratio(suite, workload, name, 'inprocess'))}) | "
                f"{r['trainer_cpu_s_per_m_rows']:.2f} | {r['other_cpu_s_per_m_rows']:.2f} | "
                f"{r['trainer_peak_rss_mb']:.0f}; {others or '-'} |"
            )
        with_cpu = [p for p in ALL_PIPELINES if "preprocess_cpu_s_per_m_rows" in results.get(p, {})]
        cpu = lowest_cpu(results)
        if with_cpu:
            out += [
                "",
                "CPU per row, every process of each pipeline (core-s / 1M rows, medians): "
                "*preprocessing* is what reads, transforms and batches (for dpp its worker "
                "processes, the figure an operator pays for); *all* adds the trainer's side and "
                "coordinators (dpp's master, tf.data's dispatcher).",
                "",
                "| pipeline | preprocessing runs in | preprocessing | trainer | all processes "
                f"| preprocessing / {LABELS[cpu['name']] if cpu else 'dpp'}'s |",
                "|---|---|---:|---:|---:|---:|",
            ]
            base = cpu["dpp"] if cpu else None
            for name in with_cpu:
                r = results[name]
                pre = float(r["preprocess_cpu_s_per_m_rows"])
                out.append(
                    f"| {LABELS[name]} | {WHERE[name]} | {pre:.2f} | "
                    f"{r['trainer_cpu_s_per_m_rows']:.2f} | {r['total_cpu_s_per_m_rows']:.2f} | "
                    f"{_fmt(pre / float(base) if base else None)} |"
                )
        golden = suite.get("peer_golden", {}).get(workload)
        if golden:
            out += [
                "",
                "Outputs checked equal to dpp's before timing: "
                + "; ".join(f"{LABELS[p]}: {g}" for p, g in golden.items())
                + ".",
            ]
        if "rows_per_s" in results.get("torch", {}):
            out.append("")
            out.append(
                f"torch DataLoader rows are the first {results.get('torch', {}).get('rows', 0):,}"
                " rows only (per-sample Python is too slow for the whole table in a bounded run)."
            )
        out.append("")
    out += [
        "#### Targets",
        "",
        "| target | goal | measured | met |",
        "|---|---|---:|---|",
    ]
    for t in suite["targets"]:
        if section != "bench" and t["measured"] is None:
            continue  # a partial run: a target it did not measure
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        out.append(f"| {t['target']} ({t['note']}) | {t['goal']} | {_fmt(t['measured'])} | {met} |")
    rate = suite.get("master_rate")
    if rate:
        out += [
            "",
            f"Master: {rate['memory_journal']['splits']:,} splits to "
            f"{rate['memory_journal']['workers']} simulated workers, in-process: "
            f"{rate['memory_journal']['splits_per_s']:,.0f} splits/s (memory journal), "
            f"{rate['file_journal']['splits_per_s']:,.0f} splits/s with the fsyncing file "
            f"journal ({rate['file_journal']['splits']:,} splits, "
            f"{rate['file_journal']['fsyncs']:,} fsyncs)"
            + (
                f", {rate['grpc']['splits_per_s']:,.0f} splits/s through gRPC "
                f"({rate['grpc']['client_threads']} client threads, AcquireSplit + "
                "ReportSplitProgress per split)"
                if "grpc" in rate
                else ""
            )
            + f". A heartbeat costs the master {rate['heartbeat_us']:.1f} us.",
        ]
    client = suite.get("client_cpu")
    if client and "ingest" in client:
        after = client_cpu.pick(client, "after", "grpc", 1)
        before = client_cpu.pick(client, "before", "grpc", 1)
        layouts = client["layouts"]
        out += [
            "",
            f"Trainer CPU per 1M rows (receive + decode + tensors, grpc, 1 stream): "
            f"{after['cpu_s_per_m_rows']:.2f} core-s at {after['rows_per_s']:,.0f} rows/s "
            f"(before issue 15: {before['cpu_s_per_m_rows']:.2f} at "
            f"{before['rows_per_s']:,.0f}); wire bytes per row "
            f"{layouts['after']['bytes_per_row']:,.0f} (before "
            f"{layouts['before']['bytes_per_row']:,.0f}); decoding alone "
            f"{layouts['after']['decode']['us_per_frame']:.0f} us per 4096-row frame.",
        ]
    for mem in suite.get("worker_memory", []):
        out += [
            "",
            f"Worker memory ({mem['label']}): a {mem['table_disk_mb']:,} MB table "
            f"(~{mem['table_decoded_mb_estimate']:,} MB as the job's tensors), "
            f"{mem['rows_delivered']:,} rows streamed in {mem['seconds']} s to a trainer "
            f"sleeping {mem['consumer_sleep_ms']:.0f} ms per batch (about the worker's pace); "
            f"worker idle {mem['worker_idle_rss_mb']:.0f}"
            f" MB, peak {mem['worker_peak_rss_mb']:.0f} MB against a {mem['budget_mb']} MB "
            f"budget (--buffer-mb {mem['buffer_mb']}, --read-batch-rows "
            f"{mem['read_batch_rows']}, 1 pipeline thread{mem['env_note']}).",
        ]
    out += ["", end]
    return "\n".join(out)


def write_doc(path: Path, section: str, name: str = "bench") -> None:
    begin, end = markers(name)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n## Latest run\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller tables, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--workloads", default="dlrm,wide")
    parser.add_argument("--pipelines", default=",".join(ALL_PIPELINES))
    parser.add_argument("--threads", type=int, default=1, help="pipeline threads per dpp worker")
    parser.add_argument("--torch-rows", type=int, default=None, help="rows for torch (40k)")
    parser.add_argument("--skip", default="", help="comma list of: master,client,memory")
    parser.add_argument("--table-dir", default=os.environ.get("DPP_BENCH_DIR", "/tmp/dpp-bench"))
    parser.add_argument("--json", default=str(REPO / "bench/results/suite.json"))
    parser.add_argument("--doc", default=str(REPO / "docs/benchmarks.md"))
    parser.add_argument("--chart", default=str(REPO / "docs/benchmarks.png"))
    parser.add_argument("--no-doc", action="store_true", help="write only the JSON")
    parser.add_argument(
        "--section",
        default="bench",
        help="the doc's generated section to replace (<!-- NAME:begin/end -->): a partial run "
        "such as the peers' (docs/benchmarks.md) writes its own, leaving the full suite's",
    )
    parser.add_argument(
        "--from-json", action="store_true", help="only re-render the doc and chart from --json"
    )
    args = parser.parse_args()
    if args.from_json:
        suite: dict[str, Any] = json.loads(Path(args.json).read_text())
        suite["targets"] = targets(suite)
        has_chart = chart(suite, Path(args.chart))
        chart_name = Path(args.chart).name if has_chart else None
        write_doc(Path(args.doc), markdown(suite, chart_name, args.section), args.section)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    torch_rows = args.torch_rows or (12_000 if args.quick else 40_000)
    table_dir = Path(args.table_dir)
    skip = set(filter(None, args.skip.split(",")))
    started = time.time()
    chosen = {k: w for k, w in workloads(args.quick).items() if k in args.workloads.split(",")}
    pipelines = [p for p in args.pipelines.split(",") if p]
    suite = {
        "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "repeats": repeats,
        "machine": machine(),
        "workloads": {},
        "pipelines": {},
        "loadavg": [],
    }
    tables = {name: w.ensure_table(table_dir) for name, w in chosen.items()}
    for name, w in chosen.items():
        uri = Path(tables[name])
        suite["workloads"][name] = {
            "rows": w.config.rows,
            "columns_total": w.columns_total,
            "read_columns": w.read_dense + w.read_sparse,
            "disk_mb": round(sum(p.stat().st_size for p in uri.rglob("*.parquet")) / 1e6),
        }
        # Warm the page cache (and the imports) once, untimed.
        run_pipeline("ceiling", name, tables[name], args.quick, args.threads, torch_rows)
        suite.setdefault("peer_golden", {})[name] = check_peers(
            pipelines, name, w.spec(tables[name])
        )
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {n: {} for n in chosen}
    for repeat in range(repeats):
        order = pipelines[repeat % len(pipelines) :] + pipelines[: repeat % len(pipelines)]
        for name in chosen:
            for pipeline in order:
                result = run_pipeline(
                    pipeline, name, tables[name], args.quick, args.threads, torch_rows
                )
                suite["loadavg"].append(result.get("loadavg_before", loadavg()))
                raw[name].setdefault(pipeline, []).append(result)
                shown = (
                    f"{result['rows_per_s']:>10,.0f} rows/s"
                    if "rows_per_s" in result
                    else result.get("skipped") or result.get("error", "")[-300:]
                )
                print(f"[{repeat + 1}/{repeats}] {name:5} {pipeline:10} {shown}", flush=True)
    for name in chosen:
        suite["pipelines"][name] = {p: summarize(raw[name][p]) for p in pipelines}
    suite["raw"] = raw
    if "master" not in skip:
        print("master assignment rate ...", flush=True)
        suite["master_rate"] = master_rate.run(
            100_000, 100, 5_000 if args.quick else 20_000, args.quick
        )
    if "client" not in skip and "dlrm" in tables:
        print("trainer CPU: receive vs decode ...", flush=True)
        suite["client_cpu"] = client_cpu.run(
            tables["dlrm"], args.quick, 40, 1, {"layouts", "ingest"}
        )
    if "memory" not in skip:
        suite["worker_memory"] = []
        rows = 1_000_000 if args.quick else 4_400_000
        for label, env, buffer_mb, read_rows in (
            ("defaults", {}, 128, 16_384),
            (
                "system allocators",
                {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2"},
                64,
                8_192,
            ),
        ):
            print(f"worker memory ({label}) ...", flush=True)
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                mem = worker_memory.run(
                    table_dir, rows, 512, buffer_mb, read_rows, 60.0, 45 if args.quick else 90
                )
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            mem["label"] = label
            mem["env_note"] = (", " + " ".join(f"{k}={v}" for k, v in env.items())) if env else ""
            suite["worker_memory"].append(mem)
    suite["targets"] = targets(suite)
    suite["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    suite["seconds"] = round(time.time() - started)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(suite, indent=1, default=str))
    chart_path = Path(args.chart)
    has_chart = not args.no_doc and chart(suite, chart_path)
    section = markdown(suite, chart_path.name if has_chart else None, args.section)
    if not args.no_doc:
        write_doc(Path(args.doc), section, args.section)
    print(section)
    print(f"\nsuite took {suite['seconds']} s; results in {args.json}")


if __name__ == "__main__":
    main()
