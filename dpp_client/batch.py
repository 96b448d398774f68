"""Trainer-facing batches, and the zero-copy conversion from Arrow record batches.

Owns: :class:`JaggedTensor`, :class:`Batch`, :func:`batch_from_arrow` and
:func:`concat_batches`. Knows Arrow and torch, never gRPC; must never import ``dpp_server``
or ``storage``.

Zero copy and read-only memory: :func:`batch_from_arrow` builds every tensor with
``torch.frombuffer`` over the Arrow buffers, which themselves point into the received gRPC
message (an immutable ``bytes``). The tensors therefore share that memory, keep it alive, and
must be treated as read-only: writing to them in place is undefined behaviour (it would mutate a
Python ``bytes`` object). Use ``.clone()`` first, or ``.to(device)`` / ``.pin_memory()``, which
copy. Torch warns once per process that the buffer "is not writable"; that one warning is
silenced by a filter matching its exact text and this module only.

The expected "rows" schema (see ``worker.proto``):

* ``dense``: ``fixed_size_list<float32 not null, D>``, present only when D > 0;
* ``sparse.<name>``: ``large_list<int64>`` per sparse feature, no nulls;
* ``label`` / ``weight``: float32 when the spec names them;
* ``extra.<name>``: passthrough columns;
* schema metadata ``dpp.dense`` / ``dpp.sparse``: JSON lists of feature names in spec order.
"""

from __future__ import annotations

import importlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch

from dpp_client.errors import FrameError

__all__ = [
    "Batch",
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

DENSE_COLUMN = "dense"
SPARSE_PREFIX = "sparse."
EXTRA_PREFIX = "extra."
LABEL_COLUMN = "label"
WEIGHT_COLUMN = "weight"

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


@dataclass
class Batch:
    """One batch of rows, as the trainer consumes it.

    Tensors built by :func:`batch_from_arrow` are read-only views of the received message
    (see the module docstring); :meth:`to` and :meth:`pin_memory` return writable copies.

    Attributes:
        dense: float32 ``[B, D]``, dense features stacked in spec order (``D`` may be 0).
        sparse: one :class:`JaggedTensor` per sparse feature, in spec order.
        labels: float32 ``[B]``, or None when the spec has no label.
        weights: float32 ``[B]``, or None when the spec has no weight.
        extras: passthrough columns by name (without the ``extra.`` prefix), ``[B]`` each.
        dense_names: names of the ``D`` dense columns, in order.
    """

    dense: torch.Tensor
    sparse: dict[str, JaggedTensor]
    labels: torch.Tensor | None
    weights: torch.Tensor | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    dense_names: list[str] = field(default_factory=list)

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
        )

    def to_kjt(self) -> Any:
        """Builds a torchrec ``KeyedJaggedTensor`` of the sparse features.

        Keys are in spec order; values are concatenated (a copy) and lengths derived from the
        offsets. torchrec is imported lazily so the client does not depend on it.

        Returns:
            ``torchrec.sparse.jagged_tensor.KeyedJaggedTensor``.

        Raises:
            ImportError: torchrec is missing; the message says how to install it.
        """
        try:
            jagged = importlib.import_module("torchrec.sparse.jagged_tensor")
        except ImportError as exc:
            raise ImportError(_TORCHREC_HINT) from exc
        keys = list(self.sparse)
        if keys:
            values = torch.cat([self.sparse[k].values for k in keys])
            lengths = torch.cat([self.sparse[k].lengths() for k in keys])
        else:
            values = torch.empty(0, dtype=torch.int64)
            lengths = torch.empty(0, dtype=torch.int64)
        return jagged.KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)


def _view(buf: pa.Buffer | None, dtype: torch.dtype, start: int, count: int) -> torch.Tensor:
    """Returns ``count`` elements of ``dtype`` from ``buf`` starting at element ``start``.

    A view when ``count > 0`` (torch.frombuffer rejects empty views, so those get a fresh
    empty tensor: nothing to copy anyway). The tensor keeps ``buf`` alive.
    """
    if count == 0 or buf is None:
        return torch.empty(0, dtype=dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
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
    """
    if not pa.types.is_large_list(arr.type) or arr.type.value_type != pa.int64():
        raise FrameError(f"column {name!r} has type {arr.type}, expected large_list<int64>")
    if arr.null_count:
        raise FrameError(f"column {name!r} has {arr.null_count} null lists; expected none")
    child = arr.values  # the whole child; the offsets say which part is ours
    if child.null_count:
        raise FrameError(f"column {name!r} has null ids; expected none")
    rows = len(arr)
    offsets = _view(arr.buffers()[1], torch.int64, arr.offset, rows + 1)
    if rows == 0 or offsets.numel() == 0:
        return JaggedTensor(torch.empty(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    first = int(offsets[0])
    last = int(offsets[-1])
    values = _view(child.buffers()[1], torch.int64, child.offset + first, last - first)
    if first != 0:
        offsets = offsets - first
    return JaggedTensor(values=values, offsets=offsets)


def _names_from_metadata(schema: pa.Schema, key: bytes) -> list[str] | None:
    meta = schema.metadata or {}
    raw = meta.get(key)
    if raw is None:
        return None
    names = json.loads(raw)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FrameError(f"schema metadata {key.decode()} is not a JSON list of names: {raw!r}")
    return names


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
    dense_names = _names_from_metadata(schema, b"dpp.dense")
    sparse_names = _names_from_metadata(schema, b"dpp.sparse")

    dense_idx = schema.get_field_index(DENSE_COLUMN)
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
        sparse_names = [n[len(SPARSE_PREFIX) :] for n in schema.names if n.startswith("sparse.")]
    sparse: dict[str, JaggedTensor] = {}
    for name in sparse_names:
        column = SPARSE_PREFIX + name
        idx = schema.get_field_index(column)
        if idx < 0:
            raise FrameError(
                f"schema metadata names sparse feature {name!r} but {column!r} is missing"
            )
        sparse[name] = _jagged_view(rb.column(idx), column)

    labels = None
    idx = schema.get_field_index(LABEL_COLUMN)
    if idx >= 0:
        labels = _primitive_view(rb.column(idx), LABEL_COLUMN)
    weights = None
    idx = schema.get_field_index(WEIGHT_COLUMN)
    if idx >= 0:
        weights = _primitive_view(rb.column(idx), WEIGHT_COLUMN)

    extras: dict[str, torch.Tensor] = {}
    for idx, column in enumerate(schema.names):
        if not column.startswith(EXTRA_PREFIX):
            continue
        name = column[len(EXTRA_PREFIX) :]
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
    )


def concat_batches(rbs: list[pa.RecordBatch]) -> pa.RecordBatch:
    """Concatenates record batches of one schema into one contiguous record batch.

    Used to re-batch split remainders into full batches; copies (a contiguous batch is what
    :func:`batch_from_arrow` needs for its views), which is fine because it runs at most once
    per split.

    Raises:
        ValueError: ``rbs`` is empty (the schema would be unknown).
    """
    if not rbs:
        raise ValueError("concat_batches needs at least one record batch to know the schema")
    if len(rbs) == 1:
        return rbs[0]
    table = pa.Table.from_batches(rbs).combine_chunks()
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return pa.RecordBatch.from_arrays(
            [pa.array([], type=f.type) for f in table.schema], schema=table.schema
        )
    # combine_chunks leaves one chunk per column, so this is unreachable in practice.
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
