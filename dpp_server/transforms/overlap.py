"""Overlap ops: how much two id lists of a row share, as a dense value.

Owns ``has_id_overlap``, ``id_overlap_count``, ``jaccard`` and ``cosine``. Must never import
grpc, storage or do I/O. The feature's id list is ``A``; the other is the column named by the
``other`` param (read as a sparse value, null ids dropped), ``B``. All four use set semantics
(repeated ids count once) and polars' list set kernels, never a loop per row. A null list on
either side gives null (delivered as 0.0); empty lists are empty sets.
"""

from __future__ import annotations

import polars as pl

from dpp_server.transforms.registry import (
    ExprFn,
    OpDef,
    Param,
    Params,
    VType,
    input_name,
    register,
)

_SPARSE: frozenset[VType] = frozenset({"sparse"})
_OTHER = Param(
    "other",
    "column",
    required=True,
    vtype="sparse",
    doc="the other id-list column (list of integers, or one integer)",
)


def _sets(params: Params, expr: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """``(|A ∩ B|, |A|, |B|)`` as Float64, distinct ids; null where either list is null."""
    other = pl.col(input_name(params["other"], "sparse"))
    both = expr.is_not_null() & other.is_not_null()
    inter = expr.list.set_intersection(other).list.len()
    size_a, size_b = expr.list.n_unique(), other.list.n_unique()
    return tuple(  # type: ignore[return-value]
        pl.when(both).then(e.cast(pl.Float64)) for e in (inter, size_a, size_b)
    )


def _compile_has_id_overlap(params: Params, vtype: VType) -> ExprFn:
    """``has_id_overlap(other)``: 1.0 if the two lists share an id, else 0.0.

    Semantics: ``y = 1.0 if set(A) & set(B) else 0.0``; empty lists share nothing. A null
    list on either side gives null. Params: ``other`` (a sparse column).
    """
    del vtype

    def fn(expr: pl.Expr) -> pl.Expr:
        inter, _, _ = _sets(params, expr)
        return (inter > 0).cast(pl.Float32)

    return fn


def _compile_id_overlap_count(params: Params, vtype: VType) -> ExprFn:
    """``id_overlap_count(other)``: the number of distinct ids in both lists.

    Semantics: ``y = len(set(A) & set(B))``. A null list on either side gives null.
    Params: ``other`` (a sparse column).
    """
    del vtype

    def fn(expr: pl.Expr) -> pl.Expr:
        inter, _, _ = _sets(params, expr)
        return inter.cast(pl.Float32)

    return fn


def _compile_jaccard(params: Params, vtype: VType) -> ExprFn:
    """``jaccard(other)``: intersection over union of the two id sets.

    Semantics: ``y = |A ∩ B| / |A ∪ B|``, 0.0 when both are empty. A null list on either
    side gives null. Params: ``other`` (a sparse column).
    """
    del vtype

    def fn(expr: pl.Expr) -> pl.Expr:
        inter, size_a, size_b = _sets(params, expr)
        union = size_a + size_b - inter
        ratio = pl.when(union > 0).then(inter / union).otherwise(pl.lit(0.0, pl.Float64))
        return ratio.cast(pl.Float32)

    return fn


def _compile_cosine(params: Params, vtype: VType) -> ExprFn:
    """``cosine(other)``: cosine similarity of the two lists' binary id vectors.

    Semantics: ``y = |A ∩ B| / sqrt(|A| * |B|)`` on distinct ids, 0.0 when either is empty.
    A null list on either side gives null. Params: ``other`` (a sparse column).
    """
    del vtype

    def fn(expr: pl.Expr) -> pl.Expr:
        inter, size_a, size_b = _sets(params, expr)
        denom = (size_a * size_b).sqrt()
        ratio = pl.when(denom > 0).then(inter / denom).otherwise(pl.lit(0.0, pl.Float64))
        return ratio.cast(pl.Float32)

    return fn


for _name, _compile, _summary in (
    ("has_id_overlap", _compile_has_id_overlap, "1.0 if the two id lists share an id"),
    ("id_overlap_count", _compile_id_overlap_count, "number of distinct shared ids"),
    ("jaccard", _compile_jaccard, "|A ∩ B| / |A ∪ B| of two id lists"),
    ("cosine", _compile_cosine, "|A ∩ B| / sqrt(|A| |B|) of two id lists"),
):
    register(
        OpDef(
            name=_name,
            kinds=_SPARSE,
            params=(_OTHER,),
            compile=_compile,
            output="dense",
            summary=_summary,
        )
    )
