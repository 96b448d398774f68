"""Dense ops: one float32 per row.

Owns the ops that apply to ``dense`` features. Must never import grpc, storage or do I/O.

Every dense op maps a nullable ``Float32`` expression to a nullable ``Float32`` expression.
Literals are typed ``Float32`` on purpose: a float64 literal may promote the column to
float64, doubling memory and leaving the wire's float32 contract to a late cast. Nulls stay
null through every op except :func:`fill_null`; the wire fills any null left after the last op
with 0.0 (dense output is never null). NaN and ±inf are values, not nulls: only ``log1p``
maps them (to finite numbers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from dpp_server.errors import SpecError
from dpp_server.transforms.registry import (
    FLOAT32_MAX,
    ExprFn,
    OpDef,
    Param,
    Params,
    register,
)

if TYPE_CHECKING:
    from dpp_server.spec import Kind

_DENSE: frozenset[Kind] = frozenset({"dense"})


def _f32(value: float) -> pl.Expr:
    """A Float32 literal, so that ops never promote the column to Float64."""
    return pl.lit(value, dtype=pl.Float32)


def _compile_fill_null(params: Params) -> ExprFn:
    """``fill_null(value=0.0)``: replaces null with ``value``.

    Semantics: ``y = value if x is null else x``. NaN is a value, not a null, and is kept.
    Params: ``value`` (float, finite, fits float32; default 0.0).
    """
    value = _f32(params["value"])
    return lambda expr: expr.fill_null(value)


def _compile_clamp(params: Params) -> ExprFn:
    """``clamp(min=None, max=None)``: limits values to ``[min, max]``.

    Semantics: ``y = min(max(x, min), max)``, a missing bound is unbounded on that side;
    bounds are rounded to float32 like the column. ``-inf``/``+inf`` clamp to the bounds.
    Nulls and NaN pass through unchanged.
    Params: ``min``, ``max`` (float or null; at least one set; ``min <= max``).
    """
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


def _compile_log1p(params: Params) -> ExprFn:
    """``log1p()``: ``ln(1 + x)`` for a count-like feature, always finite.

    Semantics: ``y = ln(1 + clamp(x, 0, FLOAT32_MAX))`` in float32: negative values and
    ``-inf`` give 0, ``+inf`` gives ``ln(1 + FLOAT32_MAX)`` (about 88.72), NaN gives 0.
    Clamping below at 0 (rather than at -1) follows the usual count-feature preprocessing
    (e.g. Criteo): a negative count is treated as a missing one, never as a large negative.
    Nulls stay null. Params: none.
    """
    del params
    zero, top = _f32(0.0), _f32(FLOAT32_MAX)
    return lambda expr: expr.clip(zero, top).fill_nan(zero).log1p()


FILL_NULL = register(
    OpDef(
        name="fill_null",
        kinds=_DENSE,
        params=(Param("value", "float", default=0.0, doc="value (a finite float32) for nulls"),),
        compile=_compile_fill_null,
        summary="replace nulls with value",
    )
)

CLAMP = register(
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

LOG1P = register(
    OpDef(
        name="log1p",
        kinds=_DENSE,
        params=(),
        compile=_compile_log1p,
        summary="ln(1 + max(x, 0)), finite",
    )
)
