"""Per-op throughput: each op vectorized (the real pipeline) beside a naive per-row Python
version, in one run; then the demo's full preprocessing pipeline per worker process.

    python -m bench.ops [--rows 200000] [--naive-rows 20000]

Each vectorized figure runs one feature through :class:`FeaturePipeline` (adapters, the op,
wire packing), best of 3; the naive figure is a plain Python loop over the rows doing the same
arithmetic, on ``--naive-rows`` rows. The demo pipeline is 13 dense (fill_null, clamp, log1p)
and 26 sparse (first_x, sigrid_hash) features on a ``dpp gen`` table: once on in-memory batches
(transform only) and once reading the Parquet splits (read + row filter + transform), both in
this one process, which is what one worker process does.
"""

from __future__ import annotations

import argparse
import bisect
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dpp_proto import spec_pb2
from dpp_server.spec import spec_from_proto
from dpp_server.transforms import FeaturePipeline
from storage import GenConfig, Table, generate_table, parse_filter, read_split

M64 = (1 << 64) - 1


def fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    return k ^ (k >> 33)


def hash_ids(values: list[int], salt: int) -> int:
    h = fmix64(salt & M64)
    for v in values:
        h = fmix64(h ^ (v & M64))
    return h


def make_columns(rows: int) -> dict[str, pa.Array]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 20, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(rng.integers(0, 1000, offsets[-1]))
    )
    other = pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(rng.integers(0, 1000, offsets[-1]))
    )
    scores = pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(rng.random(offsets[-1]).astype(np.float32))
    )
    words = np.array([f"{v:08x}" for v in rng.integers(0, 2**32, 4096)])
    cats = pa.array(words[rng.integers(0, 4096, rows)])
    tag_values = pa.array(words[rng.integers(0, 4096, offsets[-1])])
    return {
        "x": pa.array(rng.random(rows).astype(np.float32), mask=rng.random(rows) < 0.05),
        "n": pa.array(rng.integers(0, 10, rows)),
        "ids": ids,
        "other": other,
        "scores": scores,
        "cat": cats,
        "tags": pa.LargeListArray.from_arrays(pa.array(offsets), tag_values),
    }


def _f(x: float | None) -> float:
    return 0.0 if x is None else x


NaiveFn = Callable[[dict[str, Any]], Any]
BUCKETS = [0.1 * i for i in range(1, 10)]
KEEP = set(range(0, 1000, 3))

# op name -> (kind, source, params, naive per-row version)
OPS: dict[str, tuple[str, str, dict[str, Any], NaiveFn]] = {
    "fill_null": ("dense", "x", {"value": 0.0}, lambda r: _f(r["x"])),
    "clamp": (
        "dense",
        "x",
        {"min": 0.2, "max": 0.8},
        lambda r: None if r["x"] is None else min(max(r["x"], 0.2), 0.8),
    ),
    "log1p": ("dense", "x", {}, lambda r: None if r["x"] is None else math.log1p(max(r["x"], 0.0))),
    "logit": (
        "dense",
        "x",
        {"eps": 1e-6},
        lambda r: (
            None
            if r["x"] is None
            else (lambda p: math.log(p / (1 - p)))(min(max(r["x"], 1e-6), 1 - 1e-6))
        ),
    ),
    "box_cox": (
        "dense",
        "x",
        {"lambda": 0.5},
        lambda r: None if r["x"] is None or r["x"] <= 0 else (r["x"] ** 0.5 - 1) / 0.5,
    ),
    "normalize": (
        "dense",
        "x",
        {"mean": 0.5, "std": 0.3},
        lambda r: None if r["x"] is None else (r["x"] - 0.5) / 0.3,
    ),
    "scale_to_0_1": (
        "dense",
        "x",
        {"min": 0.2, "max": 0.6},
        lambda r: None if r["x"] is None else min(max((r["x"] - 0.2) / 0.4, 0.0), 1.0),
    ),
    "cast": (
        "dense",
        "x",
        {"to": "bool"},
        lambda r: None if r["x"] is None else float(r["x"] != 0),
    ),
    "bucketize": (
        "sparse",
        "x",
        {"boundaries": BUCKETS},
        lambda r: [] if r["x"] is None else [bisect.bisect_right(BUCKETS, r["x"])],
    ),
    "onehot": ("sparse", "n", {"num_classes": 5}, lambda r: [r["n"]] if 0 <= r["n"] < 5 else []),
    "expr": (
        "dense",
        "x",
        {"expr": "x * 2 + n"},
        lambda r: None if r["x"] is None else r["x"] * 2 + r["n"],
    ),
    "sigrid_hash": (
        "sparse",
        "ids",
        {"max_value": 100_000},
        lambda r: [hash_ids([i], 0) % 100_000 for i in r["ids"]],
    ),
    "first_x": ("sparse", "ids", {"x": 5}, lambda r: r["ids"][:5]),
    "map_id": (
        "sparse",
        "ids",
        {"path": "<vocab>"},
        lambda r: [VOCAB.get(i, 500) for i in r["ids"]],
    ),
    "clamp_list": (
        "sparse",
        "ids",
        {"min": 10, "max": 900},
        lambda r: [min(max(i, 10), 900) for i in r["ids"]],
    ),
    "dedup": ("sparse", "ids", {}, lambda r: list(dict.fromkeys(r["ids"]))),
    "keep_ids": (
        "sparse",
        "ids",
        {"ids": sorted(KEEP)},
        lambda r: [i for i in r["ids"] if i in KEEP],
    ),
    "drop_ids": (
        "sparse",
        "ids",
        {"ids": sorted(KEEP)},
        lambda r: [i for i in r["ids"] if i not in KEEP],
    ),
    "ngram": (
        "sparse",
        "ids",
        {"n": 2, "max_value": 100_000},
        lambda r: [hash_ids(r["ids"][k : k + 2], 0) % 100_000 for k in range(len(r["ids"]) - 1)],
    ),
    "cross": (
        "sparse",
        "ids",
        {"other": "other", "max_value": 100_000, "max_pairs": 64},
        lambda r: [hash_ids([a, b], 0) % 100_000 for a in r["ids"] for b in r["other"]][:64],
    ),
    "list_length": ("dense", "ids", {}, lambda r: float(len(r["ids"]))),
    "has_id_overlap": (
        "dense",
        "ids",
        {"other": "other"},
        lambda r: float(bool(set(r["ids"]) & set(r["other"]))),
    ),
    "id_overlap_count": (
        "dense",
        "ids",
        {"other": "other"},
        lambda r: float(len(set(r["ids"]) & set(r["other"]))),
    ),
    "jaccard": (
        "dense",
        "ids",
        {"other": "other"},
        lambda r: (lambda a, b: len(a & b) / len(a | b) if a | b else 0.0)(
            set(r["ids"]), set(r["other"])
        ),
    ),
    "cosine": (
        "dense",
        "ids",
        {"other": "other"},
        lambda r: (lambda a, b: len(a & b) / math.sqrt(len(a) * len(b)) if a and b else 0.0)(
            set(r["ids"]), set(r["other"])
        ),
    ),
    "score_sum": ("dense", "scores", {}, lambda r: sum(r["scores"])),
    "score_min": ("dense", "scores", {}, lambda r: min(r["scores"], default=None)),
    "score_max": ("dense", "scores", {}, lambda r: max(r["scores"], default=None)),
    "compute_score": (
        "dense",
        "scores",
        {"mode": "mean"},
        lambda r: sum(r["scores"]) / len(r["scores"]) if r["scores"] else None,
    ),
    "hash_string": (
        "sparse",
        "cat",
        {"max_value": 100_000},
        lambda r: [
            hash_ids(
                [len(r["cat"]), int.from_bytes(r["cat"].encode()[:8].ljust(8, b"\0"), "little")], 0
            )
            % 100_000
        ],
    ),
}
VOCAB = {i: k for k, i in enumerate(range(0, 1000, 2))}


def spec_of(kind: str, source: str, op: str, params: dict[str, Any]) -> Any:
    feature = spec_pb2.FeatureSpec(
        name="f",
        source=source,
        kind=spec_pb2.FEATURE_KIND_DENSE if kind == "dense" else spec_pb2.FEATURE_KIND_SPARSE,
    )
    feature.ops.add(op=op).params.update(params)
    return spec_from_proto(spec_pb2.SessionSpec(table_uri="/t", batch_size=1, features=[feature]))


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bench_ops(rows: int, naive_rows: int, vocab: Path) -> None:
    columns = make_columns(rows)
    table = pa.table(columns)
    naive_rows_list = table.slice(0, naive_rows).to_pylist()
    print(f"{'op':<18}{'vectorized rows/s':>20}{'naive rows/s':>15}{'speed-up':>10}")
    for op, (kind, source, params, naive) in OPS.items():
        if op == "map_id":
            params = {"path": str(vocab)}
        pipeline = FeaturePipeline(spec_of(kind, source, op, params), table.schema)
        vec = rows / best_of(lambda: pipeline.apply(table))  # noqa: B023

        def run_naive() -> None:
            for r in naive_rows_list:
                naive(r)  # noqa: B023

        slow = naive_rows / best_of(run_naive, repeats=1)
        print(f"{op:<18}{vec:>20,.0f}{slow:>15,.0f}{vec / slow:>9.0f}x")


def demo_spec(uri: str) -> Any:
    msg = spec_pb2.SessionSpec(
        table_uri=uri,
        batch_size=4096,
        label="label",
        row_filter="dense_12 IS NOT NULL OR label = 1",
    )
    for i in range(13):
        f = msg.features.add(name=f"d{i}", source=f"dense_{i}", kind=spec_pb2.FEATURE_KIND_DENSE)
        f.ops.add(op="fill_null").params.update({"value": 0.0})
        f.ops.add(op="clamp").params.update({"min": 0.0})
        f.ops.add(op="log1p")
    for i in range(26):
        f = msg.features.add(name=f"s{i}", source=f"sparse_{i}", kind=spec_pb2.FEATURE_KIND_SPARSE)
        f.ops.add(op="first_x").params.update({"x": 20})
        f.ops.add(op="sigrid_hash").params.update({"salt": i, "max_value": 100_000})
    return spec_from_proto(msg)


def bench_demo(rows: int, workdir: Path) -> None:
    uri = str(workdir / "demo")
    generate_table(uri, GenConfig(rows=rows))
    spec = demo_spec(uri)
    table = Table.open(uri)
    plan = table.plan_splits(spec.target_split_rows)
    pipeline = FeaturePipeline(spec, table.schema)
    batches = [
        b
        for split in plan.splits
        for b in read_split(
            split,
            filesystem=table.filesystem,
            columns=pipeline.input_columns,
            row_filter=None,
            batch_rows=65_536,
        )
    ]
    n = sum(b.num_rows for b in batches)
    transform = n / best_of(lambda: [pipeline.apply(b) for b in batches])
    row_filter = parse_filter(spec.row_filter, "row_filter")

    def read_and_transform() -> int:
        done = 0
        for split in plan.splits:
            for b in read_split(
                split,
                filesystem=table.filesystem,
                columns=pipeline.input_columns,
                row_filter=row_filter,
                batch_rows=65_536,
            ):
                done += pipeline.apply(b).num_rows
        return done

    full = n / best_of(read_and_transform)
    print(f"\ndemo pipeline (13 dense + 26 sparse), {n} rows, one process:")
    print(f"  transform only           {transform:>12,.0f} rows/s")
    print(f"  read + filter + transform {full:>11,.0f} rows/s (rows/s of table rows read)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ops", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--naive-rows", type=int, default=20_000)
    parser.add_argument("--demo-rows", type=int, default=300_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpp-bench-ops-") as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("".join(f"{i}\n" for i in VOCAB))
        bench_ops(args.rows, args.naive_rows, vocab)
        bench_demo(args.demo_rows, Path(tmp))


if __name__ == "__main__":
    main()
