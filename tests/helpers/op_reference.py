"""Independent per-row pure-Python references of every op, and a helper that runs one feature
through the real pipeline. Written from docs/ops.md on :mod:`tests.helpers.oracle` (float32
rounding, the hashes), sharing no code with dpp_server.transforms.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from dpp_proto import spec_pb2
from dpp_server.spec import spec_from_proto
from dpp_server.transforms import FeaturePipeline
from tests.helpers.oracle import INT64_MAX, INT64_MIN, f32, hash_ids

# --- dense ----------------------------------------------------------------------------------


def logit(x: float, eps: float) -> float:
    if math.isnan(x):
        return x
    p = min(max(x, eps), 1.0 - eps)
    return f32(math.log(p / (1.0 - p)))


def box_cox(x: float, lam: float) -> float | None:
    if math.isnan(x):
        return x
    if x <= 0:
        return None
    if lam == 0.0:
        return f32(math.log(x))
    try:
        powered = x**lam
    except OverflowError:
        powered = math.inf
    return f32((powered - 1.0) / lam)


def normalize(x: float, shift: float, scale: float) -> float:
    return f32((x - shift) / scale)


def scale01(x: float, lo: float, hi: float) -> float:
    if math.isnan(x):
        return x
    y = (x - lo) / (hi - lo)
    return f32(min(max(y, 0.0), 1.0))


def bucketize(x: float | None, bounds: Sequence[float]) -> list[int]:
    if x is None or math.isnan(x):
        return []
    return [bisect.bisect_right(bounds, x)]


def onehot(x: float | None, k: int) -> list[int]:
    if x is None or not math.isfinite(x) or x != math.floor(x) or not 0 <= x < k:
        return []
    return [int(x)]


def cast(x: float | None, to: str) -> Any:
    if to == "id":
        if x is None or not math.isfinite(x) or not INT64_MIN <= math.trunc(x) <= INT64_MAX:
            return []
        return [math.trunc(x)]
    if x is None:
        return 0.0
    if to == "bool":
        return 1.0 if (x != 0 or math.isnan(x)) else 0.0
    if not math.isfinite(x):
        return x
    return float(math.trunc(x))


# --- lists ----------------------------------------------------------------------------------


def dedup(ids: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def ngram(ids: list[int], n: int, salt: int, m: int) -> list[int]:
    return [hash_ids(ids[k : k + n], salt) % m for k in range(len(ids) - n + 1)]


def cross(a: list[int], b: list[int], salt: int, m: int, cap: int) -> list[int]:
    return [hash_ids([x, y], salt) % m for x in a for y in b][:cap]


def overlap(op: str, a: list[int], b: list[int]) -> float:
    sa, sb = set(a), set(b)
    inter = len(sa & sb)
    if op == "has_id_overlap":
        return 1.0 if inter else 0.0
    if op == "id_overlap_count":
        return float(inter)
    if op == "jaccard":
        union = len(sa | sb)
        return f32(inter / union) if union else 0.0
    return f32(inter / math.sqrt(len(sa) * len(sb))) if sa and sb else 0.0


def score(mode: str, scores: list[float]) -> float | None:
    if mode == "sum":
        return f32(sum(scores))
    if mode == "l2":
        return f32(math.sqrt(sum(s * s for s in scores)))
    if not scores:
        return None
    if mode == "mean":
        return f32(sum(scores) / len(scores))
    return min(scores) if mode == "min" else max(scores)


# --- running a feature through the pipeline -------------------------------------------------


def run_feature(
    columns: dict[str, pa.Array],
    kind: str,
    source: str,
    ops: list[dict[str, Any]],
) -> list[Any]:
    """Runs one feature through spec validation and the real FeaturePipeline; returns the
    delivered values (floats for dense, id lists for sparse), one per row."""
    feature = spec_pb2.FeatureSpec(
        name="f",
        source=source,
        kind=spec_pb2.FEATURE_KIND_DENSE if kind == "dense" else spec_pb2.FEATURE_KIND_SPARSE,
    )
    for op in ops:
        o = feature.ops.add(op=op["op"])
        o.params.update({k: v for k, v in op.items() if k != "op"})
    spec = spec_from_proto(spec_pb2.SessionSpec(table_uri="/t", batch_size=1, features=[feature]))
    table = pa.table(columns)
    out = FeaturePipeline(spec, table.schema).apply(table)
    if kind == "dense":
        flat = out.column("dense").flatten().to_numpy(zero_copy_only=False)
        assert flat.dtype == np.float32
        return [float(v) for v in flat]
    column = out.column("sparse.f")
    assert column.type == pa.large_list(pa.int64()) and column.null_count == 0
    return column.to_pylist()


def same(a: Any, b: Any, rel: float = 0.0) -> bool:
    """Equal, NaN equal to NaN, floats within ``rel`` relative tolerance."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if math.isinf(a) or math.isinf(b) or rel == 0.0:
            return a == b
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-37)
    return bool(a == b)


def all_same(got: Sequence[Any], want: Sequence[Any], rel: float = 0.0) -> bool:
    return len(got) == len(want) and all(same(g, w, rel) for g, w in zip(got, want, strict=True))
