"""The feature pipeline of a session: table rows in, one wire batch out.

Owns :class:`FeaturePipeline`, which compiles a :class:`~dpp_server.spec.Spec`'s ops once and
applies them to each batch of table rows. Must never do I/O or import grpc, storage or torch.

How a batch flows (no Python loop per row anywhere):

1. ``pl.from_arrow`` over the spec's computed columns (zero-copy for fixed-width data).
2. One polars ``select`` holding every feature's expression, so polars evaluates features in
   parallel on its own threads with the GIL released (ops needing numpy, like
   ``sigrid_hash``, run once per column on the flat ids).
3. :func:`dpp_server.wire.assemble_wire_batch` packs the result in the wire layout; passthrough
   columns come straight from the input batch so their Arrow type is untouched.

Each feature expression is ``source adapter -> ops in order -> wire finish``. The adapter
brings the column to its kind's canonical type (see :mod:`dpp_server.transforms.registry`) and
depends on the column's Arrow type, so it is bound per input schema (cached); the op chain
depends only on the spec and is composed once in ``__init__``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, cast

import numpy as np
import polars as pl
import pyarrow as pa

from dpp_server import spec as spec_lib
from dpp_server import wire
from dpp_server.errors import SpecError
from dpp_server.transforms.registry import ExprFn, get_op

if TYPE_CHECKING:
    from dpp_server.spec import Feature, Spec

__all__ = ["FeaturePipeline"]

_F32_ZERO = pl.lit(0.0, dtype=pl.Float32)
_EMPTY_IDS = pl.lit([], dtype=pl.List(pl.Int64))


@dataclass(frozen=True)
class _Bound:
    """A pipeline bound to one input schema: its wire schema and polars expressions.

    Attributes:
        input_schema: the schema bound to.
        wire_schema: the schema of the batches produced.
        exprs: output expressions keyed by the sparse sources holding null ids (or null
            scalars). Dropping null ids costs as much as all other sparse work together,
            so it is only compiled in for the columns of a batch that need it.
    """

    input_schema: pa.Schema
    wire_schema: pa.Schema
    exprs: dict[frozenset[str], tuple[pl.Expr, ...]]


class FeaturePipeline:
    """Applies a session's features to batches of table rows.

    Build one per session per worker; :meth:`apply` may be called from several threads at
    once. ``_lock`` guards ``_bound`` (the expressions bound to the last input schema seen);
    everything else is immutable after ``__init__``. Readers look ``_bound`` and its
    ``exprs`` variants up without the lock (a reference read and a dict lookup, atomic under
    the GIL) and take it only to bind or add a variant.

    Attributes:
        input_columns: table columns :meth:`apply` reads (the worker's projection).
    """

    def __init__(self, spec: Spec, input_schema: pa.Schema | None = None) -> None:
        """Compiles the spec's op chains.

        Args:
            spec: a validated spec.
            input_schema: the table's schema when known. It is checked with
                :func:`~dpp_server.spec.check_against_schema` now (so type errors surface at
                session start) and fixes :attr:`wire_schema`. Without it, the first batch
                binds the pipeline.

        Raises:
            SpecError: ``input_schema`` does not fit the spec.
        """
        self._spec = spec
        self.input_columns: list[str] = list(spec.input_columns)
        self._chains: dict[str, ExprFn] = {f.name: _compose(f) for f in spec.features}
        self._dense_names = tuple(f.name for f in spec.dense_features)
        self._sparse_names = tuple(f.name for f in spec.sparse_features)
        computed = [f.source for f in spec.features]
        computed += [c for c in (spec.label, spec.weight) if c]
        self._computed_columns = list(dict.fromkeys(computed))
        self._sparse_sources = tuple(dict.fromkeys(f.source for f in spec.sparse_features))
        self._lock = threading.Lock()
        self._bound: _Bound | None = None
        if input_schema is not None:
            self._bound = self._bind(input_schema)

    @property
    def wire_schema(self) -> pa.Schema:
        """The schema of every batch :meth:`apply` returns.

        Raises:
            RuntimeError: the spec has passthrough columns, whose types come from the table,
                and neither ``input_schema`` nor a batch was given yet.
        """
        bound = self._bound
        if bound is not None:
            return bound.wire_schema
        if self._spec.passthrough:
            raise RuntimeError(
                "wire_schema depends on the passthrough columns' table types; pass "
                "input_schema to FeaturePipeline or apply a batch first"
            )
        return self._wire_schema({})

    def apply(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
        """Computes the wire batch of one batch of table rows.

        Args:
            batch: rows holding at least :attr:`input_columns`; row count and order are kept.

        Returns:
            A record batch with exactly :attr:`wire_schema`.

        Raises:
            SpecError: the batch's columns do not fit the spec (missing, wrong type).
        """
        bound, exprs = self._exprs_for(batch)
        # from_arrow of a table or record batch is always a DataFrame (a Series only for arrays).
        frame = cast(pl.DataFrame, pl.from_arrow(batch.select(self._computed_columns)))
        out = frame.select(exprs)
        dense = None
        if self._dense_names:
            block = out.select([f"{wire.DENSE_COLUMN}.{n}" for n in self._dense_names])
            dense = np.ascontiguousarray(block.to_numpy(order="c"), dtype=np.float32)
        columns: list[pa.Array] = []
        for name in self._sparse_names:
            columns.append(_single_array(out.get_column(wire.SPARSE_PREFIX + name).to_arrow()))
        for role in (wire.LABEL_COLUMN, wire.WEIGHT_COLUMN):
            if getattr(self._spec, role):
                columns.append(_single_array(out.get_column(role).to_arrow()))
        for name in self._spec.passthrough:
            columns.append(_single_array(batch.column(name)))
        return wire.assemble_wire_batch(bound.wire_schema, dense, columns)

    def _exprs_for(self, batch: pa.RecordBatch | pa.Table) -> tuple[_Bound, tuple[pl.Expr, ...]]:
        """Returns the binding and output expressions for ``batch``, binding anew when needed.

        Rebinds when the schema changed (and checks the new one); compiles a variant when a
        new set of sparse sources holds null ids.
        """
        nulls = frozenset(s for s in self._sparse_sources if _has_null_ids(batch.column(s)))
        bound = self._bound
        if bound is not None and bound.input_schema.equals(batch.schema):
            exprs = bound.exprs.get(nulls)
            if exprs is not None:
                return bound, exprs
        with self._lock:
            bound = self._bound
            if bound is None or not bound.input_schema.equals(batch.schema):
                bound = self._bind(batch.schema)
                self._bound = bound
            exprs = bound.exprs.get(nulls)
            if exprs is None:
                exprs = self._compile(bound.input_schema, nulls)
                bound.exprs[nulls] = exprs
            return bound, exprs

    def _bind(self, schema: pa.Schema) -> _Bound:
        """Checks ``schema`` against the spec; the bound pipeline starts without variants."""
        spec_lib.check_against_schema(self._spec, schema)
        extra = {name: schema.field(name).type for name in self._spec.passthrough}
        return _Bound(input_schema=schema, wire_schema=self._wire_schema(extra), exprs={})

    def _compile(self, schema: pa.Schema, null_ids: frozenset[str]) -> tuple[pl.Expr, ...]:
        """Builds every output expression for ``schema``.

        Args:
            schema: a schema already checked against the spec.
            null_ids: sparse sources whose ids (or values, for plain integer columns) may be
                null; only these pay for dropping them.
        """
        spec = self._spec
        exprs: list[pl.Expr] = []
        for feature in spec.dense_features:
            expr = self._chains[feature.name](pl.col(feature.source).cast(pl.Float32))
            exprs.append(expr.fill_null(_F32_ZERO).alias(f"{wire.DENSE_COLUMN}.{feature.name}"))
        for feature in spec.sparse_features:
            source = _sparse_input(
                feature.source,
                schema.field(feature.source).type,
                drop_nulls=feature.source in null_ids,
            )
            expr = self._chains[feature.name](source)
            exprs.append(expr.fill_null(_EMPTY_IDS).alias(wire.SPARSE_PREFIX + feature.name))
        for role in (wire.LABEL_COLUMN, wire.WEIGHT_COLUMN):
            column = getattr(spec, role)
            if column:
                exprs.append(pl.col(column).cast(pl.Float32).fill_null(_F32_ZERO).alias(role))
        return tuple(exprs)

    def _wire_schema(self, extra: dict[str, pa.DataType]) -> pa.Schema:
        return wire.wire_schema(
            self._dense_names,
            self._sparse_names,
            label=bool(self._spec.label),
            weight=bool(self._spec.weight),
            extra=extra,
        )


def _compose(feature: Feature) -> ExprFn:
    """Composes a feature's ops, in spec order, into one expression function."""
    fns: list[ExprFn] = []
    for call in feature.ops:
        op = get_op(call.op)
        if op is None:  # spec_from_proto rejects unknown ops; a hand-built Spec may not.
            raise SpecError(f"feature {feature.name!r}", f"unknown op {call.op!r}")
        fns.append(op.compile(call.params))
    identity: ExprFn = lambda expr: expr  # noqa: E731
    return reduce(_then, fns, identity)


def _then(first: ExprFn, second: ExprFn) -> ExprFn:
    return lambda expr: second(first(expr))


def _sparse_input(column: str, dtype: pa.DataType, *, drop_nulls: bool) -> pl.Expr:
    """A sparse source as ``List(Int64)`` without null ids.

    uint64 ids keep their bits (reinterpreted, since a cast would reject ids >= 2**63); a
    plain integer column becomes a one-id list, and a null there an empty list.

    Args:
        column: the source column.
        dtype: its Arrow type (already checked to be a sparse source).
        drop_nulls: whether the batch holds null ids (or null scalars) to drop.
    """
    expr = pl.col(column)
    is_list = pa.types.is_list(dtype) or pa.types.is_large_list(dtype)
    value_type = dtype.value_type if is_list else dtype
    if is_list:
        if pa.types.is_uint64(value_type):
            expr = expr.list.eval(pl.element().reinterpret(signed=True))
        elif not pa.types.is_int64(value_type):
            expr = expr.cast(pl.List(pl.Int64))
    else:
        if pa.types.is_uint64(value_type):
            expr = expr.reinterpret(signed=True)
        expr = pl.concat_list(expr.cast(pl.Int64))
    # list.eval runs drop_nulls once over the flat ids: about 2x faster than list.drop_nulls.
    return expr.list.eval(pl.element().drop_nulls()) if drop_nulls else expr


def _has_null_ids(column: pa.Array | pa.ChunkedArray) -> bool:
    """Whether a sparse source may hold null ids (or, for a plain integer column, nulls).

    Looks at null counts only (O(1) once Arrow has counted them). For a sliced list array the
    whole child is looked at, so the answer may be a harmless false "yes", never a false "no".
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        if pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
            if chunk.values.null_count:
                return True
        elif chunk.null_count:
            return True
    return False


def _single_array(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (record batches need plain arrays, not chunked ones)."""
    if isinstance(array, pa.ChunkedArray):
        return array.combine_chunks()
    return array
