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
"The wire"). A deduplicated group's features arrive as ``dictionary<int32, list<int32|int64>>``
columns (dictionary = unique rows, indices = inverse) and become :attr:`Batch.dedup` entries,
zero-copy too.

Ids and offsets keep their wire types: int32 when the worker's op chain bounds the ids
(``sigrid_hash`` and the like; ``docs/client.md``), else int64; offsets int32 in the packed
layout. ``batch_from_arrow(rb, int64_ids=True)`` (``DppLoader(int64_ids=True)``) converts them,
at the cost of a copy. In the packed layout (every frame from a current worker) all plain
sparse features of a batch share one values and one offsets buffer: :attr:`Batch.packed`
views them as 2 tensors, ``Batch.sparse[name]`` is a slice made on first access, and
:meth:`Batch.to_kjt` hands the 2 tensors to TorchRec without a copy.
"""

from __future__ import annotations

import importlib
import logging
import struct
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dpp_client.errors import FrameError
from dpp_proto import wire

__all__ = [
    "Batch",
    "InverseKeyedJaggedTensor",
    "JaggedTensor",
    "PackedSparse",
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


@dataclass
class JaggedTensor:
    """A batch of variable-length id lists: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``.

    Attributes:
        values: int32 or int64 ``[N]`` (the wire's id type), all ids of the batch concatenated.
        offsets: int32 or int64 ``[B + 1]``, ``offsets[0] == 0`` and ``offsets[-1] == N``.
    """

    values: torch.Tensor
    offsets: torch.Tensor

    def lengths(self) -> torch.Tensor:
        """Returns ``[B]`` list lengths, of the offsets' type (a new tensor)."""
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
        lengths = self.lengths()[index].long()
        offsets = torch.zeros(len(index) + 1, dtype=torch.int64, device=lengths.device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        total = int(offsets[-1])
        # Output id j of row i sits at unique offset starts[i] + (j - offsets[i]).
        shift = self.offsets[:-1][index].long() - offsets[:-1]
        positions = torch.repeat_interleave(shift, lengths, output_size=total)
        positions += torch.arange(total, dtype=torch.int64, device=positions.device)
        return JaggedTensor(values=self.values[positions], offsets=offsets)


@dataclass
class PackedSparse:
    """All plain sparse features of a batch in TorchRec's KeyedJaggedTensor layout: feature
    ``k``'s row ``i`` is ``values[offsets[k * B + i]:offsets[k * B + i + 1]]``.

    Attributes:
        keys: feature names, in spec order.
        values: int32 or int64 ``[N]``, every feature's ids, feature after feature.
        offsets: int32 (or int64) ``[K * B + 1]``, from 0.
        bounds: ``K + 1`` Python ints, ``offsets[k * B]`` for each ``k`` (kept on the host so
            slicing a feature never reads a device tensor).
    """

    keys: list[str]
    values: torch.Tensor
    offsets: torch.Tensor
    bounds: list[int]

    @property
    def stride(self) -> int:
        """Rows per feature (``B``)."""
        return (int(self.offsets.shape[0]) - 1) // len(self.keys) if self.keys else 0

    def feature(self, k: int) -> JaggedTensor:
        """Feature ``k`` as a :class:`JaggedTensor`: a values view and rebased ``B + 1``
        offsets (a small copy)."""
        rows = self.stride
        start, end = self.bounds[k], self.bounds[k + 1]
        offsets = self.offsets[k * rows : (k + 1) * rows + 1]
        return JaggedTensor(values=self.values[start:end], offsets=offsets - start)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedSparse:
        """Returns a copy on ``device``: 2 copies, whatever the number of features."""
        return PackedSparse(
            keys=self.keys,
            values=self.values.to(device, non_blocking=non_blocking),
            offsets=self.offsets.to(device, non_blocking=non_blocking),
            bounds=self.bounds,
        )

    def pin_memory(self) -> PackedSparse:
        """Returns a copy in page-locked memory."""
        return PackedSparse(
            self.keys, self.values.pin_memory(), self.offsets.pin_memory(), self.bounds
        )

    def to_int64(self) -> PackedSparse:
        """The same with int64 values and offsets (copies unless they are int64 already)."""
        return PackedSparse(self.keys, self.values.long(), self.offsets.long(), self.bounds)


class _PackedFeatures(Mapping[str, JaggedTensor]):
    """``Batch.sparse`` over a :class:`PackedSparse`: a feature's :class:`JaggedTensor` is
    sliced on first access and kept. Not thread-safe (a batch belongs to one thread at a
    time; two threads slicing at once would only slice twice)."""

    def __init__(self, packed: PackedSparse) -> None:
        self.packed = packed
        self._index = {k: i for i, k in enumerate(packed.keys)}
        self._made: dict[str, JaggedTensor] = {}

    def __getitem__(self, key: str) -> JaggedTensor:
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self.packed.feature(self._index[key])
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self.packed.keys)

    def __len__(self) -> int:
        return len(self.packed.keys)


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
            order (read-only mapping; with ``packed``, each is sliced from it on access).
        labels: float32 ``[B]``, or None when the spec has no label.
        weights: float32 ``[B]``, or None when the spec has no weight.
        extras: passthrough columns that are numbers, booleans or times, by name (without
            the ``extra.`` prefix), ``[B]`` each: int64 for any integer column, float64 for
            any float, bool, and the integer count of the column's unit for timestamps,
            dates, times and durations (int64; int32 days for date32, int32 for time32).
            Nulls read as 0, NaN or False: :attr:`extras_valid` says which rows are null.
        extras_valid: bool ``[B]`` per entry of :attr:`extras`, False where the table's value
            is null (all True for a column without nulls).
        extras_arrow: every other passthrough column (strings, binary, lists, structs,
            decimals, ...) as the ``pyarrow.Array`` received, nulls included; host memory
            only (:meth:`to` and :meth:`pin_memory` pass them along unchanged).
        dense_names: names of the ``D`` dense columns, in order.
        dedup: one :class:`InverseKeyedJaggedTensor` per dedup group of the spec (its features
            are not in ``sparse``); always present for every group, whatever the worker sent.
            :meth:`expand` gives the batch with every feature in ``sparse``.
        sparse_names: every sparse feature, in spec order (those of ``sparse`` and ``dedup``).
        packed: the features of ``sparse`` as one KeyedJaggedTensor-layout pair of tensors,
            when the frame carried them packed (else None: each feature has its own views).
    """

    dense: torch.Tensor
    sparse: Mapping[str, JaggedTensor]
    labels: torch.Tensor | None
    weights: torch.Tensor | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    dense_names: list[str] = field(default_factory=list)
    dedup: dict[str, InverseKeyedJaggedTensor] = field(default_factory=dict)
    sparse_names: list[str] = field(default_factory=list)
    extras_valid: dict[str, torch.Tensor] = field(default_factory=dict)
    extras_arrow: dict[str, pa.Array] = field(default_factory=dict)
    packed: PackedSparse | None = None

    @property
    def num_rows(self) -> int:
        """Rows in the batch (``B``)."""
        return int(self.dense.shape[0])

    def _sparse_as(self, packed: PackedSparse | None, each: Any) -> Mapping[str, JaggedTensor]:
        if packed is not None:
            return _PackedFeatures(packed)
        return {k: each(v) for k, v in self.sparse.items()}

    def pin_memory(self) -> Batch:
        """Returns a copy with every tensor in page-locked memory."""
        packed = None if self.packed is None else self.packed.pin_memory()
        return Batch(
            dense=self.dense.pin_memory(),
            sparse=self._sparse_as(packed, lambda v: v.pin_memory()),
            labels=None if self.labels is None else self.labels.pin_memory(),
            weights=None if self.weights is None else self.weights.pin_memory(),
            extras={k: v.pin_memory() for k, v in self.extras.items()},
            dense_names=list(self.dense_names),
            dedup={k: v.pin_memory() for k, v in self.dedup.items()},
            sparse_names=list(self.sparse_names),
            extras_valid={k: v.pin_memory() for k, v in self.extras_valid.items()},
            extras_arrow=dict(self.extras_arrow),
            packed=packed,
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Returns a copy on ``device``.

        Args:
            device: e.g. ``"cuda:0"``.
            non_blocking: overlap the copy with compute; only effective when the batch is in
                pinned memory (``DppLoader(pin_memory=True)``).
        """
        packed = None if self.packed is None else self.packed.to(device, non_blocking)
        return Batch(
            dense=self.dense.to(device, non_blocking=non_blocking),
            sparse=self._sparse_as(packed, lambda v: v.to(device, non_blocking)),
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
            extras_valid={
                k: v.to(device, non_blocking=non_blocking) for k, v in self.extras_valid.items()
            },
            extras_arrow=dict(self.extras_arrow),
            packed=packed,
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
            extras_valid=dict(self.extras_valid),
            extras_arrow=dict(self.extras_arrow),
        )

    def to_kjt(self, expand: bool = False) -> Any:
        """Builds a torchrec ``KeyedJaggedTensor`` of the sparse features.

        Keys are in spec order. From a packed batch (:attr:`packed`) the KJT takes its values
        and offsets as they are (no copy; int32 unless ``int64_ids``); otherwise values are
        concatenated (a copy) and lengths derived from the offsets. torchrec is imported
        lazily so the client does not depend on it.

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
        if self.packed is not None and self.packed.keys == keys:
            return jagged.KeyedJaggedTensor(
                keys=keys, values=self.packed.values, offsets=self.packed.offsets
            )
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
_INT32 = struct.Struct("<i")


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


def _dense_view(arr: pa.Array, checked: bool = False) -> torch.Tensor:
    """Zero-copy ``[B, D]`` view of a ``fixed_size_list<float32, D>`` array (its type already
    checked when ``checked``)."""
    if not checked and (
        not pa.types.is_fixed_size_list(arr.type) or arr.type.value_type != pa.float32()
    ):
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
    if arr_type != wire.SPARSE_TYPE and not wire.is_id_list_type(arr_type):
        raise FrameError(
            f"column {name!r} has type {arr.type}, expected a list of int32 or int64 ids"
        )
    if arr.null_count:
        raise FrameError(f"column {name!r} has {arr.null_count} null lists; expected none")
    _, offsets_buf, values_validity, values_buf = arr.buffers()
    child = arr.values  # the whole child; the offsets say which part is ours
    if values_validity is not None and child.null_count:
        raise FrameError(f"column {name!r} has null ids; expected none")
    rows = len(arr)
    start = arr.offset
    value_dtype = torch.int64 if arr_type.value_type == pa.int64() else torch.int32
    wide = pa.types.is_large_list(arr_type)
    offset_dtype, offset_format = (torch.int64, _INT64) if wide else (torch.int32, _INT32)
    size = offset_format.size
    if rows == 0 or offsets_buf is None:
        return JaggedTensor(torch.empty(0, dtype=value_dtype), torch.zeros(1, dtype=offset_dtype))
    if (start + rows + 1) * size > offsets_buf.size:
        raise FrameError(
            f"column {name!r}: offsets buffer of {offsets_buf.size} bytes is too short for "
            f"{rows} lists at {start}; the frame is corrupted"
        )
    offsets = torch.frombuffer(
        memoryview(offsets_buf), dtype=offset_dtype, count=rows + 1, offset=start * size
    )
    first = offset_format.unpack_from(offsets_buf, start * size)[0]
    last = offset_format.unpack_from(offsets_buf, (start + rows) * size)[0]
    values = _view(values_buf, value_dtype, child.offset + first, last - first)
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


@dataclass(frozen=True)
class _RowsPlan:
    """Where a rows schema keeps what :func:`batch_from_arrow` reads, checked once per schema.

    Attributes:
        dense: index of the dense column (its type checked), or -1.
        dense_names: the dense features' names (as many as the column is wide).
        sparse_names: every sparse feature, spec order.
        groups: the dedup groups.
        plain: plain sparse features (not in a group) and their column indices.
        packed_type: the one ``list<int32|int64>`` type of every plain sparse column, when
            they share it (a packed frame has them as slices of one column), else None.
        label, weight: their column indices, or -1.
        extras: (index, column name, feature name) of each passthrough column.
    """

    dense: int
    dense_names: list[str]
    sparse_names: list[str]
    groups: dict[str, list[str]]
    plain: list[str]
    plain_idx: list[int]
    packed_type: pa.DataType | None
    label: int
    weight: int
    extras: list[tuple[int, str, str]]


_ROWS_PLANS: wire.SchemaMemo[_RowsPlan] = wire.SchemaMemo()


def _rows_plan(schema: pa.Schema) -> _RowsPlan:
    """The plan of ``schema`` (made on its first batch, then remembered).

    Raises:
        FrameError: the schema's metadata or columns do not follow the wire contract.
    """
    plan = _ROWS_PLANS.get((schema,))
    if plan is not None:
        return plan
    dense_names, sparse_names, groups = _metadata(schema)
    dense = schema.get_field_index(wire.DENSE_COLUMN)
    width = 0
    if dense >= 0:
        dense_type = schema.field(dense).type
        if not pa.types.is_fixed_size_list(dense_type) or dense_type.value_type != pa.float32():
            raise FrameError(
                f"column 'dense' has type {dense_type}, expected fixed_size_list<float32>"
            )
        width = dense_type.list_size
    if dense_names is None:
        dense_names = [f"dense_{i}" for i in range(width)]
    if len(dense_names) != width:
        raise FrameError(
            f"schema metadata names {len(dense_names)} dense features but the dense column "
            f"has width {width}"
        )
    if sparse_names is None:
        sparse_names = [
            n[len(wire.SPARSE_PREFIX) :] for n in schema.names if n.startswith(wire.SPARSE_PREFIX)
        ]
    grouped = {name for names in groups.values() for name in names}
    plain = [name for name in sparse_names if name not in grouped]
    plain_idx: list[int] = []
    for name in plain:
        column = wire.SPARSE_PREFIX + name
        idx = schema.get_field_index(column)
        if idx < 0:
            raise FrameError(
                f"schema metadata names sparse feature {name!r} but {column!r} is missing"
            )
        plain_idx.append(idx)
    types = {schema.field(i).type for i in plain_idx}
    packed_type = None
    if len(types) == 1:
        (only,) = types
        if pa.types.is_list(only) and wire.is_id_list_type(only):
            packed_type = only
    extras = [
        (idx, column, column[len(wire.EXTRA_PREFIX) :])
        for idx, column in enumerate(schema.names)
        if column.startswith(wire.EXTRA_PREFIX)
    ]
    plan = _RowsPlan(
        dense=dense,
        dense_names=dense_names,
        sparse_names=list(sparse_names),
        groups=groups,
        plain=plain,
        plain_idx=plain_idx,
        packed_type=packed_type,
        label=schema.get_field_index(wire.LABEL_COLUMN),
        weight=schema.get_field_index(wire.WEIGHT_COLUMN),
        extras=extras,
    )
    return _ROWS_PLANS.put((schema,), plan)


def batch_from_arrow(rb: pa.RecordBatch, *, int64_ids: bool = False) -> Batch:
    """Converts one "rows" record batch into a :class:`Batch` without copying.

    Every tensor is a read-only view of ``rb``'s buffers (see the module docstring), except
    rebased sparse offsets of a sliced batch, booleans, and passthrough columns with nulls
    (copied, nulls filled). Passthrough columns torch cannot hold (strings, nested) stay
    Arrow arrays, in :attr:`Batch.extras_arrow`.

    The schema is read once (:class:`_RowsPlan`, remembered per schema); a batch then costs
    its buffers' views only: about 2 Python calls per column.

    Args:
        rb: a record batch with the schema described in the module docstring.
        int64_ids: convert ids and offsets to int64 (copies) instead of keeping the wire's
            int32 ones.

    Returns:
        The batch; its tensors keep ``rb``'s memory alive.

    Raises:
        FrameError: a column has an unexpected type or unexpected nulls.
    """
    plan = _rows_plan(rb.schema)
    rows = rb.num_rows
    if plan.dense >= 0:
        dense = _dense_view(rb.column(plan.dense), checked=True)
    else:
        dense = torch.empty((rows, 0), dtype=torch.float32)

    dedup = _dedup_groups(rb, plan.groups) if plan.groups else {}
    arrays = [rb.column(i) for i in plan.plain_idx]
    packed = (
        _packed_view(plan.plain, arrays, rows, plan.packed_type)
        if plan.packed_type is not None
        else None
    )
    sparse: Mapping[str, JaggedTensor]
    if packed is not None:
        if int64_ids:
            packed = packed.to_int64()
        sparse = _PackedFeatures(packed)
    else:
        sparse = {
            name: _jagged_view(arr, wire.SPARSE_PREFIX + name)
            for name, arr in zip(plan.plain, arrays, strict=True)
        }
        if int64_ids:
            sparse = {k: _int64(v) for k, v in sparse.items()}
    if int64_ids:
        dedup = {
            g: InverseKeyedJaggedTensor(
                unique={k: _int64(v) for k, v in ikjt.unique.items()},
                inverse_indices=ikjt.inverse_indices,
            )
            for g, ikjt in dedup.items()
        }

    labels = None
    if plan.label >= 0:
        labels = _primitive_view(rb.column(plan.label), wire.LABEL_COLUMN)
    weights = None
    if plan.weight >= 0:
        weights = _primitive_view(rb.column(plan.weight), wire.WEIGHT_COLUMN)

    extras: dict[str, torch.Tensor] = {}
    extras_valid: dict[str, torch.Tensor] = {}
    extras_arrow: dict[str, pa.Array] = {}
    for idx, column, name in plan.extras:
        arr = rb.column(idx)
        tensor = _extra_tensor(arr, column)
        if tensor is None:
            extras_arrow[name] = arr
            continue
        extras[name] = tensor
        if arr.null_count:
            extras_valid[name] = torch.from_numpy(arr.is_valid().to_numpy(zero_copy_only=False))
        else:
            extras_valid[name] = torch.ones(rows, dtype=torch.bool)

    return Batch(
        dense=dense,
        sparse=sparse,
        labels=labels,
        weights=weights,
        extras=extras,
        dense_names=plan.dense_names,
        dedup=dedup,
        sparse_names=list(plan.sparse_names),
        extras_valid=extras_valid,
        extras_arrow=extras_arrow,
        packed=packed,
    )


def _extra_tensor(arr: pa.Array, name: str) -> torch.Tensor | None:
    """A passthrough column as a ``[B]`` tensor (the contract in :class:`Batch`'s
    ``extras``), or None when it is not a number, boolean or time (it stays Arrow).

    A view of the frame when the column has no nulls; with nulls, a copy in which they read
    as 0, NaN or False.
    """
    dtype = arr.type
    if pa.types.is_temporal(dtype) and not pa.types.is_interval(dtype):
        # Times travel as their integer storage: int32 for date32 and time32, else int64.
        narrow = pa.types.is_date32(dtype) or pa.types.is_time32(dtype)
        arr = arr.view(pa.int32() if narrow else pa.int64())
        dtype = arr.type
    if pa.types.is_boolean(dtype):
        # Arrow packs booleans into bits; torch needs bytes, so this one copies.
        filled = arr.fill_null(False) if arr.null_count else arr
        return torch.from_numpy(filled.to_numpy(zero_copy_only=False).copy())
    if dtype not in _TORCH_DTYPES:
        return None
    if arr.null_count:
        arr = arr.fill_null(float("nan") if pa.types.is_floating(dtype) else 0)
    return _primitive_view(arr, name)


def _int64(jt: JaggedTensor) -> JaggedTensor:
    return JaggedTensor(values=jt.values.long(), offsets=jt.offsets.long())


def _packed_view(
    names: list[str], arrays: list[pa.Array], rows: int, list_type: pa.DataType
) -> PackedSparse | None:
    """The 2 tensors of plain sparse features decoded from a packed frame, or None when the
    columns are not consecutive slices of one packed column (an unpacked frame, a re-batched
    remainder, nulls): then each feature gets its own views.

    ``list_type`` is the ``list<int32|int64>`` type every array has (the schema says so).
    Consecutive slices of one such column share one offsets and one values buffer and start
    ``B`` lists apart; that is checked per column (one ``buffers()`` call each, under 1 us),
    then the whole range is viewed once.
    """
    if not arrays or rows == 0:
        return None
    first = arrays[0]
    _, offsets_buf, _, values_buf = first.buffers()
    if offsets_buf is None or values_buf is None:
        return None
    start = first.offset
    for k, arr in enumerate(arrays):
        if arr.offset != start + k * rows or arr.null_count:
            return None
        if k:
            _, offsets_k, _, values_k = arr.buffers()
            if offsets_k is None or values_k is None:
                return None
            if offsets_k.address != offsets_buf.address or values_k.address != values_buf.address:
                return None
    child = first.values
    if child.null_count:
        return None
    count = len(arrays) * rows + 1
    if (start + count) * 4 > offsets_buf.size:
        raise FrameError(
            f"packed sparse offsets of {offsets_buf.size} bytes are too short for "
            f"{len(arrays)} features x {rows} rows; the frame is corrupted"
        )
    host = np.frombuffer(offsets_buf, dtype=np.int32, count=count, offset=start * 4)
    bounds = host[::rows].tolist()
    base = bounds[0]
    value_dtype = torch.int32 if list_type.value_type == pa.int32() else torch.int64
    values = _view(values_buf, value_dtype, child.offset + base, bounds[-1] - base)
    offsets = torch.frombuffer(
        memoryview(offsets_buf), dtype=torch.int32, count=count, offset=start * 4
    )
    if base:
        offsets = offsets - base
        bounds = [b - base for b in bounds]
    return PackedSparse(keys=list(names), values=values, offsets=offsets, bounds=bounds)


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
