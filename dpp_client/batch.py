"""Trainer-facing batches, and the zero-copy conversion from Arrow record batches.

Owns: :class:`JaggedTensor`, :class:`InverseKeyedJaggedTensor`, :class:`Batch`,
:func:`batch_from_arrow` and :func:`concat_batches`. Knows Arrow and torch, never gRPC; must
never import ``dpp_server`` or ``storage``.

Zero copy, and what that means for writes: :func:`batch_from_arrow` builds every tensor with
``torch.frombuffer`` over the Arrow buffers, which themselves point into the received gRPC
message (an immutable ``bytes``). The tensors therefore share that memory and keep it alive.
Torch has no read-only tensors, so nothing stops an in-place write (``batch.dense.clamp_(0)``,
``labels.mul_(2)``, ``t[0] = 1``): it succeeds silently and changes the message's bytes, which
other tensors of the batch may share (a dedup group's unique rows serve several features). That
is a bug in the caller's code, never detected: copy first. ``t.clone()`` copies one tensor;
``batch.to("cuda")`` and ``batch.pin_memory()`` copy the batch; ``batch.to("cpu")`` on a CPU
batch does *not* (torch returns the same tensors). Making the tensors truly read-only would
need a copy of every batch, which is what zero copy avoids (``docs/client.md``). Torch warns
once per process that the buffer "is not writable"; that one warning is silenced by a filter
matching its exact text and this module only.

The "rows" batch it converts is the one :func:`dpp_client.frames.decode_frame` returns; its
columns, types and metadata are :mod:`dpp_proto.wire`'s (described in ``docs/architecture.md``,
"The wire"). A deduplicated group's features arrive as ``dictionary<int32, large_list<int64>>``
columns (dictionary = unique rows, indices = inverse) and become :attr:`Batch.dedup` entries,
zero-copy too.
"""

from __future__ import annotations

import importlib
import logging
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch

from dpp_client.errors import FrameError
from dpp_proto import wire

__all__ = [
    "Batch",
    "InverseKeyedJaggedTensor",
    "JaggedTensor",
    "batch_from_arrow",
    "concat_batches",
]

_log = logging.getLogger(__name__)

# torch.frombuffer warns (once per process) when the buffer is read-only. Read-only is by
# design here (see the module docstring), so silence exactly that warning, raised from here.
warnings.filterwarnings(
    "ignore",
    message="The given buffer is not writable",
    category=UserWarning,
    module=r"dpp_client\.batch",
)

_TORCHREC_HINT = (
    "Batch.to_kjt() needs torchrec, which is not installed. Install the CPU build with: "
    "pip install fbgemm-gpu-cpu==1.8.0 && pip install torchrec==1.8.0 --no-deps"
)

_TORCH_DTYPES: dict[pa.DataType, torch.dtype] = {
    pa.float32(): torch.float32,
    pa.float64(): torch.float64,
    pa.float16(): torch.float16,
    pa.int8(): torch.int8,
    pa.int16(): torch.int16,
    pa.int32(): torch.int32,
    pa.int64(): torch.int64,
    pa.uint8(): torch.uint8,
    pa.uint16(): torch.uint16,
    pa.uint32(): torch.uint32,
    pa.uint64(): torch.uint64,
}

_warned_extras: set[str] = set()


@dataclass
class JaggedTensor:
    """A batch of variable-length id lists: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``.

    Attributes:
        values: int64 ``[N]``, all ids of the batch concatenated.
        offsets: int64 ``[B + 1]``, ``offsets[0] == 0`` and ``offsets[-1] == N``.
    """

    values: torch.Tensor
    offsets: torch.Tensor

    def lengths(self) -> torch.Tensor:
        """Returns int64 ``[B]`` list lengths (a new tensor; the views stay untouched)."""
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedTensor:
        """Returns a copy on ``device`` (``non_blocking`` only helps from pinned memory)."""
        return JaggedTensor(
            values=self.values.to(device, non_blocking=non_blocking),
            offsets=self.offsets.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> JaggedTensor:
        """Returns a copy in page-locked memory, for asynchronous host-to-GPU copies."""
        return JaggedTensor(values=self.values.pin_memory(), offsets=self.offsets.pin_memory())

    def take(self, rows: torch.Tensor) -> JaggedTensor:
        """Returns a new jagged tensor whose row ``i`` is this one's row ``rows[i]``.

        Vectorized (no loop per row); used to expand unique rows through inverse indices.
        """
        index = rows.long()
        lengths = self.lengths()[index]
        offsets = torch.zeros(len(index) + 1, dtype=torch.int64, device=lengths.device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        total = int(offsets[-1])
        # Output id j of row i sits at unique offset starts[i] + (j - offsets[i]).
        shift = self.offsets[:-1][index] - offsets[:-1]
        positions = torch.repeat_interleave(shift, lengths, output_size=total)
        positions += torch.arange(total, dtype=torch.int64, device=positions.device)
        return JaggedTensor(values=self.values[positions], offsets=offsets)


@dataclass
class InverseKeyedJaggedTensor:
    """The sparse features of one deduplication group (RecD's inverse-keyed jagged tensor).

    The group's features are stored once per unique row: for every key ``k``, batch row ``i``
    holds the ids of row ``inverse_indices[i]`` of ``unique[k]``. A model pools embeddings on
    the ``U`` unique rows and expands the pooled ``[U, E]`` result with
    ``pooled[ikjt.inverse_indices]`` (``[B, E]``); :meth:`to_jagged` expands the ids instead.

    Attributes:
        unique: one :class:`JaggedTensor` per feature of the group (spec order), each over the
            same ``U`` unique rows, in order of first occurrence in the batch.
        inverse_indices: int32 ``[B]``, values in ``[0, U)``; a read-only view like the rest.
    """

    unique: dict[str, JaggedTensor]
    inverse_indices: torch.Tensor

    def keys(self) -> list[str]:
        """Feature names of the group, in spec order."""
        return list(self.unique)

    def __getitem__(self, key: str) -> JaggedTensor:
        """The unique rows of feature ``key``."""
        return self.unique[key]

    @property
    def num_rows(self) -> int:
        """Rows of the batch (``B``)."""
        return int(self.inverse_indices.shape[0])

    @property
    def num_unique(self) -> int:
        """Unique rows (``U``)."""
        first = next(iter(self.unique.values()), None)
        return 0 if first is None else int(first.offsets.shape[0]) - 1

    def to_jagged(self) -> dict[str, JaggedTensor]:
        """Expands every feature to plain ``B``-row jagged tensors (copies)."""
        return {k: jt.take(self.inverse_indices) for k, jt in self.unique.items()}

    def to(
        self, device: torch.device | str, non_blocking: bool = False
    ) -> InverseKeyedJaggedTensor:
        """Returns a copy on ``device``."""
        return InverseKeyedJaggedTensor(
            unique={k: v.to(device, non_blocking) for k, v in self.unique.items()},
            inverse_indices=self.inverse_indices.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> InverseKeyedJaggedTensor:
        """Returns a copy in page-locked memory."""
        return InverseKeyedJaggedTensor(
            unique={k: v.pin_memory() for k, v in self.unique.items()},
            inverse_indices=self.inverse_indices.pin_memory(),
        )


@dataclass
class Batch:
    """One batch of rows, as the trainer consumes it.

    Tensors built by :func:`batch_from_arrow` are views of the received message that must not
    be written in place: nothing prevents it, so copy a tensor (``clone()``) before writing
    (see the module docstring). :meth:`to` another device and :meth:`pin_memory` copy.

    Attributes:
        dense: float32 ``[B, D]``, dense features stacked in spec order (``D`` may be 0).
        sparse: one :class:`JaggedTensor` per sparse feature outside any dedup group, in spec
            order.
        labels: float32 ``[B]``, or None when the spec has no label.
        weights: float32 ``[B]``, or None when the spec has no weight.
        extras: passthrough columns by name (without the ``extra.`` prefix), ``[B]`` each.
        dense_names: names of the ``D`` dense columns, in order.
        dedup: one :class:`InverseKeyedJaggedTensor` per dedup group of the spec (its features
            are not in ``sparse``); always present for every group, whatever the worker sent.
            :meth:`expand` gives the batch with every feature in ``sparse``.
        sparse_names: every sparse feature, in spec order (those of ``sparse`` and ``dedup``).
    """

    dense: torch.Tensor
    sparse: dict[str, JaggedTensor]
    labels: torch.Tensor | None
    weights: torch.Tensor | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    dense_names: list[str] = field(default_factory=list)
    dedup: dict[str, InverseKeyedJaggedTensor] = field(default_factory=dict)
    sparse_names: list[str] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        """Rows in the batch (``B``)."""
        return int(self.dense.shape[0])

    def pin_memory(self) -> Batch:
        """Returns a copy with every tensor in page-locked memory."""
        return Batch(
            dense=self.dense.pin_memory(),
            sparse={k: v.pin_memory() for k, v in self.sparse.items()},
            labels=None if self.labels is None else self.labels.pin_memory(),
            weights=None if self.weights is None else self.weights.pin_memory(),
            extras={k: v.pin_memory() for k, v in self.extras.items()},
            dense_names=list(self.dense_names),
            dedup={k: v.pin_memory() for k, v in self.dedup.items()},
            sparse_names=list(self.sparse_names),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Returns a copy on ``device``.

        Args:
            device: e.g. ``"cuda:0"``.
            non_blocking: overlap the copy with compute; only effective when the batch is in
                pinned memory (``DppLoader(pin_memory=True)``).
        """
        return Batch(
            dense=self.dense.to(device, non_blocking=non_blocking),
            sparse={k: v.to(device, non_blocking) for k, v in self.sparse.items()},
            labels=None
            if self.labels is None
            else self.labels.to(device, non_blocking=non_blocking),
            weights=None
            if self.weights is None
            else self.weights.to(device, non_blocking=non_blocking),
            extras={k: v.to(device, non_blocking=non_blocking) for k, v in self.extras.items()},
            dense_names=list(self.dense_names),
            dedup={k: v.to(device, non_blocking) for k, v in self.dedup.items()},
            sparse_names=list(self.sparse_names),
        )

    def _all_sparse_names(self) -> list[str]:
        names = self.sparse_names or [
            *self.sparse,
            *(k for g in self.dedup.values() for k in g.unique),
        ]
        return names

    def expand(self) -> Batch:
        """The same batch with every dedup group expanded into plain ``sparse`` features
        (spec order); tensors outside the groups are shared, not copied."""
        if not self.dedup:
            return self
        expanded = dict(self.sparse)
        for ikjt in self.dedup.values():
            expanded.update(ikjt.to_jagged())
        return Batch(
            dense=self.dense,
            sparse={name: expanded[name] for name in self._all_sparse_names()},
            labels=self.labels,
            weights=self.weights,
            extras=dict(self.extras),
            dense_names=list(self.dense_names),
            sparse_names=list(self.sparse_names),
        )

    def to_kjt(self, expand: bool = False) -> Any:
        """Builds a torchrec ``KeyedJaggedTensor`` of the sparse features.

        Keys are in spec order; values are concatenated (a copy) and lengths derived from the
        offsets. torchrec is imported lazily so the client does not depend on it.

        With dedup groups (and ``expand`` False) the KJT is TorchRec's variable-batch form: a
        key of a group holds its ``U`` unique rows (``stride_per_key_per_rank``) and
        ``inverse_indices=(keys, int64 [num_keys, B])`` maps each batch row to them (a key
        outside any group maps row ``i`` to ``i``). ``EmbeddingBagCollection`` then pools the
        unique rows only and expands the pooled embeddings to ``B`` rows (RecD's model side).

        Args:
            expand: build a plain KJT of :meth:`expand`'s batch instead.

        Returns:
            ``torchrec.sparse.jagged_tensor.KeyedJaggedTensor``.

        Raises:
            ImportError: torchrec is missing; the message says how to install it.
        """
        try:
            jagged = importlib.import_module("torchrec.sparse.jagged_tensor")
        except ImportError as exc:
            raise ImportError(_TORCHREC_HINT) from exc
        if self.dedup and expand:
            return self.expand().to_kjt()
        if self.dedup:
            return self._vbe_kjt(jagged)
        keys = list(self.sparse)
        if keys:
            values = torch.cat([self.sparse[k].values for k in keys])
            lengths = torch.cat([self.sparse[k].lengths() for k in keys])
        else:
            values = torch.empty(0, dtype=torch.int64)
            lengths = torch.empty(0, dtype=torch.int64)
        return jagged.KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)

    def _vbe_kjt(self, jagged: Any) -> Any:
        """The variable-batch KJT with inverse indices (see :meth:`to_kjt`)."""
        rows = self.num_rows
        identity = torch.arange(rows, dtype=torch.int64)
        tensors: dict[str, tuple[JaggedTensor, torch.Tensor]] = {
            k: (jt, identity) for k, jt in self.sparse.items()
        }
        for ikjt in self.dedup.values():
            inverse = ikjt.inverse_indices.long()
            tensors.update((k, (jt, inverse)) for k, jt in ikjt.unique.items())
        keys = self._all_sparse_names()
        return jagged.KeyedJaggedTensor(
            keys=keys,
            values=torch.cat([tensors[k][0].values for k in keys]),
            lengths=torch.cat([tensors[k][0].lengths() for k in keys]),
            stride_per_key_per_rank=[[int(tensors[k][0].offsets.shape[0]) - 1] for k in keys],
            inverse_indices=(keys, torch.stack([tensors[k][1] for k in keys])),
        )


_ITEMSIZES = {dtype: torch.empty(0, dtype=dtype).element_size() for dtype in _TORCH_DTYPES.values()}
_INT64 = struct.Struct("<q")


def _view(buf: pa.Buffer | None, dtype: torch.dtype, start: int, count: int) -> torch.Tensor:
    """Returns ``count`` elements of ``dtype`` from ``buf`` starting at element ``start``.

    A view when ``count > 0`` (torch.frombuffer rejects empty views, so those get a fresh
    empty tensor: nothing to copy anyway). The tensor keeps ``buf`` alive.
    """
    if count == 0 or buf is None:
        return torch.empty(0, dtype=dtype)
    itemsize = _ITEMSIZES.get(dtype) or torch.empty(0, dtype=dtype).element_size()
    end = (start + count) * itemsize
    if end > buf.size:
        raise FrameError(
            f"Arrow buffer of {buf.size} bytes is too short for {count} {dtype} values at "
            f"element {start}; the frame is corrupted"
        )
    return torch.frombuffer(memoryview(buf), dtype=dtype, count=count, offset=start * itemsize)


def _primitive_view(arr: pa.Array, name: str) -> torch.Tensor:
    """Zero-copy view of a fixed-width numeric Arrow array (nulls are rejected or filled)."""
    dtype = _TORCH_DTYPES.get(arr.type)
    if dtype is None:
        raise FrameError(f"column {name!r} has type {arr.type}, which has no torch dtype")
    if arr.null_count:
        if pa.types.is_floating(arr.type):
            # Copy, with nulls as NaN: a view would expose whatever bytes sit under the nulls.
            return torch.from_numpy(arr.to_numpy(zero_copy_only=False).copy())
        raise FrameError(
            f"column {name!r} has {arr.null_count} nulls; integer columns must be null-free "
            "(fill them with a spec op or a row_filter)"
        )
    return _view(arr.buffers()[1], dtype, arr.offset, len(arr))


def _dense_view(arr: pa.Array) -> torch.Tensor:
    """Zero-copy ``[B, D]`` view of a ``fixed_size_list<float32, D>`` array."""
    if not pa.types.is_fixed_size_list(arr.type) or arr.type.value_type != pa.float32():
        raise FrameError(f"column 'dense' has type {arr.type}, expected fixed_size_list<float32>")
    width = arr.type.list_size
    child = arr.values  # ignores the parent's offset, so add it below
    if arr.null_count or child.null_count:
        raise FrameError("column 'dense' has nulls; the worker must fill them (fill_null op)")
    start = child.offset + arr.offset * width
    flat = _view(child.buffers()[1], torch.float32, start, len(arr) * width)
    return flat.view(len(arr), width)


def _jagged_view(arr: pa.Array, name: str) -> JaggedTensor:
    """Zero-copy :class:`JaggedTensor` of a ``large_list<int64>`` array.

    Offsets are a view unless the array is a slice whose first offset is not 0 (e.g. a
    re-batched remainder): then they are rebased, a small ``B + 1`` copy.

    This runs once per sparse feature per batch in the trainer's process, so it touches each
    Arrow object once (one ``buffers()`` call, bounds read with ``struct`` rather than by
    indexing a tensor) and builds the two views directly: about 4.5 us a feature here.
    """
    arr_type = arr.type
    if arr_type != wire.SPARSE_TYPE and (
        not pa.types.is_large_list(arr_type) or arr_type.value_type != pa.int64()
    ):
        raise FrameError(f"column {name!r} has type {arr.type}, expected large_list<int64>")
    if arr.null_count:
        raise FrameError(f"column {name!r} has {arr.null_count} null lists; expected none")
    _, offsets_buf, values_validity, values_buf = arr.buffers()
    child = arr.values  # the whole child; the offsets say which part is ours
    if values_validity is not None and child.null_count:
        raise FrameError(f"column {name!r} has null ids; expected none")
    rows = len(arr)
    start = arr.offset
    if rows == 0 or offsets_buf is None:
        return JaggedTensor(torch.empty(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    if (start + rows + 1) * 8 > offsets_buf.size:
        raise FrameError(
            f"column {name!r}: offsets buffer of {offsets_buf.size} bytes is too short for "
            f"{rows} lists at {start}; the frame is corrupted"
        )
    offsets = torch.frombuffer(
        memoryview(offsets_buf), dtype=torch.int64, count=rows + 1, offset=start * 8
    )
    first = _INT64.unpack_from(offsets_buf, start * 8)[0]
    last = _INT64.unpack_from(offsets_buf, (start + rows) * 8)[0]
    values = _view(values_buf, torch.int64, child.offset + first, last - first)
    if first != 0:
        offsets = offsets - first
    return JaggedTensor(values=values, offsets=offsets)


def _metadata(schema: pa.Schema) -> tuple[list[str] | None, list[str] | None, dict[str, list[str]]]:
    """The dense names, sparse names and dedup groups a rows schema's metadata lists."""
    try:
        return (
            wire.feature_names(schema, wire.METADATA_DENSE),
            wire.feature_names(schema, wire.METADATA_SPARSE),
            wire.dedup_groups(schema),
        )
    except wire.WireFormatError as exc:
        raise FrameError(str(exc)) from exc


def batch_from_arrow(rb: pa.RecordBatch) -> Batch:
    """Converts one "rows" record batch into a :class:`Batch` without copying.

    Every tensor is a read-only view of ``rb``'s buffers (see the module docstring), except
    rebased sparse offsets of a sliced batch and float columns with nulls (copied, NaN-filled).
    Extra columns of types torch cannot hold (strings, nested) are skipped with one warning
    per column name.

    Args:
        rb: a record batch with the schema described in the module docstring.

    Returns:
        The batch; its tensors keep ``rb``'s memory alive.

    Raises:
        FrameError: a column has an unexpected type or unexpected nulls.
    """
    schema = rb.schema
    rows = rb.num_rows
    dense_names, sparse_names, groups = _metadata(schema)

    dense_idx = schema.get_field_index(wire.DENSE_COLUMN)
    if dense_idx >= 0:
        dense = _dense_view(rb.column(dense_idx))
    else:
        dense = torch.empty((rows, 0), dtype=torch.float32)
    if dense_names is None:
        dense_names = [f"dense_{i}" for i in range(dense.shape[1])]
    if len(dense_names) != dense.shape[1]:
        raise FrameError(
            f"schema metadata names {len(dense_names)} dense features but the dense column "
            f"has width {dense.shape[1]}"
        )

    if sparse_names is None:
        sparse_names = [
            n[len(wire.SPARSE_PREFIX) :] for n in schema.names if n.startswith(wire.SPARSE_PREFIX)
        ]
    dedup = _dedup_groups(rb, groups)
    grouped = {name for ikjt in dedup.values() for name in ikjt.unique}
    sparse: dict[str, JaggedTensor] = {}
    for name in sparse_names:
        if name in grouped:
            continue
        column = wire.SPARSE_PREFIX + name
        idx = schema.get_field_index(column)
        if idx < 0:
            raise FrameError(
                f"schema metadata names sparse feature {name!r} but {column!r} is missing"
            )
        sparse[name] = _jagged_view(rb.column(idx), column)

    labels = None
    idx = schema.get_field_index(wire.LABEL_COLUMN)
    if idx >= 0:
        labels = _primitive_view(rb.column(idx), wire.LABEL_COLUMN)
    weights = None
    idx = schema.get_field_index(wire.WEIGHT_COLUMN)
    if idx >= 0:
        weights = _primitive_view(rb.column(idx), wire.WEIGHT_COLUMN)

    extras: dict[str, torch.Tensor] = {}
    for idx, column in enumerate(schema.names):
        if not column.startswith(wire.EXTRA_PREFIX):
            continue
        name = column[len(wire.EXTRA_PREFIX) :]
        arr = rb.column(idx)
        if arr.type in _TORCH_DTYPES:
            extras[name] = _primitive_view(arr, column)
        elif pa.types.is_boolean(arr.type) and not arr.null_count:
            # Arrow packs booleans into bits; torch needs bytes, so this one copies.
            extras[name] = torch.from_numpy(arr.to_numpy(zero_copy_only=False).copy())
        elif column not in _warned_extras:
            _warned_extras.add(column)
            _log.warning(
                "skipping passthrough column %r of type %s: torch tensors hold only numbers "
                "(cast it in the table or drop it from passthrough)",
                column,
                arr.type,
            )

    return Batch(
        dense=dense,
        sparse=sparse,
        labels=labels,
        weights=weights,
        extras=extras,
        dense_names=dense_names,
        dedup=dedup,
        sparse_names=list(sparse_names),
    )


def _dedup_groups(
    rb: pa.RecordBatch, groups: dict[str, list[str]]
) -> dict[str, InverseKeyedJaggedTensor]:
    """The dedup groups of a decoded batch (dictionary columns; see the module docstring)."""
    out: dict[str, InverseKeyedJaggedTensor] = {}
    for group, names in groups.items():
        unique: dict[str, JaggedTensor] = {}
        inverse: torch.Tensor | None = None
        for name in names:
            column = wire.SPARSE_PREFIX + name
            idx = rb.schema.get_field_index(column)
            if idx < 0 or not pa.types.is_dictionary(rb.schema.field(idx).type):
                raise FrameError(
                    f"dedup group {group!r}: column {column!r} is missing or not dictionary "
                    "encoded; decode frames with dpp_client.frames.decode_frame"
                )
            arr = rb.column(idx)
            if inverse is None:
                inverse = _primitive_view(arr.indices, column)
            unique[name] = _jagged_view(arr.dictionary, column)
        if inverse is not None:
            out[group] = InverseKeyedJaggedTensor(unique=unique, inverse_indices=inverse)
    return out


def concat_batches(rbs: list[pa.RecordBatch]) -> pa.RecordBatch:
    """Concatenates record batches of one schema into one contiguous record batch.

    Used to re-batch split remainders into full batches; copies (a contiguous batch is what
    :func:`batch_from_arrow` needs for its views), which is fine because it runs at most once
    per split.

    Raises:
        ValueError: ``rbs`` is empty (the schema would be unknown).
    """
    return wire.concat_rows(rbs, drop_unused_unique_rows=True)
