"""Score ops: the scores of a weighted (id-score) list, reduced to one dense value.

Owns ``score_sum``, ``score_min``, ``score_max`` and ``compute_score`` (``scale_to_0_1`` on
score lists lives in :mod:`dpp_server.transforms.dense`). Must never import grpc, storage or do
I/O.

A weighted list is two table columns: the ids (a ``list<int>``, delivered as a sparse feature
like any id list) and their scores (a ``list<float>`` of the same lengths). The scores column
feeds a dense feature whose ops end in one of these reductions; a spec that needs only the ids
simply never names the scores column. Score lists reach the ops as ``List(Float32)`` with null
and NaN scores already dropped. Reductions run in float64 and round once to float32. A null
list gives null (delivered as 0.0); an empty list gives 0.0 for ``sum`` and null for the others.
"""

from __future__ import annotations

import polars as pl

from dpp_server.transforms.registry import ExprFn, OpDef, Param, Params, VType, register

_SCORES: frozenset[VType] = frozenset({"scores"})
_MODES = ("mean", "sum", "min", "max", "l2")


def _reduce(expr: pl.Expr, mode: str) -> pl.Expr:
    """One reduction over each list's scores, float64 inside, float32 out."""
    scores = expr.list.eval(pl.element().cast(pl.Float64))
    if mode == "sum":
        out = scores.list.sum()
    elif mode == "mean":
        out = scores.list.mean()
    elif mode == "min":
        out = scores.list.min()
    elif mode == "max":
        out = scores.list.max()
    else:
        out = (scores.list.eval(pl.element() * pl.element())).list.sum().sqrt()
    # list.sum of an empty list is 0 and of a null list is null, as documented.
    return pl.when(expr.is_null()).then(None).otherwise(out).cast(pl.Float32)


def _compile_score_sum(params: Params, vtype: VType) -> ExprFn:
    """``score_sum()``: the sum of a list's scores.

    Semantics: ``y = sum(scores)`` (0.0 for an empty list; ``inf + -inf`` is NaN). Null lists
    give null. Params: none.
    """
    del params, vtype
    return lambda expr: _reduce(expr, "sum")


def _compile_score_min(params: Params, vtype: VType) -> ExprFn:
    """``score_min()``: the smallest score of a list.

    Semantics: ``y = min(scores)``; an empty or null list gives null. Params: none.
    """
    del params, vtype
    return lambda expr: _reduce(expr, "min")


def _compile_score_max(params: Params, vtype: VType) -> ExprFn:
    """``score_max()``: the largest score of a list.

    Semantics: ``y = max(scores)``; an empty or null list gives null. Params: none.
    """
    del params, vtype
    return lambda expr: _reduce(expr, "max")


def _compile_compute_score(params: Params, vtype: VType) -> ExprFn:
    """``compute_score(mode=mean)``: one score for the whole weighted list.

    Semantics: ``mean`` ``sum(scores) / len(scores)``; ``sum``, ``min``, ``max`` as the
    ``score_*`` ops; ``l2`` ``sqrt(sum(s * s))``. An empty list gives 0.0 for ``sum`` and
    ``l2``, null otherwise; a null list gives null. Params: ``mode`` (mean, sum, min, max, l2).
    """
    del vtype
    mode = str(params["mode"])
    return lambda expr: _reduce(expr, mode)


for _name, _compile, _params, _summary in (
    ("score_sum", _compile_score_sum, (), "sum of a weighted list's scores"),
    ("score_min", _compile_score_min, (), "smallest score of a weighted list"),
    ("score_max", _compile_score_max, (), "largest score of a weighted list"),
    (
        "compute_score",
        _compile_compute_score,
        (Param("mode", "choice", default="mean", choices=_MODES, doc=", ".join(_MODES)),),
        "mean, sum, min, max or l2 norm of a weighted list's scores",
    ),
):
    register(
        OpDef(
            name=_name,
            kinds=_SCORES,
            params=_params,
            compile=_compile,
            output="dense",
            summary=_summary,
        )
    )
