"""What the delivery guarantees cost: rows/s with acknowledgements and a fsynced journal beside
rows/s without either, in one run on the same table and machine.

    python -m bench.delivery --rows 300000 --repeats 5

"Guarded": the master journals every update to a file (fsynced) and the client acknowledges
consumption every 0.2 s. "Unguarded": the journal lives in memory and the client sends no
acknowledgement. The two clusters run side by side and the runs alternate, so machine noise
hits both alike; the medians and their ratio are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.e2e import dlrm_spec, ensure_table
from dpp_client import DppLoader, SessionSpec
from dpp_server.local_cluster import LocalCluster


def one_epoch(cluster: LocalCluster, spec: SessionSpec, ack_interval_s: float | None) -> float:
    """Rows/s of one epoch read by a fresh loader (session planning included)."""
    started = time.perf_counter()
    rows = 0
    with DppLoader(cluster.master_address, spec, ack_interval_s=ack_interval_s) as loader:
        for batch in loader:
            rows += batch.num_rows
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--table-dir", default=os.environ.get("DPP_BENCH_DIR", "/tmp/dpp-bench"))
    parser.add_argument("--json", default="bench/results/delivery.json")
    args = parser.parse_args()

    spec = dlrm_spec(ensure_table(Path(args.table_dir), args.rows))
    guarded = LocalCluster(workers=args.workers, journal=True).start()
    unguarded = LocalCluster(workers=args.workers).start()
    runs: dict[str, list[float]] = {"guarded": [], "unguarded": []}
    try:
        # Warm both clusters (page cache, imports, worker threads) before timing anything.
        one_epoch(unguarded, spec, None)
        one_epoch(guarded, spec, 0.2)
        for _ in range(args.repeats):
            runs["unguarded"].append(one_epoch(unguarded, spec, None))
            runs["guarded"].append(one_epoch(guarded, spec, 0.2))
        journal = guarded.journal_dir / "journal.jsonl" if guarded.journal_dir else None
        journal_lines = len(journal.read_text().splitlines()) if journal else 0
    finally:
        guarded.stop()
        unguarded.stop()
    with_guard = statistics.median(runs["guarded"])
    without = statistics.median(runs["unguarded"])
    overhead = 1 - with_guard / without
    # Each repeat runs both back to back: the median of those ratios resists machine noise.
    paired = statistics.median(
        g / u for g, u in zip(runs["guarded"], runs["unguarded"], strict=True)
    )
    print(
        f"{args.rows} rows, {args.workers} workers, {os.cpu_count()} cores, "
        f"median of {args.repeats}"
    )
    print(f"without acks or journal : {without:>12,.0f} rows/s")
    print(f"acks + fsynced journal  : {with_guard:>12,.0f} rows/s")
    print(
        f"ratio {with_guard / without:.3f}  "
        f"(overhead {overhead:+.1%}; {journal_lines} journal lines)"
    )
    print(f"median of per-repeat ratios {paired:.3f}  (overhead {1 - paired:+.1%})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "rows": args.rows,
                "workers": args.workers,
                "runs": runs,
                "median_rows_per_s": {"guarded": with_guard, "unguarded": without},
                "overhead": overhead,
                "paired_ratio": paired,
                "journal_lines": journal_lines,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
