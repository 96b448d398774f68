"""Every op family through a live cluster (a master and two workers as processes), checked row
by row against the pure-Python references of tests/helpers/op_reference.py; and filter
pushdown verified through the service's plan."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_proto import master_pb2, master_pb2_grpc
from dpp_server.local_cluster import LocalCluster
from tests.helpers import op_reference as ref
from tests.helpers import secure
from tests.helpers.oracle import f32, hash_ids, sigrid_hash, string_hash, unit

pytestmark = pytest.mark.integration


ROWS_PER_DAY = 2_000
ROW_GROUP = 500
SEED = 3
VOCAB = [7, 3, 11, 0, 42, 19]


def make_table(root: Path) -> tuple[str, pa.Table]:
    """Two Hive partitions, 500-row row groups, row_id ascending (so statistics prune)."""
    rng = np.random.default_rng(5)
    n = 2 * ROWS_PER_DAY
    x = rng.random(n).astype(np.float32)
    x_mask = rng.random(n) < 0.05

    def id_list(max_len: int) -> list[list[int] | None]:
        return [
            None if rng.random() < 0.03 else rng.integers(0, 25, rng.integers(0, max_len)).tolist()
            for _ in range(n)
        ]

    scores = [
        None
        if rng.random() < 0.03
        else (rng.random(rng.integers(0, 6)) * 3).astype(np.float32).tolist()
        for _ in range(n)
    ]
    cats = [None if rng.random() < 0.05 else f"{int(v):08x}" for v in rng.integers(0, 2**32, n)]
    tags = [
        None
        if rng.random() < 0.05
        else [f"tag-{int(t)}-é" for t in rng.integers(0, 30, rng.integers(0, 4))]
        for _ in range(n)
    ]
    table = pa.table(
        {
            "row_id": pa.array(np.arange(n, dtype=np.int64)),
            "label": pa.array((rng.random(n) < 0.2).astype(np.float32)),
            "w": pa.array(rng.random(n).astype(np.float32) + 0.5),
            "x": pa.array(x, mask=x_mask),
            "n": pa.array(rng.integers(0, 9, n)),
            "ids": pa.array(id_list(12), pa.list_(pa.int64())),
            "other": pa.array(id_list(6), pa.list_(pa.int32())),
            "scores": pa.array(scores, pa.list_(pa.float32())),
            "cat": pa.array(cats, pa.string()),
            "tags": pa.array(tags, pa.list_(pa.string())),
        }
    )
    uri = root / "table"
    for day in range(2):
        part = uri / f"ds=2026-01-0{day + 1}"
        part.mkdir(parents=True)
        pq.write_table(
            table.slice(day * ROWS_PER_DAY, ROWS_PER_DAY),
            part / "part-00000.parquet",
            row_group_size=ROW_GROUP,
        )
    return str(uri), table


def spec_for(uri: str, vocab: Path) -> SessionSpec:
    dense = [
        Feature(
            "d_logit", "dense", "x", (Op("fill_null", {"value": 0.5}), Op("logit", {"eps": 1e-4}))
        ),
        Feature(
            "d_box", "dense", "x", (Op("clamp", {"min": 0.01}), Op("box_cox", {"lambda": 0.5}))
        ),
        Feature("d_norm", "dense", "x", (Op("normalize", {"mean": 0.5, "std": 0.25}),)),
        Feature(
            "d_cast", "dense", "x", (Op("expr", {"expr": "x * 10"}), Op("cast", {"to": "int"}))
        ),
        Feature("d_len", "dense", "ids", (Op("dedup"), Op("list_length"))),
        Feature("d_jac", "dense", "ids", (Op("jaccard", {"other": "other"}),)),
        Feature("d_cos", "dense", "ids", (Op("cosine", {"other": "other"}),)),
        Feature(
            "d_score",
            "dense",
            "scores",
            (Op("scale_to_0_1", {"min": 0.0, "max": 2.0}), Op("compute_score", {"mode": "mean"})),
        ),
        Feature("d_smax", "dense", "scores", (Op("score_max"),)),
        Feature("d_expr", "dense", "x", (Op("expr", {"expr": "coalesce(x, 1) * 2 + n"}),)),
        Feature("d_tags", "dense", "tags", (Op("list_length"),)),
    ]
    sparse = [
        Feature("s_bucket", "sparse", "x", (Op("bucketize", {"boundaries": [0.25, 0.5, 0.75]}),)),
        Feature("s_onehot", "sparse", "n", (Op("onehot", {"num_classes": 5}),)),
        Feature("s_map", "sparse", "ids", (Op("map_id", {"path": str(vocab)}),)),
        Feature(
            "s_ngram", "sparse", "ids", (Op("dedup"), Op("ngram", {"n": 2, "max_value": 1000}))
        ),
        Feature(
            "s_cross",
            "sparse",
            "ids",
            (
                Op("first_x", {"x": 3}),
                Op("cross", {"other": "other", "max_value": 1000, "max_pairs": 5}),
            ),
        ),
        Feature(
            "s_keep",
            "sparse",
            "ids",
            (Op("clamp_list", {"min": 2, "max": 20}), Op("keep_ids", {"ids": [2, 5, 20]})),
        ),
        Feature(
            "s_drop",
            "sparse",
            "ids",
            (Op("drop_ids", {"ids": [1, 2, 3]}), Op("sigrid_hash", {"salt": 4, "max_value": 100})),
        ),
        Feature("s_cat", "sparse", "cat", (Op("hash_string", {"max_value": 1000}),)),
        Feature("s_tags", "sparse", "tags", (Op("hash_string", {"max_value": 500, "salt": 2}),)),
    ]
    return SessionSpec(
        table_uri=uri,
        features=(*dense, *sparse),
        label="label",
        weight="w",
        passthrough=("row_id",),
        row_filter="row_id >= 1000",
        negative_downsample_rate=0.5,
        sample_key="row_id",
        seed=SEED,
        batch_size=256,
        target_split_rows=500,
    )


def expected(table: pa.Table) -> dict[int, dict[str, Any]]:
    """row_id -> every delivered value, from the references, for the rows sampling keeps."""
    cols = table.to_pydict()
    index = {v: i for i, v in enumerate(VOCAB)}
    out: dict[int, dict[str, Any]] = {}
    for r, row_id in enumerate(cols["row_id"]):
        label = cols["label"][r]
        if row_id < 1000 or (label == 0 and unit(hash_ids([row_id], SEED + 1)) >= 0.5):
            continue
        x = cols["x"][r]
        x32 = None if x is None else f32(x)
        ids = cols["ids"][r] or []
        other = cols["other"][r] or []
        both = cols["ids"][r] is not None and cols["other"][r] is not None
        scores = cols["scores"][r]
        tags = cols["tags"][r]
        box = None if x32 is None else ref.box_cox(max(x32, f32(0.01)), 0.5)
        n = cols["n"][r]
        times10 = None if x32 is None else f32(x32 * 10)
        out[row_id] = {
            "d_logit": ref.logit(0.5 if x32 is None else x32, 1e-4),
            "d_box": 0.0 if box is None else box,
            "d_norm": 0.0 if x32 is None else ref.normalize(x32, 0.5, 0.25),
            "d_cast": ref.cast(times10, "int"),
            "d_len": float(len(ref.dedup(ids))),
            "d_jac": ref.overlap("jaccard", ids, other) if both else 0.0,
            "d_cos": ref.overlap("cosine", ids, other) if both else 0.0,
            "d_score": 0.0
            if scores is None
            else (ref.score("mean", [ref.scale01(f32(s), 0.0, 2.0) for s in scores]) or 0.0),
            "d_smax": 0.0 if not scores else max(f32(s) for s in scores),
            "d_expr": f32((1.0 if x32 is None else x32) * 2 + n),
            "d_tags": float(len(tags or [])),
            "s_bucket": ref.bucketize(x32, [0.25, 0.5, 0.75]),
            "s_onehot": ref.onehot(float(n), 5),
            "s_map": [index.get(i, len(VOCAB)) for i in ids],
            "s_ngram": ref.ngram(ref.dedup(ids), 2, 0, 1000),
            "s_cross": ref.cross(ids[:3], other, 0, 1000, 5) if both else [],
            "s_keep": [i for i in (min(max(i, 2), 20) for i in ids) if i in (2, 5, 20)],
            "s_drop": [sigrid_hash(i, 4, 100) for i in ids if i not in (1, 2, 3)],
            "s_cat": [] if cols["cat"][r] is None else [string_hash(cols["cat"][r], 0) % 1000],
            "s_tags": [string_hash(t, 2) % 500 for t in tags or []],
            "label": label,
            "weight": f32(cols["w"][r] * (2.0 if label == 0 else 1.0)),
        }
    return out


def close(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6)


def test_every_op_family_through_the_service(cluster: LocalCluster, tmp_path: Path) -> None:
    uri, table = make_table(tmp_path)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"{v}\n" for v in VOCAB))
    spec = spec_for(uri, vocab)
    want = expected(table)
    got: dict[int, dict[str, Any]] = {}
    with DppLoader(cluster.master_address, spec) as loader:
        for batch in loader:
            dense = batch.dense.numpy()
            assert batch.weights is not None and batch.labels is not None
            rows = batch.extras["row_id"].tolist()
            for name, jagged in batch.sparse.items():
                offsets, values = jagged.offsets.tolist(), jagged.values.tolist()
                for k, row_id in enumerate(rows):
                    got.setdefault(row_id, {})[name] = values[offsets[k] : offsets[k + 1]]
            for k, row_id in enumerate(rows):
                assert row_id not in got or "label" not in got[row_id], f"row {row_id} twice"
                entry = got.setdefault(row_id, {})
                entry.update(zip(batch.dense_names, (float(v) for v in dense[k]), strict=True))
                entry["label"] = float(batch.labels[k])
                entry["weight"] = float(batch.weights[k])
    assert sorted(got) == sorted(want)
    for row_id, values in want.items():
        for name, value in values.items():
            have = got[row_id][name]
            ok = have == value if isinstance(value, list) else close(have, value)
            assert ok, (row_id, name, have, value)


def test_filters_are_pushed_down_to_partitions_and_row_groups(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    uri, _ = make_table(tmp_path)
    plans = {}
    with secure.channel(cluster.master_address) as channel:
        stub = master_pb2_grpc.MasterServiceStub(channel)
        for name, fields in {
            "all": {},
            "rows": {"row_filter": "row_id >= 1000 AND row_id < 2500"},
            "partition": {"partition_filter": "ds = '2026-01-02'"},
        }.items():
            spec = SessionSpec(
                table_uri=uri,
                features=(Feature("d", "dense", "x"),),
                target_split_rows=500,
                **fields,  # type: ignore[arg-type]
            )
            request = master_pb2.CreateSessionRequest(spec=spec.to_proto())
            plans[name] = stub.CreateSession(request).plan
    assert (plans["all"].num_row_groups, plans["all"].num_partitions) == (8, 2)
    # Row groups [1000, 1500), [1500, 2000), [2000, 2500) survive their statistics.
    assert plans["rows"].num_row_groups == 3 and plans["rows"].num_rows == 1500
    assert (plans["partition"].num_partitions, plans["partition"].num_row_groups) == (1, 4)
