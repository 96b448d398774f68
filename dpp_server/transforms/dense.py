"""Dense ops: one float32 per row.

Owns the ops on ``dense`` values: ``fill_null``, ``clamp``, ``log1p``, ``logit``, ``box_cox``,
``normalize``, ``scale_to_0_1`` (also on score lists), ``cast``, and the two that turn a dense
value into a one-id list: ``bucketize`` and ``onehot``. Must never import grpc, storage or do
I/O.

Every dense op maps a nullable ``Float32`` expression to a nullable ``Float32`` expression
(``bucketize``, ``onehot`` and ``cast(to: id)`` to ``List(Int64)``). Transcendental ops compute
in float64 and round once to float32, so that their results are the correctly rounded value of
the documented formula and never depend on float32 overflow inside it.
Literals are typed ``Float32`` on purpose: a float64 literal may promote the column to
float64, doubling memory and leaving the wire's float32 contract to a late cast. Nulls stay
null through every op except :func:`fill_null`; the wire fills any null left after the last op
with 0.0 (dense output is never null). NaN and ±inf are values, not nulls: only ``log1p``
maps them (to finite numbers).
"""

from __future__ import annotations

import polars as pl

from dpp_server.errors import SpecError
from dpp_server.transforms.registry import (
    FLOAT32_MAX,
    ExprFn,
    OpDef,
    Param,
    Params,
    VType,
    register,
)

_DENSE: frozenset[VType] = frozenset({"dense"})
_DENSE_OR_SCORES: frozenset[VType] = frozenset({"dense", "scores"})
_IDS = pl.List(pl.Int64)


def _f32(value: float) -> pl.Expr:
    """A Float32 literal, so that ops never promote the column to Float64."""
    return pl.lit(value, dtype=pl.Float32)


def _compile_fill_null(params: Params, vtype: VType) -> ExprFn:
    """``fill_null(value=0.0)``: replaces null with ``value``.

    Semantics: ``y = value if x is null else x``. NaN is a value, not a null, and is kept.
    Params: ``value`` (float, finite, fits float32; default 0.0).
    """
    del vtype
    value = _f32(params["value"])
    return lambda expr: expr.fill_null(value)


def _compile_clamp(params: Params, vtype: VType) -> ExprFn:
    """``clamp(min=None, max=None)``: limits values to ``[min, max]``.

    Semantics: ``y = min(max(x, min), max)``, a missing bound is unbounded on that side;
    bounds are rounded to float32 like the column. ``-inf``/``+inf`` clamp to the bounds.
    Nulls and NaN pass through unchanged.
    Params: ``min``, ``max`` (float or null; at least one set; ``min <= max``).
    """
    del vtype
    lo = None if params["min"] is None else _f32(params["min"])
    hi = None if params["max"] is None else _f32(params["max"])
    return lambda expr: expr.clip(lo, hi)


def _check_clamp(params: Params, path: str) -> None:
    """Rejects clamps that cannot have been meant: no bound, or an empty interval."""
    lo, hi = params["min"], params["max"]
    if lo is None and hi is None:
        raise SpecError(f"{path}.min", "clamp needs min, max or both", "set at least one bound")
    if lo is not None and hi is not None and lo > hi:
        raise SpecError(
            f"{path}.min",
            f"min {lo!r} is greater than max {hi!r}",
            "set min <= max",
        )


def _compile_log1p(params: Params, vtype: VType) -> ExprFn:
    """``log1p()``: ``ln(1 + x)`` for a count-like feature, always finite.

    Semantics: ``y = ln(1 + clamp(x, 0, FLOAT32_MAX))``, computed in float64 and rounded
    once to float32 like every transcendental op (a float32 ``log1p`` is off by one ulp for
    about 1% of inputs): negative values and ``-inf`` give 0, ``+inf`` gives
    ``ln(1 + FLOAT32_MAX)`` (about 88.72), NaN gives 0. Clamping below at 0 (rather than at
    -1) follows the usual count-feature preprocessing (e.g. Criteo): a negative count is
    treated as a missing one, never as a large negative. Nulls stay null. Params: none.
    """
    del params, vtype
    zero, top = _f32(0.0), _f32(FLOAT32_MAX)
    return lambda expr: _f64(expr.clip(zero, top).fill_nan(zero)).log1p().cast(pl.Float32)


def _f64(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.Float64)


def _lit64(value: float) -> pl.Expr:
    return pl.lit(value, dtype=pl.Float64)


def _compile_logit(params: Params, vtype: VType) -> ExprFn:
    """``logit(eps=1e-6)``: log-odds of a probability-like value.

    Semantics: ``p = min(max(x, eps), 1 - eps)``, ``y = ln(p / (1 - p))``, computed in
    float64 and rounded to float32; ``-inf``/``+inf`` clamp like any value. Nulls stay null,
    NaN stays NaN. Params: ``eps`` (float, 0 < eps < 0.5, default 1e-6).
    """
    del vtype
    eps = float(params["eps"])
    lo, hi = _lit64(eps), _lit64(1.0 - eps)
    one = _lit64(1.0)

    def fn(expr: pl.Expr) -> pl.Expr:
        p = _f64(expr).clip(lo, hi)
        return (p / (one - p)).log().cast(pl.Float32)

    return fn


def _check_logit(params: Params, path: str) -> None:
    eps = params["eps"]
    if not 0.0 < eps < 0.5:
        raise SpecError(f"{path}.eps", f"must be in (0, 0.5), got {eps!r}", "e.g. eps: 1.0e-6")


def _compile_box_cox(params: Params, vtype: VType) -> ExprFn:
    """``box_cox(lambda)``: the Box-Cox power transform of a positive value.

    Semantics: ``y = (x ** lambda - 1) / lambda``, or ``ln(x)`` when ``lambda`` is 0, in
    float64 rounded to float32 (overflow gives ±inf). Values ``<= 0`` (and ``-inf``) are
    outside its domain and give null, delivered as 0.0 unless a later ``fill_null`` says
    otherwise. Nulls stay null, NaN stays NaN, ``+inf`` follows the formula.
    Params: ``lambda`` (float in [-10, 10], required).
    """
    del vtype
    lam = float(params["lambda"])
    zero = _lit64(0.0)

    def fn(expr: pl.Expr) -> pl.Expr:
        x = _f64(expr)
        y = x.log() if lam == 0.0 else (x.pow(lam) - 1.0) / lam
        return pl.when(x <= zero).then(None).otherwise(y).cast(pl.Float32)

    return fn


def _compile_normalize(params: Params, vtype: VType) -> ExprFn:
    """``normalize(mode=zscore, mean, std, min, max)``: standardises with given statistics.

    Semantics: ``zscore``: ``y = (x - mean) / std``; ``minmax``: ``y = (x - min) / (max -
    min)`` (not clipped: values outside the range map outside [0, 1]). Computed in float64,
    rounded to float32. Nulls stay null, NaN stays NaN, infinities stay infinite.
    Params: ``mode`` (``zscore`` or ``minmax``); ``mean`` (default 0) and ``std`` (> 0,
    default 1) for zscore; ``min`` and ``max`` (``min < max``, required) for minmax.
    """
    del vtype
    if params["mode"] == "zscore":
        shift, scale = float(params["mean"]), float(params["std"])
    else:
        shift, scale = float(params["min"]), float(params["max"]) - float(params["min"])
    a, b = _lit64(shift), _lit64(scale)
    return lambda expr: ((_f64(expr) - a) / b).cast(pl.Float32)


def _check_normalize(params: Params, path: str) -> None:
    if params["mode"] == "zscore":
        if params["std"] <= 0.0:
            raise SpecError(
                f"{path}.std", f"must be > 0, got {params['std']!r}", "give the column's std"
            )
        for name in ("min", "max"):
            if params[name] is not None:
                raise SpecError(
                    f"{path}.{name}",
                    f"{name} is for mode minmax, not zscore",
                    "remove it or set mode: minmax",
                )
        return
    lo, hi = params["min"], params["max"]
    for name, value in (("min", lo), ("max", hi)):
        if value is None:
            raise SpecError(f"{path}.{name}", f"mode minmax needs {name}", "give the range")
    if not lo < hi:
        raise SpecError(f"{path}.min", f"min {lo!r} must be less than max {hi!r}", "set min < max")


def _compile_scale_to_0_1(params: Params, vtype: VType) -> ExprFn:
    """``scale_to_0_1(min, max)``: maps ``[min, max]`` onto ``[0, 1]``, clipping outside.

    Semantics: ``y = min(max((x - min) / (max - min), 0), 1)`` in float64 rounded to float32;
    ``-inf`` gives 0, ``+inf`` gives 1. On a dense value: nulls stay null, NaN stays NaN. On a
    score list: applied to every score (NaN scores were dropped); empty lists stay empty, null
    lists stay null. Params: ``min``, ``max`` (floats, ``min < max``, required).
    """
    lo, span = float(params["min"]), float(params["max"]) - float(params["min"])
    a, b, zero, one = _lit64(lo), _lit64(span), _lit64(0.0), _lit64(1.0)

    def scale(x: pl.Expr) -> pl.Expr:
        return ((_f64(x) - a) / b).clip(zero, one).cast(pl.Float32)

    if vtype == "scores":
        return lambda expr: expr.list.eval(scale(pl.element()))
    return scale


def _check_min_lt_max(params: Params, path: str) -> None:
    lo, hi = params["min"], params["max"]
    if not lo < hi:
        raise SpecError(f"{path}.min", f"min {lo!r} must be less than max {hi!r}", "set min < max")


def _one_id(valid: pl.Expr, ids: pl.Expr) -> pl.Expr:
    """A one-id list where ``valid``, an empty list where it is false, null where it is null."""
    empty = pl.lit([], dtype=_IDS)
    return pl.when(valid).then(pl.concat_list(ids.cast(pl.Int64))).otherwise(empty)


def _compile_bucketize(params: Params, vtype: VType) -> ExprFn:
    """``bucketize(boundaries)``: the bucket of a value, as a one-id list (a sparse value).

    Semantics: ``y = [number of boundaries b with b <= x]`` (Python's ``bisect_right``), so
    bucket ids run from 0 (below the first boundary) to ``len(boundaries)``; ``-inf`` is in
    bucket 0 and ``+inf`` in the last. Compared in float64 against the exact boundaries. A null
    gives a null list, NaN an empty list (both delivered empty). Params: ``boundaries`` (a
    non-empty list of finite floats, strictly ascending).
    """
    del vtype
    bounds = pl.lit(pl.Series(list(params["boundaries"]), dtype=pl.Float64))

    def fn(expr: pl.Expr) -> pl.Expr:
        x = _f64(expr)
        bucket = bounds.search_sorted(x, side="right")
        return pl.when(x.is_null()).then(None).otherwise(_one_id(~x.is_nan(), bucket))

    return fn


def _check_boundaries(params: Params, path: str) -> None:
    bounds = params["boundaries"]
    if not bounds:
        raise SpecError(f"{path}.boundaries", "is empty", "give at least one boundary")
    for i in range(1, len(bounds)):
        if not bounds[i - 1] < bounds[i]:
            raise SpecError(
                f"{path}.boundaries",
                f"must be sorted ascending without repeats; [{i - 1}] = {bounds[i - 1]!r} "
                f"is not below [{i}] = {bounds[i]!r}",
                "sort the boundaries and drop repeats",
            )


def _compile_onehot(params: Params, vtype: VType) -> ExprFn:
    """``onehot(num_classes)``: a class index as the one-id list of its one-hot vector.

    Semantics: ``y = [int(x)]`` when ``x`` is integral and ``0 <= x < num_classes``, else
    ``[]`` (the all-zero vector: out of range, fractional, NaN or infinite). An embedding bag
    over ``y`` equals a one-hot vector times the table. Nulls give null (delivered empty).
    Params: ``num_classes`` (int >= 1).
    """
    del vtype
    k = _lit64(float(params["num_classes"]))
    zero = _lit64(0.0)

    def fn(expr: pl.Expr) -> pl.Expr:
        x = _f64(expr)
        ok = (x >= zero) & (x < k) & (x == x.floor())
        ids = x.cast(pl.Int64, strict=False)
        return pl.when(x.is_null()).then(None).otherwise(_one_id(ok, ids))

    return fn


def _compile_cast(params: Params, vtype: VType) -> ExprFn:
    """``cast(to)``: changes what a dense value means.

    Semantics: ``to: int`` truncates toward zero (``y = trunc(x)``; NaN and ±inf stay);
    ``to: bool`` gives ``1.0`` where ``x != 0`` (NaN included) and ``0.0`` where ``x == 0``;
    ``to: id`` makes the value a sparse one-id list ``[trunc(x)]``, an empty list when ``x``
    is NaN, infinite or outside int64. Nulls stay null (a null list for ``id``).
    Params: ``to`` (``int``, ``bool`` or ``id``, required).
    """
    del vtype
    to = params["to"]
    zero = _f32(0.0)
    if to == "int":
        return lambda x: pl.when(x < zero).then(x.ceil()).otherwise(x.floor())
    if to == "bool":
        return lambda x: (x != zero).cast(pl.Float32)

    def to_id(x: pl.Expr) -> pl.Expr:
        ids = x.cast(pl.Float64).cast(pl.Int64, strict=False)
        return pl.when(x.is_null()).then(None).otherwise(_one_id(ids.is_not_null(), ids))

    return to_id


register(
    OpDef(
        name="fill_null",
        kinds=_DENSE,
        params=(Param("value", "float", default=0.0, doc="value (a finite float32) for nulls"),),
        compile=_compile_fill_null,
        summary="replace nulls with value",
    )
)

register(
    OpDef(
        name="clamp",
        kinds=_DENSE,
        params=(
            Param("min", "optional_float", doc="lower bound (a finite float32) or null"),
            Param("max", "optional_float", doc="upper bound (a finite float32) or null"),
        ),
        compile=_compile_clamp,
        check=_check_clamp,
        summary="limit values to [min, max]",
    )
)

register(
    OpDef(
        name="log1p",
        kinds=_DENSE,
        params=(),
        compile=_compile_log1p,
        summary="ln(1 + max(x, 0)), finite",
    )
)

register(
    OpDef(
        name="logit",
        kinds=_DENSE,
        params=(Param("eps", "float", default=1e-6, doc="clamp margin, 0 < eps < 0.5"),),
        compile=_compile_logit,
        check=_check_logit,
        summary="ln(p / (1 - p)) of x clamped to [eps, 1 - eps]",
    )
)

register(
    OpDef(
        name="box_cox",
        kinds=_DENSE,
        params=(
            Param(
                "lambda",
                "float",
                required=True,
                minimum=-10.0,
                maximum=10.0,
                doc="the power, a float in [-10, 10] (0 means ln)",
            ),
        ),
        compile=_compile_box_cox,
        summary="(x ** lambda - 1) / lambda, or ln(x) for lambda 0; null for x <= 0",
    )
)

register(
    OpDef(
        name="normalize",
        kinds=_DENSE,
        params=(
            Param(
                "mode",
                "choice",
                default="zscore",
                choices=("zscore", "minmax"),
                doc="zscore or minmax",
            ),
            Param("mean", "float", default=0.0, doc="mean for zscore (a finite float)"),
            Param("std", "float", default=1.0, doc="standard deviation for zscore, > 0"),
            Param("min", "optional_float", doc="range start for minmax"),
            Param("max", "optional_float", doc="range end for minmax, > min"),
        ),
        compile=_compile_normalize,
        check=_check_normalize,
        summary="(x - mean) / std, or (x - min) / (max - min)",
    )
)

register(
    OpDef(
        name="scale_to_0_1",
        kinds=_DENSE_OR_SCORES,
        params=(
            Param("min", "float", required=True, doc="value mapped to 0 (a finite float)"),
            Param("max", "float", required=True, doc="value mapped to 1, > min"),
        ),
        compile=_compile_scale_to_0_1,
        check=_check_min_lt_max,
        summary="clip((x - min) / (max - min), 0, 1), also on every score of a list",
    )
)

register(
    OpDef(
        name="bucketize",
        kinds=_DENSE,
        params=(
            Param(
                "boundaries",
                "float_list",
                required=True,
                doc="bucket boundaries, finite floats in strictly ascending order",
            ),
        ),
        compile=_compile_bucketize,
        output="sparse",
        check=_check_boundaries,
        summary="[bisect_right(boundaries, x)]: a dense value becomes a one-id list",
        ids_range=lambda params, given: (0, len(params["boundaries"])),
    )
)

register(
    OpDef(
        name="onehot",
        kinds=_DENSE,
        params=(
            Param("num_classes", "int", required=True, minimum=1, doc="classes, an integer >= 1"),
        ),
        compile=_compile_onehot,
        output="sparse",
        summary="[int(x)] for a class index in [0, num_classes), else []",
        ids_range=lambda params, given: (0, int(params["num_classes"]) - 1),
    )
)

register(
    OpDef(
        name="cast",
        kinds=_DENSE,
        params=(
            Param(
                "to", "choice", required=True, choices=("int", "bool", "id"), doc="int, bool or id"
            ),
        ),
        compile=_compile_cast,
        output=lambda params: "sparse" if params["to"] == "id" else "dense",
        summary="truncate to an integer, test != 0, or make a one-id list",
    )
)
