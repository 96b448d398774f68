"""Every op against its per-row pure-Python reference (op_reference.py), on generated Arrow
tables run through spec validation and the real pipeline: nulls, empty and very long lists,
extreme and non-finite floats, unicode strings."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.op_reference import (
    all_same,
    box_cox,
    bucketize,
    cast,
    cross,
    dedup,
    logit,
    ngram,
    normalize,
    onehot,
    overlap,
    run_feature,
    scale01,
    score,
)
from tests.helpers.oracle import FLT_MAX, INT64_MAX, INT64_MIN, f32, sigrid_hash, string_hash

SETTINGS = settings(max_examples=60, deadline=None)

float32s = st.floats(width=32, allow_nan=True, allow_infinity=True)
extreme = st.sampled_from(
    [0.0, -0.0, 1.0, 0.5, FLT_MAX, -FLT_MAX, 1e-45, -1.0, math.inf, -math.inf, math.nan]
).map(f32)
dense_values = st.lists(st.none() | float32s | extreme, min_size=1, max_size=80)
small_ids = st.integers(-4, 6)
any_ids = st.integers(INT64_MIN, INT64_MAX) | small_ids
id_lists = (
    st.none() | st.lists(any_ids, max_size=8) | st.lists(small_ids, min_size=40, max_size=300)
)
score_items = st.none() | float32s | st.floats(-1e3, 1e3, width=32)
score_lists = (
    st.none()
    | st.lists(score_items, max_size=8)
    | st.lists(score_items, min_size=100, max_size=300)
)
texts = (
    st.text(max_size=12)
    | st.text(min_size=30, max_size=200)
    | st.sampled_from(["", "05db9164", "é", "日本語", "\0"])
)


def dense(values: list[float | None]) -> dict[str, pa.Array]:
    return {"x": pa.array(values, pa.float32())}


def wire(value: float | None) -> float:
    """Dense output is never null: what the wire delivers."""
    return 0.0 if value is None else value


def f32s(values: list[float | None]) -> list[float | None]:
    """The float32 values the ops see (hypothesis floats of width 32 already are)."""
    return [None if v is None else f32(v) for v in values]


# --- dense ----------------------------------------------------------------------------------


@SETTINGS
@given(values=dense_values, eps=st.floats(1e-7, 0.49))
def test_logit(values: list[float | None], eps: float) -> None:
    got = run_feature(dense(values), "dense", "x", [{"op": "logit", "eps": eps}])
    want = [wire(None if x is None else logit(x, eps)) for x in f32s(values)]
    assert all_same(got, want, rel=1e-6), (got, want)


@SETTINGS
@given(values=dense_values, lam=st.sampled_from([0.0, 0.5, -0.5, 1.0, 2.0, 3.0, -2.0, 10.0]))
def test_box_cox(values: list[float | None], lam: float) -> None:
    got = run_feature(dense(values), "dense", "x", [{"op": "box_cox", "lambda": lam}])
    want = [wire(None if x is None else box_cox(x, lam)) for x in f32s(values)]
    assert all_same(got, want, rel=1e-6), (got, want)


@SETTINGS
@given(values=dense_values, mean=st.floats(-1e6, 1e6), std=st.floats(1e-3, 1e6))
def test_normalize_zscore(values: list[float | None], mean: float, std: float) -> None:
    ops = [{"op": "normalize", "mode": "zscore", "mean": mean, "std": std}]
    got = run_feature(dense(values), "dense", "x", ops)
    want = [wire(None if x is None else normalize(x, mean, std)) for x in f32s(values)]
    assert all_same(got, want, rel=1e-6), (got, want)


@SETTINGS
@given(values=dense_values, lo=st.floats(-1e6, 1e6), span=st.floats(1e-3, 1e6))
def test_normalize_minmax_and_scale_to_0_1(
    values: list[float | None], lo: float, span: float
) -> None:
    hi = lo + span
    ops = [{"op": "normalize", "mode": "minmax", "min": lo, "max": hi}]
    got = run_feature(dense(values), "dense", "x", ops)
    want = [wire(None if x is None else normalize(x, lo, hi - lo)) for x in f32s(values)]
    assert all_same(got, want, rel=1e-6), (got, want)
    got = run_feature(dense(values), "dense", "x", [{"op": "scale_to_0_1", "min": lo, "max": hi}])
    want = [wire(None if x is None else scale01(x, lo, hi)) for x in f32s(values)]
    assert all_same(got, want, rel=1e-6), (got, want)


@SETTINGS
@given(
    values=dense_values,
    bounds=st.lists(st.floats(-1e30, 1e30), min_size=1, max_size=20, unique=True).map(sorted),
)
def test_bucketize(values: list[float | None], bounds: list[float]) -> None:
    got = run_feature(dense(values), "sparse", "x", [{"op": "bucketize", "boundaries": bounds}])
    assert got == [bucketize(x, bounds) for x in f32s(values)]


@SETTINGS
@given(
    values=st.lists(st.none() | st.integers(-3, 12).map(float) | float32s, min_size=1),
    k=st.integers(1, 10),
)
def test_onehot(values: list[float | None], k: int) -> None:
    got = run_feature(dense(values), "sparse", "x", [{"op": "onehot", "num_classes": k}])
    assert got == [onehot(x, k) for x in f32s(values)]


@SETTINGS
@given(values=dense_values, to=st.sampled_from(["int", "bool"]))
def test_cast_dense(values: list[float | None], to: str) -> None:
    got = run_feature(dense(values), "dense", "x", [{"op": "cast", "to": to}])
    assert all_same(got, [cast(x, to) for x in f32s(values)]), got


@SETTINGS
@given(values=st.lists(st.none() | float32s | st.integers(-(2**70), 2**70).map(float), min_size=1))
def test_cast_id(values: list[float | None]) -> None:
    got = run_feature(dense(values), "sparse", "x", [{"op": "cast", "to": "id"}])
    assert got == [cast(x, "id") for x in f32s(values)]


# --- sparse ---------------------------------------------------------------------------------


def ids(lists: list[list[int] | None], name: str = "a") -> dict[str, pa.Array]:
    return {name: pa.array(lists, pa.list_(pa.int64()))}


@SETTINGS
@given(
    lists=st.lists(id_lists, min_size=1, max_size=40),
    lo=st.none() | small_ids,
    span=st.integers(0, 5),
)
def test_clamp_list(lists: list[list[int] | None], lo: int | None, span: int) -> None:
    hi = None if lo is None else lo + span
    if lo is None:
        hi = 3
    got = run_feature(ids(lists), "sparse", "a", [{"op": "clamp_list", "min": lo, "max": hi}])

    def ref(i: int) -> int:
        if lo is not None:
            i = max(i, lo)
        return min(i, hi) if hi is not None else i

    assert got == [[ref(i) for i in row or []] for row in lists]


@SETTINGS
@given(lists=st.lists(id_lists, min_size=1, max_size=40))
def test_dedup(lists: list[list[int] | None]) -> None:
    got = run_feature(ids(lists), "sparse", "a", [{"op": "dedup"}])
    assert got == [dedup(row or []) for row in lists]


@SETTINGS
@given(lists=st.lists(id_lists, min_size=1, max_size=40), keep=st.lists(small_ids, max_size=6))
def test_keep_and_drop_ids(lists: list[list[int] | None], keep: list[int]) -> None:
    got = run_feature(ids(lists), "sparse", "a", [{"op": "keep_ids", "ids": keep}])
    assert got == [[i for i in row or [] if i in keep] for row in lists]
    got = run_feature(ids(lists), "sparse", "a", [{"op": "drop_ids", "ids": keep}])
    assert got == [[i for i in row or [] if i not in keep] for row in lists]


@SETTINGS
@given(
    lists=st.lists(id_lists, min_size=1, max_size=40),
    n=st.integers(2, 8),
    salt=st.integers(-(2**53), 2**53),
    m=st.integers(1, 2**53),
)
def test_ngram(lists: list[list[int] | None], n: int, salt: int, m: int) -> None:
    ops = [{"op": "ngram", "n": n, "salt": salt, "max_value": m}]
    got = run_feature(ids(lists), "sparse", "a", ops)
    assert got == [ngram(row or [], n, salt, m) for row in lists]


@SETTINGS
@given(
    pairs=st.lists(st.tuples(id_lists, id_lists), min_size=1, max_size=30),
    salt=st.integers(0, 100),
    cap=st.integers(1, 50),
)
def test_cross(pairs: list[tuple[Any, Any]], salt: int, cap: int) -> None:
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    columns = {**ids(a), "b": pa.array(b, pa.large_list(pa.int64()))}
    ops = [{"op": "cross", "other": "b", "salt": salt, "max_value": 1009, "max_pairs": cap}]
    got = run_feature(columns, "sparse", "a", ops)
    want = [[] if x is None or y is None else cross(x, y, salt, 1009, cap) for x, y in pairs]
    assert got == want


@SETTINGS
@given(lists=st.lists(id_lists, min_size=1, max_size=40))
def test_list_length(lists: list[list[int] | None]) -> None:
    got = run_feature(ids(lists), "dense", "a", [{"op": "list_length"}])
    assert got == [float(len(row or [])) for row in lists]


@SETTINGS
@given(
    pairs=st.lists(st.tuples(id_lists, id_lists), min_size=1, max_size=30),
    op=st.sampled_from(["has_id_overlap", "id_overlap_count", "jaccard", "cosine"]),
)
def test_overlap(pairs: list[tuple[Any, Any]], op: str) -> None:
    columns = {
        **ids([p[0] for p in pairs]),
        "b": pa.array([p[1] for p in pairs], pa.list_(pa.int64())),
    }
    got = run_feature(columns, "dense", "a", [{"op": op, "other": "b"}])
    want = [0.0 if x is None or y is None else overlap(op, x, y) for x, y in pairs]
    assert all_same(got, want, rel=1e-6), (got, want)


def test_map_id(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("10\n-3\n9223372036854775807\n0\n")
    lists = [[10, 11, 0, -3], [], None, [9223372036854775807, 10]]
    got = run_feature(ids(lists), "sparse", "a", [{"op": "map_id", "path": str(vocab)}])
    assert got == [[0, 4, 3, 1], [], [], [2, 0]]
    ops = [{"op": "map_id", "path": str(vocab), "oov_id": -1}]
    assert run_feature(ids(lists), "sparse", "a", ops)[0] == [0, -1, 3, 1]


@SETTINGS
@given(lists=st.lists(id_lists, min_size=1, max_size=40), data=st.data())
def test_map_id_property(
    tmp_path_factory: pytest.TempPathFactory, lists: list[list[int] | None], data: st.DataObject
) -> None:
    words = data.draw(st.lists(any_ids, unique=True, max_size=20))
    path = tmp_path_factory.mktemp("vocab") / "v.txt"
    path.write_text("".join(f"{w}\n" for w in words))
    got = run_feature(ids(lists), "sparse", "a", [{"op": "map_id", "path": str(path)}])
    index = {w: i for i, w in enumerate(words)}
    assert got == [[index.get(i, len(words)) for i in row or []] for row in lists]


# --- weighted lists -------------------------------------------------------------------------


@SETTINGS
@given(
    lists=st.lists(score_lists, min_size=1, max_size=30),
    mode=st.sampled_from(["sum", "min", "max", "mean", "l2"]),
)
def test_scores(lists: list[list[float | None] | None], mode: str) -> None:
    columns = {"s": pa.array(lists, pa.list_(pa.float32()))}
    got = run_feature(columns, "dense", "s", [{"op": "compute_score", "mode": mode}])
    clean = [
        None if r is None else [f32(v) for v in r if v is not None and not math.isnan(v)]
        for r in lists
    ]
    want = [0.0 if r is None else wire(score(mode, r)) for r in clean]
    assert all_same(got, want, rel=1e-5), (got, want)
    if mode in ("sum", "min", "max"):
        assert all_same(run_feature(columns, "dense", "s", [{"op": f"score_{mode}"}]), got)


@SETTINGS
@given(lists=st.lists(score_lists, min_size=1, max_size=30))
def test_scale_scores_then_sum(lists: list[list[float | None] | None]) -> None:
    columns = {"s": pa.array(lists, pa.list_(pa.float32()))}
    ops = [{"op": "scale_to_0_1", "min": -10.0, "max": 10.0}, {"op": "score_sum"}, {"op": "log1p"}]
    got = run_feature(columns, "dense", "s", ops)
    want = []
    for r in lists:
        if r is None:
            want.append(0.0)
            continue
        scaled = [scale01(f32(v), -10.0, 10.0) for v in r if v is not None and not math.isnan(v)]
        want.append(f32(math.log1p(f32(sum(scaled)))))
    assert all_same(got, want, rel=1e-5), (got, want)


# --- strings --------------------------------------------------------------------------------


@SETTINGS
@given(
    values=st.lists(st.none() | texts, min_size=1, max_size=40),
    salt=st.integers(-5, 5),
    large=st.booleans(),
)
def test_hash_string(values: list[str | None], salt: int, large: bool) -> None:
    columns = {"c": pa.array(values, pa.large_string() if large else pa.string())}
    ops = [{"op": "hash_string", "max_value": 1_000_003, "salt": salt}]
    got = run_feature(columns, "sparse", "c", ops)
    assert got == [[] if v is None else [string_hash(v, salt) % 1_000_003] for v in values]


@SETTINGS
@given(
    values=st.lists(st.none() | st.lists(st.none() | texts, max_size=6), min_size=1, max_size=30)
)
def test_hash_string_lists(values: list[list[str | None] | None]) -> None:
    columns = {"c": pa.array(values, pa.list_(pa.string()))}
    got = run_feature(columns, "sparse", "c", [{"op": "hash_string", "max_value": 97}])
    want = [[string_hash(v, 0) % 97 for v in row or [] if v is not None] for row in values]
    assert got == want
    length = run_feature(columns, "dense", "c", [{"op": "list_length"}])
    assert length == [float(len([v for v in row or [] if v is not None])) for row in values]


# --- derived --------------------------------------------------------------------------------

EXPRS = [
    "x * 2 + y / (abs(y) + 1)",
    "coalesce(x, y, -1) - 0.5",
    "ln(x) + log1p(y) - exp(x / 1e6) + sqrt(y)",
    "power(x, 2) / y",
]


def expr_ref(text: str, x: float | None, y: float | None) -> float | None:
    """numpy float64 scalars give IEEE results (inf, NaN) where Python's math raises."""
    if text.startswith("coalesce"):
        first = x if x is not None else y if y is not None else -1.0
        return f32(float(np.float64(first) - 0.5))
    if x is None or y is None:
        return None
    a, b = np.float64(x), np.float64(y)
    with np.errstate(all="ignore"):
        if text.startswith("x * 2"):
            r = a * 2 + b / (np.abs(b) + 1)
        elif text.startswith("ln"):
            r = np.log(a) + np.log1p(b) - np.exp(a / 1e6) + np.sqrt(b)
        else:
            r = np.power(a, 2.0) / b
    return f32(float(r))


@SETTINGS
@given(
    rows=st.lists(st.tuples(st.none() | float32s, st.none() | float32s), min_size=1, max_size=40),
    text=st.sampled_from(EXPRS),
)
def test_expr(rows: list[tuple[float | None, float | None]], text: str) -> None:
    xs, ys = [r[0] for r in rows], [r[1] for r in rows]
    columns = {"x": pa.array(xs, pa.float32()), "y": pa.array(ys, pa.float64())}
    got = run_feature(columns, "dense", "x", [{"op": "expr", "expr": text}])
    want = [
        wire(expr_ref(text, x, None if y is None else f32(y)))
        for x, y in zip(f32s(xs), ys, strict=True)
    ]
    assert all_same(got, want, rel=1e-6), (got, want)


# --- chains and sources -----------------------------------------------------------------------


@SETTINGS
@given(values=st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=40))
def test_integer_column_as_sparse_then_hash(values: list[int | None]) -> None:
    columns = {"k": pa.array(values, pa.int64())}
    got = run_feature(columns, "sparse", "k", [{"op": "sigrid_hash", "max_value": 1000}])
    assert got == [[] if v is None else [sigrid_hash(v, 0, 1000)] for v in values]
