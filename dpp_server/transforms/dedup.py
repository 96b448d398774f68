"""RecD deduplication: unique rows of feature groups, and the session pipeline around them.

Owns :func:`unique_rows` (exact row deduplication of a few columns, vectorized),
:func:`session_starts` (where runs of identical rows begin) and :class:`DedupPipeline`, the
session's pipeline in two stages around the worker's batch cutting. Must never do I/O or import
grpc, storage or torch.

Why two stages: RecD deduplicates per delivered batch (a batch's unique rows are what travel),
so dedup must run after the worker cut ``batch_size`` rows, while sampling and every other
feature still run once per read chunk, where per-call overhead is amortised:

1. :meth:`DedupPipeline.apply` (per read chunk): sampling, the features outside any group, label,
   weight and passthrough, exactly as :class:`~dpp_server.transforms.FeaturePipeline`. The raw
   input columns of every group ride along as helper ``extra.<column>`` columns.
2. :meth:`DedupPipeline.finish` (per batch): for each group, :func:`unique_rows` over the group's
   raw inputs (its features' sources and the columns their ops name) gives ``U`` unique rows and
   an inverse index ``[B]``; the group's ops run on the ``U`` rows only. The batch's rows then
   carry ``dedup.<group>.inverse`` and the unique rows become the frame section
   ``dedup/<group>`` (layout in :mod:`dpp_server.wire`). In auto mode (``dedup_min_share`` > 0)
   a batch whose duplicate share ``1 - U / B`` is below the threshold gets the group's features
   as plain columns instead (the unique results expanded by one ``take``).

Worked example (batch of 4 rows, group ``user`` = features ``u0`` (source ``sparse_0``) and
``u1`` (source ``sparse_1``, op ``cross`` with ``other: sparse_2``)):

1. Raw inputs per row: ``(sparse_0, sparse_1, sparse_2)`` = A, A, B, A (rows 0, 1 and 3 equal).
2. :func:`unique_rows`: rows 0 and 1 are adjacent and equal (a run); the run heads 0, 2 and 3
   are grouped exactly: 0 and 3 are equal. Unique rows ``[0, 2]`` (first occurrence order),
   inverse ``[0, 0, 1, 0]``.
3. ``u0`` and ``u1`` are computed on 2 rows; ``dedup/user`` holds them; rows hold the inverse.
   The client's expansion ``unique[inverse]`` is the plain batch, exactly.

Exactness: rows are merged only when their raw inputs are equal, never on a hash alone:
adjacent rows are compared value by value (numpy over flat ids for integer lists and
integers, polars ``eq_missing`` otherwise), and the run heads are grouped by polars
``group_by`` (which compares keys, not only hashes). Equality is polars' (a null list equals a
null list, NaN equals NaN, -0.0 equals 0.0); every op gives equal outputs for equal inputs under
it, so the expansion equals the plain batch. Thread-safe like ``FeaturePipeline``: immutable
after ``__init__`` apart from the pipelines' own guarded caches.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from dpp_server import spec as spec_lib
from dpp_server import wire
from dpp_server.spec import Feature, Spec
from dpp_server.transforms.pipeline import FeaturePipeline

__all__ = ["DedupPipeline", "Section", "session_starts", "unique_rows"]

#: A frame section besides "rows": its name and its record batch.
Section = tuple[str, pa.RecordBatch]

_ROW_INDEX = "__dpp_row"


def unique_rows(
    batch: pa.RecordBatch | pa.Table,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """The unique rows of ``batch`` (over all its columns) and each row's unique row.

    Args:
        batch: ``B >= 1`` rows of the columns that decide equality.

    Returns:
        ``(first, inverse)``: ``first`` int64 ``[U]``, the first row of each unique row in
        order of first occurrence; ``inverse`` int32 ``[B]``, with ``first[inverse[i]]`` a row
        equal to row ``i`` (and ``inverse[first[u]] == u``).
    """
    rows = batch.num_rows
    if rows == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int32)
    same = _same_as_previous(batch)
    heads = np.flatnonzero(~same)
    run = np.cumsum(~same) - 1  # each row's run (index into heads)
    if len(heads) == 1:
        return heads.astype(np.int64), np.zeros(rows, dtype=np.int32)
    frame = cast(pl.DataFrame, pl.from_arrow(batch))
    head_frame = frame[heads].with_row_index(_ROW_INDEX)
    groups = head_frame.group_by(frame.columns, maintain_order=True).agg(pl.col(_ROW_INDEX))
    members = groups.get_column(_ROW_INDEX)
    flat = members.explode().to_numpy().astype(np.int64)
    sizes = members.list.len().to_numpy()
    group_of_head = np.empty(len(heads), dtype=np.int32)
    group_of_head[flat] = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    first_head = members.list.first().to_numpy().astype(np.int64)
    inverse: npt.NDArray[np.int32] = group_of_head[run]
    return heads[first_head].astype(np.int64), inverse


def session_starts(batch: pa.RecordBatch | pa.Table) -> npt.NDArray[np.int64]:
    """Where runs of adjacent equal rows (sessions, in a session-clustered table) begin.

    Returns:
        int64 row indices, ascending, starting with 0 (empty for an empty batch).
    """
    if batch.num_rows == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(~_same_as_previous(batch)).astype(np.int64)


def _same_as_previous(batch: pa.RecordBatch | pa.Table) -> npt.NDArray[np.bool_]:
    """``same[i]``: row ``i`` equals row ``i - 1`` in every column (``same[0]`` is False)."""
    same = np.ones(batch.num_rows, dtype=np.bool_)
    same[0] = False
    for column in batch.columns:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        _and_same(array, same)
    return same


def _and_same(array: pa.Array, same: npt.NDArray[np.bool_]) -> None:
    """``same &= array[i] == array[i - 1]``, in place; numpy for integer lists and integers."""
    dtype = array.type
    is_list = pa.types.is_list(dtype) or pa.types.is_large_list(dtype)
    if is_list and pa.types.is_integer(dtype.value_type):
        offsets = array.offsets.to_numpy().astype(np.int64)
        values = array.values
        if (
            values.null_count == 0
            or values.slice(offsets[0], offsets[-1] - offsets[0]).null_count == 0
        ):
            _and_same_int_lists(array, offsets, same)
            return
    elif pa.types.is_integer(dtype):
        ints = array.fill_null(0).to_numpy()
        same[1:] &= ints[1:] == ints[:-1]
        if array.null_count:
            valid = array.is_valid().to_numpy(zero_copy_only=False)
            same[1:] &= valid[1:] == valid[:-1]
        return
    series = cast(pl.Series, pl.from_arrow(array))
    same[1:] &= series.eq_missing(series.shift(1)).to_numpy()[1:]


def _and_same_int_lists(
    array: pa.Array, offsets: npt.NDArray[np.int64], same: npt.NDArray[np.bool_]
) -> None:
    """The integer-list case of :func:`_and_same`, over the flat ids without a row loop.

    Row ``i`` equals row ``i - 1`` when both are valid (or both null), their lengths are equal
    and every id equals the id one list length earlier in the flat values.
    """
    lengths = np.diff(offsets)
    same[1:] &= lengths[1:] == lengths[:-1]
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        same[1:] &= valid[1:] == valid[:-1]
    start, stop = int(offsets[0]), int(offsets[-1])
    if stop == start:
        return
    values = array.values.slice(start, stop - start).to_numpy()
    index_type = np.int32 if len(values) < 2**31 else np.int64
    small: npt.NDArray[np.signedinteger[Any]] = lengths.astype(index_type)
    # For a row as long as the previous one, id p's counterpart sits one length earlier.
    # Elsewhere the index points anywhere in range (>= -len(values)), and is masked by `same`.
    earlier: npt.NDArray[np.signedinteger[Any]] = np.arange(len(values), dtype=index_type)
    earlier -= np.repeat(small, small)
    mismatch = np.zeros(len(values) + 1, dtype=index_type)
    np.cumsum(values != values[earlier], out=mismatch[1:])
    local = offsets - start
    same &= mismatch[local[1:]] == mismatch[local[:-1]]


@dataclasses.dataclass(frozen=True)
class _Group:
    """One dedup group: its features, raw input columns, pipeline and section schema."""

    name: str
    features: tuple[Feature, ...]
    inputs: tuple[str, ...]
    pipeline: FeaturePipeline
    section_schema: pa.Schema


class DedupPipeline:
    """A session's features, with its dedup groups computed per batch on unique rows.

    Without dedup groups it is exactly :class:`FeaturePipeline` (``finish`` returns the batch
    unchanged). Build one per session per worker; both stages may run on several threads at
    once (the wrapped pipelines guard their own caches; everything here is immutable).

    Attributes:
        input_columns: table columns to read.
        groups: group name to feature names, in spec order.
    """

    def __init__(self, spec: Spec, input_schema: pa.Schema | None = None) -> None:
        """Prepares the stage pipelines.

        Raises:
            SpecError: ``input_schema`` does not fit the spec.
        """
        self._spec = spec
        self._min_share = spec.dedup_min_share
        dedup_groups = spec.dedup_groups
        self.groups: dict[str, tuple[str, ...]] = {
            g: tuple(f.name for f in fs) for g, fs in dedup_groups.items()
        }
        if not dedup_groups:
            self._rows = FeaturePipeline(spec, input_schema)
            self.input_columns: list[str] = self._rows.input_columns
            self._groups: tuple[_Group, ...] = ()
            self._helpers: frozenset[str] = frozenset()
            return
        if input_schema is not None:
            spec_lib.check_against_schema(spec, input_schema)
        inputs = {
            g: tuple(
                dict.fromkeys(
                    c
                    for f in fs
                    for c in (f.source, *(col for _, _, col, _ in spec_lib.feature_refs(f)))
                )
            )
            for g, fs in dedup_groups.items()
        }
        helpers = tuple(
            dict.fromkeys(c for cols in inputs.values() for c in cols if c not in spec.passthrough)
        )
        self._helpers = frozenset(wire.EXTRA_PREFIX + c for c in helpers)
        rows_spec = dataclasses.replace(
            spec,
            features=tuple(f for f in spec.features if not f.dedup_group),
            passthrough=(*spec.passthrough, *helpers),
        )
        self._rows = FeaturePipeline(rows_spec, input_schema)
        self.input_columns = self._rows.input_columns
        groups = []
        for g, fs in dedup_groups.items():
            group_spec = dataclasses.replace(
                spec,
                features=fs,
                label="",
                weight="",
                passthrough=(),
                negative_downsample_rate=1.0,
                sample_rate=1.0,
                sample_key="",
            )
            schema = pa.schema(
                [
                    pa.field(wire.SPARSE_PREFIX + f.name, wire.SPARSE_TYPE, nullable=False)
                    for f in fs
                ]
            )
            group_schema = None
            if input_schema is not None:
                group_schema = pa.schema([input_schema.field(c) for c in inputs[g]])
            groups.append(
                _Group(g, fs, inputs[g], FeaturePipeline(group_spec, group_schema), schema)
            )
        self._groups = tuple(groups)
        self._metadata = {
            wire.METADATA_SPARSE: json.dumps([f.name for f in spec.sparse_features]).encode(),
            wire.METADATA_DEDUP: json.dumps(self.groups).encode(),
        }

    def apply(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
        """Stage 1, per read chunk: everything but the dedup groups (see the module doc)."""
        return self._rows.apply(batch)

    def session_starts(self, batch: pa.RecordBatch | pa.Table) -> npt.NDArray[np.int64] | None:
        """Where the sessions of a raw read chunk begin: runs of rows whose inputs of the first
        dedup group are equal; None without dedup groups (rows are then shuffled one by one)."""
        if not self._groups:
            return None
        return session_starts(batch.select(list(self._groups[0].inputs)))

    def finish(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[Section]]:
        """Stage 2, per delivered batch: the rows section's batch and the dedup sections.

        Args:
            batch: ``B >= 1`` rows cut from :meth:`apply`'s output.
        """
        if not self._groups:
            return batch, []
        arrays: list[pa.Array] = []
        fields: list[pa.Field] = []
        for i, field in enumerate(batch.schema):
            if field.name not in self._helpers:
                fields.append(field)
                arrays.append(batch.column(i))
        sections: list[Section] = []
        rows = batch.num_rows
        for group in self._groups:
            raw = pa.RecordBatch.from_arrays(
                [batch.column(wire.EXTRA_PREFIX + c) for c in group.inputs],
                names=list(group.inputs),
            )
            first, inverse = unique_rows(raw)
            unique = group.pipeline.apply(raw.take(pa.array(first)))
            columns = [unique.column(wire.SPARSE_PREFIX + f.name) for f in group.features]
            if 1.0 - len(first) / rows >= self._min_share:
                fields.append(pa.field(wire.inverse_column(group.name), wire.INVERSE_TYPE, False))
                arrays.append(pa.array(inverse, type=wire.INVERSE_TYPE))
                sections.append(
                    (
                        wire.DEDUP_SECTION_PREFIX + group.name,
                        pa.RecordBatch.from_arrays(columns, schema=group.section_schema),
                    )
                )
            else:
                take = pa.array(inverse)
                fields.extend(group.section_schema)
                arrays.extend(column.take(take) for column in columns)
        metadata = {**(batch.schema.metadata or {}), **self._metadata}
        schema = pa.schema(fields, metadata=metadata)
        return pa.RecordBatch.from_arrays(arrays, schema=schema), sections


def expand(
    rows: pa.RecordBatch, sections: Sequence[Section], groups: dict[str, tuple[str, ...]]
) -> pa.RecordBatch:
    """The plain batch a deduplicated one stands for (tests and benchmarks; the client has its
    own): every group's features as ``sparse.<name>`` columns taken through the inverse."""
    by_name = dict(sections)
    arrays = []
    fields = []
    for i, field in enumerate(rows.schema):
        if not field.name.startswith("dedup."):
            fields.append(field)
            arrays.append(rows.column(i))
    for group, features in groups.items():
        section = by_name.get(wire.DEDUP_SECTION_PREFIX + group)
        if section is None:
            continue
        take = rows.column(wire.inverse_column(group))
        for name in features:
            column = wire.SPARSE_PREFIX + name
            fields.append(section.schema.field(column))
            arrays.append(section.column(column).take(take))
    return pa.RecordBatch.from_arrays(
        arrays, schema=pa.schema(fields, metadata=rows.schema.metadata)
    )
