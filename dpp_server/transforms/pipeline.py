"""The feature pipeline of a session: table rows in, one wire batch out.

Owns :class:`FeaturePipeline`, which compiles a :class:`~dpp_server.spec.Spec`'s ops once and
applies them to each batch of table rows. Must never do I/O (``map_id`` reads its vocabulary
when compiled, once per session) or import grpc, storage or torch.

How a batch flows (no Python loop per row anywhere):

1. Sampling (only when the spec samples): one numpy pass hashes the ``sample_key`` column and
   drops the rows not kept (:mod:`dpp_server.transforms.sampling`), before any transform.
2. ``pl.from_arrow`` over the spec's computed columns (zero-copy for fixed-width data).
3. Adapters: every column an op reads (feature sources and columns named in params) is brought
   to its canonical value type once, under ``input_name(column, vtype)``; a column read by
   several features is adapted once.
4. One polars ``select`` holding every feature's expression, so polars evaluates features in
   parallel on its own threads with the GIL released (ops needing numpy, like
   ``sigrid_hash``, run once per column on the flat ids).
5. :func:`dpp_proto.wire.assemble_wire_batch` packs the result in the wire layout; passthrough
   columns come straight from the input batch so their Arrow type is untouched.

Each feature expression is ``adapted source -> ops in order -> wire finish``. The adapters and
the value type entering each op depend on the columns' Arrow types, so expressions are bound
per input schema (cached); each op is compiled once per (op call, input value type).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import cast

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from dpp_proto import wire
from dpp_server import spec as spec_lib
from dpp_server.errors import SpecError
from dpp_server.spec import Spec
from dpp_server.transforms import sampling
from dpp_server.transforms.registry import ExprFn, VType, get_op, input_name

__all__ = ["FeaturePipeline"]

_F32_ZERO = pl.lit(0.0, dtype=pl.Float32)
_F32_ONE = pl.lit(1.0, dtype=pl.Float32)
_EMPTY_IDS = pl.lit([], dtype=pl.List(pl.Int64))
#: Value types held as lists, whose null items (and NaN scores) the adapter drops.
_LIST_VTYPES = frozenset({"sparse", "scores", "strings"})


@dataclass(frozen=True)
class _Bound:
    """A pipeline bound to one input schema: its wire schema and polars expressions.

    Attributes:
        input_schema: the schema bound to.
        wire_schema: the schema of the batches produced.
        inputs: every (column, value type) the features read, in first-seen order.
        chains: each feature's composed op chain, keyed by feature name.
        starts: each feature's source value type, keyed by feature name.
        exprs: (adapters, outputs) keyed by the inputs holding null items (or NaN scores).
            Dropping those costs as much as all other sparse work together, so it is only
            compiled in for the columns of a batch that need it.
    """

    input_schema: pa.Schema
    wire_schema: pa.Schema
    inputs: tuple[tuple[str, VType], ...]
    chains: dict[str, ExprFn]
    starts: dict[str, VType]
    exprs: dict[frozenset[tuple[str, VType]], tuple[tuple[pl.Expr, ...], tuple[pl.Expr, ...]]]


class FeaturePipeline:
    """Applies a session's features to batches of table rows.

    Build one per session per worker; :meth:`apply` may be called from several threads at
    once. ``_lock`` guards ``_bound`` (the expressions bound to the last input schema seen)
    and ``_compiled`` (op chains compiled so far); everything else is immutable after
    ``__init__``. Readers look ``_bound`` and its ``exprs`` variants up without the lock (a
    reference read and a dict lookup, atomic under the GIL) and take it only to bind or add a
    variant.

    Attributes:
        input_columns: table columns :meth:`apply` reads (the worker's projection).
    """

    def __init__(
        self,
        spec: Spec,
        input_schema: pa.Schema | None = None,
        *,
        raw_passthrough: frozenset[str] = frozenset(),
    ) -> None:
        """Prepares the spec's op chains.

        Args:
            spec: a validated spec.
            raw_passthrough: passthrough columns sent with their table type rather than their
                wire type (:func:`dpp_proto.wire.passthrough_type`): the dedup pipeline's
                helper columns, which feed its groups' ops and never reach a trainer.
            input_schema: the table's schema when known. It is checked with
                :func:`~dpp_server.spec.check_against_schema` now (so type errors surface at
                session start), fixes :attr:`wire_schema` and compiles every op (``map_id``
                reads its vocabulary here). Without it, the first batch binds the pipeline.

        Raises:
            SpecError: ``input_schema`` does not fit the spec.
        """
        self._spec = spec
        self._raw_passthrough = raw_passthrough
        self.input_columns: list[str] = list(spec.input_columns)
        self._dense_names = tuple(f.name for f in spec.dense_features)
        self._sparse_names = tuple(f.name for f in spec.sparse_features)
        self._lock = threading.Lock()
        self._compiled: dict[tuple[int, int, VType], ExprFn] = {}
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

    def apply(
        self, batch: pa.RecordBatch | pa.Table, keep: pa.BooleanArray | None = None
    ) -> pa.RecordBatch:
        """Computes the wire batch of one batch of table rows.

        Args:
            batch: rows holding at least :attr:`input_columns`. Row order is kept; every row
                is kept unless the spec samples rows.
            keep: when given (no nulls, one entry per row of ``batch``), only the rows where
                it is True are transformed, exactly as if ``batch.filter(keep)`` were passed:
                the row filter's mask (:func:`storage.reader.row_mask`). The rows are
                dropped in polars, right after the zero-copy import: polars copies the kept
                list columns in about half of Arrow's ``filter`` time.

        Returns:
            A record batch with exactly :attr:`wire_schema`.

        Raises:
            SpecError: the batch's columns do not fit the spec (missing, wrong type).
        """
        spec = self._spec
        negatives = None
        if keep is not None and spec.sampled:  # sampling draws over the filtered rows
            batch, keep = batch.filter(keep), None
        if spec.sampled:
            batch, negatives = self._sample(batch)
        bound, (adapters, outputs) = self._exprs_for(batch)
        columns_in = [c for c, _ in bound.inputs]
        columns_in += [c for c in (spec.label, spec.weight) if c]
        # from_arrow of a table or record batch is always a DataFrame (a Series only for arrays).
        frame = cast(pl.DataFrame, pl.from_arrow(batch.select(list(dict.fromkeys(columns_in)))))
        if keep is not None:
            frame = frame.filter(pl.Series(keep))
        if negatives is not None:
            frame = frame.with_columns(pl.Series("__negative", negatives))
        out = frame.with_columns(adapters).select(outputs)
        dense = None
        if self._dense_names:
            block = out.select([f"{wire.DENSE_COLUMN}.{n}" for n in self._dense_names])
            dense = np.ascontiguousarray(block.to_numpy(order="c"), dtype=np.float32)
        arrays: list[pa.Array] = []
        for name in self._sparse_names:
            arrays.append(_single_array(out.get_column(wire.SPARSE_PREFIX + name).to_arrow()))
        if spec.label:
            arrays.append(_single_array(out.get_column(wire.LABEL_COLUMN).to_arrow()))
        if spec.has_weight:
            arrays.append(_single_array(out.get_column(wire.WEIGHT_COLUMN).to_arrow()))
        for name in spec.passthrough:
            array = _single_array(batch.column(name))
            if keep is not None:
                array = array.filter(keep)
            arrays.append(array if name in self._raw_passthrough else wire.passthrough_array(array))
        return wire.assemble_wire_batch(bound.wire_schema, dense, arrays)

    def feature_columns(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
        """One column per feature, named as the feature, as the ops leave it: before the
        wire's finish, so dense nulls stay null and null id lists stay null.

        For statistics (``dpp stats``), which count the nulls :meth:`apply` fills with 0.0 or
        empty lists. Sampling, adapters and op chains are :meth:`apply`'s own; the column
        types are polars' (dense: the last op's float type, sparse: ``large_list<int64>``).

        Raises:
            SpecError: the batch's columns do not fit the spec (missing, wrong type).
        """
        if self._spec.sampled:
            batch, _ = self._sample(batch)
        bound, (adapters, _) = self._exprs_for(batch)
        columns_in = list(dict.fromkeys(c for c, _ in bound.inputs))
        frame = cast(pl.DataFrame, pl.from_arrow(batch.select(columns_in)))
        outputs = [
            bound.chains[f.name](pl.col(input_name(f.source, bound.starts[f.name]))).alias(f.name)
            for f in self._spec.features
        ]
        table = frame.with_columns(adapters).select(outputs).to_arrow()
        return pa.record_batch([_single_array(c) for c in table.columns], names=table.column_names)

    def _sample(
        self, batch: pa.RecordBatch | pa.Table
    ) -> tuple[pa.RecordBatch | pa.Table, np.ndarray | None]:
        """Drops the rows sampling does not keep; returns them and the kept negatives mask."""
        spec = self._spec
        keys = sampling.key_values(batch.column(spec.sample_key))
        negatives = None
        if spec.negative_downsample_rate < 1.0:
            negatives = sampling.negative_mask(batch.column(spec.label))
        keep = sampling.keep_mask(
            keys,
            negatives,
            seed=spec.seed,
            sample_rate=spec.sample_rate,
            negative_rate=spec.negative_downsample_rate,
        )
        if keep.all():
            return batch, negatives
        kept = batch.filter(pa.array(keep))
        return kept, None if negatives is None else negatives[keep]

    def _exprs_for(
        self, batch: pa.RecordBatch | pa.Table
    ) -> tuple[_Bound, tuple[tuple[pl.Expr, ...], tuple[pl.Expr, ...]]]:
        """Returns the binding and expressions for ``batch``, binding anew when needed.

        Rebinds when the schema changed (and checks the new one); compiles a variant when a
        new set of list inputs holds null items.
        """
        bound = self._bound
        if bound is None or not bound.input_schema.equals(batch.schema):
            with self._lock:
                bound = self._bound
                if bound is None or not bound.input_schema.equals(batch.schema):
                    bound = self._bind(batch.schema)
                    self._bound = bound
        dirty = frozenset(
            (c, t)
            for c, t in bound.inputs
            if t in _LIST_VTYPES and _has_dirty_items(batch.column(c), t)
        )
        exprs = bound.exprs.get(dirty)
        if exprs is not None:
            return bound, exprs
        with self._lock:
            exprs = bound.exprs.get(dirty)
            if exprs is None:
                exprs = self._compile(bound, dirty)
                bound.exprs[dirty] = exprs
            return bound, exprs

    def _bind(self, schema: pa.Schema) -> _Bound:
        """Checks ``schema`` against the spec and composes every feature's op chain for it.

        Called with ``_lock`` held (or from ``__init__``).
        """
        spec = self._spec
        spec_lib.check_against_schema(spec, schema)
        inputs: dict[tuple[str, VType], None] = {}
        chains: dict[str, ExprFn] = {}
        starts: dict[str, VType] = {}
        for i, feature in enumerate(spec.features):
            path = f"features[{i}]"
            start, op_inputs = spec_lib.feature_vtypes(
                feature, schema.field(feature.source).type, path
            )
            starts[feature.name] = start
            inputs[(feature.source, start)] = None
            for _, _, column, vtype in spec_lib.feature_refs(feature):
                inputs[(column, vtype)] = None
            chains[feature.name] = self._chain(i, op_inputs)
        extra = {
            name: t if name in self._raw_passthrough else wire.passthrough_type(t)
            for name, t in ((n, schema.field(n).type) for n in spec.passthrough)
        }
        return _Bound(
            input_schema=schema,
            wire_schema=self._wire_schema(extra),
            inputs=tuple(inputs),
            chains=chains,
            starts=starts,
            exprs={},
        )

    def _chain(self, index: int, op_inputs: list[VType]) -> ExprFn:
        """Composes feature ``index``'s ops, each compiled once per input value type."""
        feature = self._spec.features[index]
        fns: list[ExprFn] = []
        for j, (call, vtype) in enumerate(zip(feature.ops, op_inputs, strict=True)):
            key = (index, j, vtype)
            fn = self._compiled.get(key)
            if fn is None:
                op = get_op(call.op)
                if op is None:  # spec_from_proto rejects unknown ops; a hand-built Spec may not.
                    raise SpecError(f"feature {feature.name!r}", f"unknown op {call.op!r}")
                fn = op.compile(call.params, vtype)
                self._compiled[key] = fn
            fns.append(fn)

        def chain(expr: pl.Expr) -> pl.Expr:
            for fn in fns:
                expr = fn(expr)
            return expr

        return chain

    def _compile(
        self, bound: _Bound, dirty: frozenset[tuple[str, VType]]
    ) -> tuple[tuple[pl.Expr, ...], tuple[pl.Expr, ...]]:
        """Builds the adapter and output expressions for ``bound``'s schema.

        Args:
            bound: the binding.
            dirty: list inputs whose items may be null (or NaN, for scores); only these pay
                for dropping them.
        """
        spec = self._spec
        schema = bound.input_schema
        adapters = tuple(
            _adapt(column, schema.field(column).type, vtype, (column, vtype) in dirty).alias(
                input_name(column, vtype)
            )
            for column, vtype in bound.inputs
        )
        outputs: list[pl.Expr] = []
        for feature in spec.dense_features:
            source = pl.col(input_name(feature.source, bound.starts[feature.name]))
            expr = bound.chains[feature.name](source)
            outputs.append(expr.fill_null(_F32_ZERO).alias(f"{wire.DENSE_COLUMN}.{feature.name}"))
        for feature in spec.sparse_features:
            source = pl.col(input_name(feature.source, bound.starts[feature.name]))
            expr = bound.chains[feature.name](source)
            outputs.append(expr.fill_null(_EMPTY_IDS).alias(wire.SPARSE_PREFIX + feature.name))
        if spec.label:
            outputs.append(_as_f32(spec.label).alias(wire.LABEL_COLUMN))
        if spec.has_weight:
            weight = _as_f32(spec.weight) if spec.weight else _F32_ONE
            if spec.negative_downsample_rate < 1.0:
                boost = pl.lit(1.0 / spec.negative_downsample_rate, dtype=pl.Float32)
                weight = weight * pl.when(pl.col("__negative")).then(boost).otherwise(_F32_ONE)
            outputs.append(weight.alias(wire.WEIGHT_COLUMN))
        return adapters, tuple(outputs)

    def _wire_schema(self, extra: dict[str, pa.DataType]) -> pa.Schema:
        return wire.wire_schema(
            self._dense_names,
            self._sparse_names,
            label=bool(self._spec.label),
            weight=self._spec.has_weight,
            extra=extra,
        )


def _as_f32(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Float32).fill_null(_F32_ZERO)


def _adapt(column: str, dtype: pa.DataType, vtype: VType, dirty: bool) -> pl.Expr:
    """A column as its canonical ``vtype`` expression (see the registry's value types)."""
    if vtype == "dense":
        return pl.col(column).cast(pl.Float32)
    if vtype == "sparse":
        return _sparse_input(column, dtype, drop_nulls=dirty)
    if vtype == "string":
        return pl.col(column).cast(pl.String)
    if vtype == "scores":
        expr = pl.col(column).cast(pl.List(pl.Float32))
        if dirty:
            item = pl.element()
            expr = expr.list.eval(item.filter(item.is_not_null() & item.is_not_nan()))
        return expr
    expr = pl.col(column).cast(pl.List(pl.String))
    return expr.list.eval(pl.element().drop_nulls()) if dirty else expr


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


def _has_dirty_items(column: pa.Array | pa.ChunkedArray, vtype: VType) -> bool:
    """Whether a list input may hold null items (or NaN scores); for a plain integer column
    feeding a sparse value, whether it holds nulls.

    Looks at null counts (O(1) once Arrow has counted them), plus one NaN scan for scores.
    For a sliced list array the whole child is looked at, so the answer may be a harmless
    false "yes", never a false "no".
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        if pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
            values = chunk.values
            if values.null_count:
                return True
            if vtype == "scores" and len(values) and pc.any(pc.is_nan(values)).as_py():
                return True
        elif chunk.null_count:
            return True
    return False


def _single_array(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (record batches need plain arrays, not chunked ones)."""
    if isinstance(array, pa.ChunkedArray):
        return array.combine_chunks()
    return array
