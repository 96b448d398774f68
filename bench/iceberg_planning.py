"""Planning an Iceberg table from its manifests beside planning the same files as a Hive table.

    python -m bench.iceberg_planning [--files 400] [--rows-per-file 1000] [--rounds 3]

One commit through pyiceberg (a sqlite SqlCatalog in a temporary folder, local disk) writes
``--files`` Parquet files, one per ``ds`` partition, each holding a contiguous ``row_id``
range. The same files are then planned two ways, each from a fresh open, median of
``--rounds``:

* ``iceberg``: :class:`storage.iceberg.IcebergTable` (manifests, then the surviving files'
  footers);
* ``hive``: :class:`storage.Table` over the table's ``data/`` folder (a listing, then every
  file's footer: min/max statistics prune row groups only once the footer is read).

Filters: none; ``row_id >= <the last 1% of ids>`` (column bounds: the manifests rule out 99%
of the files, a Hive plan still reads every footer); ``ds = <one day>`` (partition values:
both skip the other files without reading them). Writes ``bench/results/iceberg_planning.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from storage import Table, parse_filter


def _write(folder: Path, files: int, rows_per_file: int) -> str:
    os.environ["PYICEBERG_CATALOG__BENCH__TYPE"] = "sql"
    os.environ["PYICEBERG_CATALOG__BENCH__URI"] = f"sqlite:///{folder}/catalog.db"
    os.environ["PYICEBERG_CATALOG__BENCH__WAREHOUSE"] = f"file://{folder}"
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog("bench")
    catalog.create_namespace("db")
    row_id = np.arange(files * rows_per_file, dtype=np.int64)
    data = pa.table(
        {
            "row_id": row_id,
            "ds": pa.array([f"d{int(r) // rows_per_file:05d}" for r in row_id]),
            "value": (row_id % 1000).astype(np.float64),
        }
    )
    table = catalog.create_table("db.events", schema=data.schema)
    with table.update_spec() as spec:
        spec.add_identity("ds")
    table.append(data)
    location: str = table.location()
    return location.removeprefix("file://")


def _time(plan: Any, rounds: int) -> dict[str, float]:
    """Median wall seconds and process CPU seconds (every thread: the footer readers too) of
    ``rounds`` plans, and the files holding a split."""
    seconds, cpu, files = [], [], 0
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = plan()
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        files = result.num_files
    return {
        "median_s": round(statistics.median(seconds), 4),
        "median_cpu_s": round(statistics.median(cpu), 4),
        "files_planned": files,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--rows-per-file", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpp-iceberg-bench-") as tmp:
        started = time.perf_counter()
        location = _write(Path(tmp), args.files, args.rows_per_file)
        write_s = time.perf_counter() - started
        uri, hive = "iceberg://bench/db.events", f"{location}/data"
        last = args.files * args.rows_per_file * 99 // 100
        day = f"d{args.files // 2:05d}"
        by_bounds = parse_filter(f"row_id >= {last}", "row_filter")
        rows = {
            "no filter": {
                "iceberg": _time(lambda: Table.open(uri).plan_splits(1 << 20), args.rounds),
                "hive": _time(lambda: Table.open(hive).plan_splits(1 << 20), args.rounds),
            },
            f"row_id >= {last}": {
                "iceberg": _time(
                    lambda: Table.open(uri).plan_splits(1 << 20, row_filter=by_bounds),
                    args.rounds,
                ),
                "hive": _time(
                    lambda: Table.open(hive).plan_splits(1 << 20, row_filter=by_bounds),
                    args.rounds,
                ),
            },
            f"ds = '{day}'": {
                "iceberg": _time(
                    lambda: Table.open(uri).plan_splits(
                        1 << 20, row_filter=parse_filter(f"ds = '{day}'", "row_filter")
                    ),
                    args.rounds,
                ),
                "hive": _time(
                    lambda: Table.open(hive).plan_splits(
                        1 << 20,
                        partition_filter=parse_filter(f"ds = '{day}'", "partition_filter"),
                    ),
                    args.rounds,
                ),
            },
        }
    result = {"files": args.files, "rows_per_file": args.rows_per_file, "write_s": write_s}
    result["plans"] = rows
    out = Path(__file__).parent / "results" / "iceberg_planning.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.files} files, one commit (written in {write_s:.1f}s); median of {args.rounds}")
    print(f"{'filter':<20} {'iceberg s':>9} {'cpu s':>6} {'files':>5} {'hive s':>7} {'cpu s':>6}")
    for name, pair in rows.items():
        ice, hv = pair["iceberg"], pair["hive"]
        print(
            f"{name:<20} {ice['median_s']:>9.3f} {ice['median_cpu_s']:>6.3f} "
            f"{ice['files_planned']:>5} {hv['median_s']:>7.3f} {hv['median_cpu_s']:>6.3f}"
        )


if __name__ == "__main__":
    main()
