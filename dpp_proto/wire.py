"""The frame contract: what a worker streams and a client decodes, defined once for both sides.

Owns every name of the data plane: the frame envelope (magic, prefix, section alignment, section
names), the "rows" section's columns, types and schema metadata, the dedup sections and their
inverse columns, and the functions that speak them: :class:`FrameEncoder` (the worker's half),
:func:`decode_frame` (the client's half), :func:`concat_rows` (joining pieces whose dedup
columns are dictionaries, on either side) and :func:`expand` (a deduplicated batch back to the
plain one). ``docs/architecture.md`` ("The wire") describes the layout; a protocol change is an
edit here and there, nowhere else.

Must never import grpc, torch, polars, ``dpp_server``, ``dpp_client`` or ``storage``: the worker
and the trainer's client both import it, and a trainer installs no server libraries. It imports
pyarrow, numpy (pyarrow's own companion, for index arithmetic) and the generated
``worker_pb2`` (the :class:`FrameHeader` message) only.

Worked example, one frame of split ``s`` with 4 rows and one dedup group ``user``:

1. The worker's pipeline yields the "rows" batch (``dense``, ``sparse.item``,
   ``dedup.user.inverse = [0, 0, 1, 0]``) and the section ``("dedup/user", unique)`` holding
   the group's 2 unique rows as ``sparse.<name>`` columns.
2. :meth:`FrameEncoder.encode` writes ``DPPF``, the header length, the ``FrameHeader`` (whose
   ``sections`` list names, offsets and lengths), then each section as an Arrow IPC stream at
   a 64-byte offset.
3. :func:`decode_frame` checks the envelope, reads both sections without copying and joins
   them: each feature of ``user`` becomes a ``dictionary<int32, large_list<int64>>`` column
   (dictionary: the unique rows; indices: the inverse), ``IKJT_TYPE``.
4. The client's assembler may join the short last batches of several splits with
   :func:`concat_rows`, which rebases each piece's indices past the dictionaries before it.

Thread-safety: everything here is a pure function or immutable, except :class:`FrameEncoder`'s
schema cache (see there).
"""

from __future__ import annotations

import ctypes
import json
import logging
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from dpp_proto import worker_pb2

__all__ = [
    "DEDUP_COLUMN_PREFIX",
    "DEDUP_SECTION_PREFIX",
    "DENSE_COLUMN",
    "EXTRA_PREFIX",
    "FRAME_MAGIC",
    "FRAME_PREFIX",
    "IKJT_TYPE",
    "INVERSE_TYPE",
    "LABEL_COLUMN",
    "LENGTHS_COLUMN",
    "METADATA_DEDUP",
    "METADATA_DENSE",
    "METADATA_KEYS",
    "METADATA_SPARSE",
    "PACKED_COLUMN",
    "ROWS_SECTION",
    "SECTION_ALIGNMENT",
    "SPARSE_PREFIX",
    "SPARSE_SECTION",
    "SPARSE_TYPE",
    "WEIGHT_COLUMN",
    "FrameEncoder",
    "SchemaMemo",
    "Section",
    "WireFormatError",
    "WireOptions",
    "assemble_wire_batch",
    "concat_rows",
    "decode_frame",
    "dedup_groups",
    "dedup_section",
    "dense_type",
    "expand",
    "feature_names",
    "inverse_column",
    "is_id_list_type",
    "pack_sparse",
    "passthrough_array",
    "passthrough_type",
    "reheaded",
    "unpack_sparse",
    "wire_schema",
]

_log = logging.getLogger(__name__)

# -- the envelope -------------------------------------------------------------------------------

#: The first 4 bytes of every frame.
FRAME_MAGIC = b"DPPF"
#: Magic, then the FrameHeader's length as a little-endian uint32.
FRAME_PREFIX = struct.Struct("<4sI")
#: Every section starts at a multiple of this (Arrow pads buffers to 8), so the client can view
#: every buffer as a tensor without copying.
SECTION_ALIGNMENT = 64
#: The section holding the batch's rows.
ROWS_SECTION = "rows"
#: ``dedup/<group>``: the unique rows of a deduplicated feature group.
DEDUP_SECTION_PREFIX = "dedup/"
#: The packed sparse features of "rows" (see :class:`WireOptions`).
SPARSE_SECTION = "sparse"
# An Arrow IPC stream ends with this 8-byte marker (continuation token, zero length).
_EOS_SIZE = 8
# Every Arrow IPC message starts with the continuation token and its metadata's length.
_IPC_PREFIX = struct.Struct("<Ii")
_IPC_CONTINUATION = 0xFFFFFFFF

# -- the "rows" section -------------------------------------------------------------------------

DENSE_COLUMN = "dense"
SPARSE_PREFIX = "sparse."
EXTRA_PREFIX = "extra."
LABEL_COLUMN = "label"
WEIGHT_COLUMN = "weight"
#: ``dedup.<group>.inverse``: a deduplicated group's inverse index in "rows".
DEDUP_COLUMN_PREFIX = "dedup."
METADATA_DENSE = b"dpp.dense"
METADATA_SPARSE = b"dpp.sparse"
METADATA_DEDUP = b"dpp.dedup"
SPARSE_TYPE = pa.large_list(pa.int64())
INVERSE_TYPE = pa.int32()
#: A dedup feature as the worker's pipeline builds it (and the client decodes the unpacked
#: per-feature layout): unique rows as the dictionary, the inverse as the indices. A packed
#: frame decodes to the same with ``list<int32>`` or ``list<int64>`` unique rows.
IKJT_TYPE = pa.dictionary(INVERSE_TYPE, SPARSE_TYPE)
#: A packed section's one column: K*B id lists, feature by feature (KeyedJaggedTensor order).
PACKED_COLUMN = "ids"
#: A packed section's schema metadata: JSON ``[[column name, its index in the unpacked
#: batch], ...]`` in packing order (the KeyedJaggedTensor's key order).
METADATA_KEYS = b"dpp.keys"
#: A packed section in the lengths layout (:class:`WireOptions` ``narrow_lengths``): its
#: second column, the K*B list lengths as ``list<uint8|uint16>`` of one row (nulls: null lists).
LENGTHS_COLUMN = "lengths"
_PACKED_TYPES = {
    np.dtype(np.int32): pa.list_(pa.field("item", pa.int32(), nullable=False)),
    np.dtype(np.int64): pa.list_(pa.field("item", pa.int64(), nullable=False)),
}
# The lengths layout's length types, narrowest first, with the longest list each holds.
_LENGTH_TYPES = (
    (np.dtype(np.uint8), pa.list_(pa.uint8())),
    (np.dtype(np.uint16), pa.list_(pa.uint16())),
)
_COMPRESSIONS = (None, "lz4", "zstd")

#: A frame section besides "rows": its name and its record batch.
Section = tuple[str, pa.RecordBatch]


_V = TypeVar("_V")


class SchemaMemo(Generic[_V]):
    """What decoding derived from recently seen schemas, found by equality (metadata
    included): a session's frames share one or a few schemas, so their plans are made once and
    each frame's work is only what differs between frames (buffers and row counts). Used by
    :func:`unpack_sparse` here and by the client's ``batch_from_arrow``.

    Thread-safe: ``_lock`` guards ``_entries`` (stream threads decode concurrently). Holds at
    most ``size`` entries, dropping the oldest.
    """

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: list[tuple[tuple[pa.Schema, ...], _V]] = []

    def get(self, key: tuple[pa.Schema, ...]) -> _V | None:
        with self._lock:
            for schemas, value in self._entries:
                if len(schemas) == len(key) and all(
                    a.equals(b, check_metadata=True) for a, b in zip(schemas, key, strict=True)
                ):
                    return value
        return None

    def put(self, key: tuple[pa.Schema, ...], value: _V) -> _V:
        with self._lock:
            self._entries.append((key, value))
            del self._entries[: -self._size]
        return value


class _IpcSchemas:
    """IPC schema messages already parsed, keyed by their bytes: a frame's sections then read
    only their record batch message (``pyarrow.ipc.read_record_batch``), not the schema again.

    Thread-safe: ``_lock`` guards ``_schemas``; at most ``size`` entries (cleared when full).
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._schemas: dict[bytes, tuple[pa.Schema, bool]] = {}

    def get(self, message: bytes) -> tuple[pa.Schema, bool]:
        """The schema and whether it has dictionary fields (whose batches need the stream
        reader, which reads the dictionary messages too)."""
        with self._lock:
            found = self._schemas.get(message)
        if found is not None:
            return found
        schema = pa.ipc.read_schema(pa.py_buffer(message))
        found = (schema, any(pa.types.is_dictionary(f.type) for f in schema))
        with self._lock:
            if len(self._schemas) >= self._size:
                self._schemas.clear()
            self._schemas[message] = found
        return found


_IPC_SCHEMAS = _IpcSchemas()


def is_id_list_type(dtype: pa.DataType) -> bool:
    """Whether ``dtype`` is a decoded sparse column's: a list or large list of int32 or
    int64 ids (int64 on the worker and in unpacked frames; packed frames may narrow)."""
    return (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)) and dtype.value_type in (
        pa.int32(),
        pa.int64(),
    )


class WireOptions:
    """How a session's frames are encoded; the decoder reads every combination.

    Attributes:
        packed: the KeyedJaggedTensor layout. The rows section's sparse columns (and each
            dedup section's) travel as one section holding one ``list<int32|int64>`` column
            ``ids`` of K*B lists, feature after feature, with int32 offsets, so the client
            views all sparse features of a batch as 2 tensors (values, offsets) and
            ``to_kjt()`` needs no copy. False: one ``large_list<int64>`` column per feature
            in the section itself (the layout before packing; older clients read only it).
        int32_features: sparse features whose ids fit int32
            (``dpp_server.spec.int32_features``). A packed section whose every feature is
            listed carries int32 ids (half the bytes); otherwise int64. Ignored unpacked.
        narrow_lengths: a packed section whose lists are all at most 255 (resp. 65535) ids
            long carries the K*B list lengths as uint8 (resp. uint16) instead of int32
            offsets (:func:`pack_sparse`, decided per batch from the data): 3 of every 4
            offset bytes saved (the DLRM job's 26 features: 78 bytes per row), for one
            ``cumsum`` per section on the client (about 60 us per 100k lists). False: always
            int32 offsets (the layout before; older clients read only it). Ignored unpacked.
        compression: None, ``"lz4"`` or ``"zstd"``: Arrow IPC buffer compression of every
            section. Pays only on links slower than the client can decompress (about
            1 Gbit/s; ``docs/benchmarks.md``); costs worker and trainer CPU and the client's
            zero-copy views (decompressed buffers are fresh allocations).

    Immutable, so safe to share between threads.
    """

    __slots__ = ("compression", "int32_features", "narrow_lengths", "packed")

    def __init__(
        self,
        *,
        packed: bool = True,
        int32_features: frozenset[str] = frozenset(),
        narrow_lengths: bool = True,
        compression: str | None = None,
    ) -> None:
        if compression not in _COMPRESSIONS:
            raise ValueError(
                f"wire compression {compression!r} is not one of {_COMPRESSIONS}; use lz4 or "
                "zstd, or none"
            )
        self.packed = packed
        self.int32_features = frozenset(int32_features)
        self.narrow_lengths = narrow_lengths
        self.compression = compression

    def __repr__(self) -> str:
        return (
            f"WireOptions(packed={self.packed}, int32_features={sorted(self.int32_features)}, "
            f"narrow_lengths={self.narrow_lengths}, compression={self.compression!r})"
        )


class WireFormatError(ValueError):
    """Bytes or a record batch that do not follow this contract (bad magic, truncated, a bad
    section or metadata). Means a version mismatch or corruption, never a user error; the
    client raises it to trainers as ``dpp_client.FrameError``."""


def inverse_column(group: str) -> str:
    """The rows section's column holding a deduplicated group's inverse index."""
    return f"{DEDUP_COLUMN_PREFIX}{group}.inverse"


def dedup_section(group: str) -> str:
    """The frame section holding a deduplicated group's unique rows."""
    return DEDUP_SECTION_PREFIX + group


def passthrough_type(dtype: pa.DataType) -> pa.DataType:
    """The wire type of a passthrough column whose table type is ``dtype``: the contract.

    Each type family travels as one type, so files whose column types differ within a family
    (int32 in one partition, int64 in the next; string and large_string) give batches of one
    schema without the master telling workers anything. Every mapping is lossless:

    * dictionary: its value type, decoded, then as below;
    * any integer: int64 (uint64 keeps its bit pattern, as sparse ids do);
    * any float: float64; boolean: boolean;
    * string, large_string, string_view: large_string; binary kinds: large_binary;
    * list, large_list and list views: large_list of the item's wire type;
    * anything else (timestamps, dates, times, durations, decimals, structs, maps, fixed-size
      lists): unchanged, so two files that disagree there cannot share a session.

    ``dpp_server.spec.check_drift`` refuses a session whose files give one passthrough column
    two different wire types; ``docs/tables.md`` states the contract for users.
    """
    if pa.types.is_dictionary(dtype):
        return passthrough_type(dtype.value_type)
    if pa.types.is_integer(dtype):
        return pa.int64()
    if pa.types.is_floating(dtype):
        return pa.float64()
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or _is_view(dtype, "string"):
        return pa.large_string()
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or _is_view(dtype, "binary"):
        return pa.large_binary()
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or _is_list_view(dtype):
        return pa.large_list(passthrough_type(dtype.value_type))
    return dtype


def _is_view(dtype: pa.DataType, kind: str) -> bool:
    check = getattr(pa.types, f"is_{kind}_view", None)
    return bool(check is not None and check(dtype))


def _is_list_view(dtype: pa.DataType) -> bool:
    return _is_view(dtype, "list") or _is_view(dtype, "large_list")


def passthrough_array(array: pa.Array) -> pa.Array:
    """``array`` (a passthrough column as read from the table) as its wire type
    (:func:`passthrough_type`); the array itself when it already is (no copy)."""
    target = passthrough_type(array.type)
    if array.type == target:
        return array
    # Every cast here widens, so an unsafe cast loses nothing; it keeps uint64 bit patterns.
    return array.cast(target, safe=False)


def dense_type(width: int) -> pa.DataType:
    """The ``dense`` column's type for ``width`` dense features."""
    return pa.list_(pa.field("item", pa.float32(), nullable=False), width)


def wire_schema(
    dense_names: Sequence[str],
    sparse_names: Sequence[str],
    *,
    label: bool,
    weight: bool,
    extra: Mapping[str, pa.DataType],
) -> pa.Schema:
    """Builds the "rows" schema of a session without dedup groups.

    Args:
        dense_names: dense feature names in spec order.
        sparse_names: sparse feature names in spec order.
        label: whether batches carry a ``label`` column.
        weight: whether batches carry a ``weight`` column.
        extra: passthrough column name to its wire type (:func:`passthrough_type` of its
            table type), in spec order.

    Returns:
        The schema every wire batch of the session has, metadata included.
    """
    fields: list[pa.Field] = []
    if dense_names:
        fields.append(pa.field(DENSE_COLUMN, dense_type(len(dense_names)), nullable=False))
    fields.extend(pa.field(SPARSE_PREFIX + n, SPARSE_TYPE, nullable=False) for n in sparse_names)
    if label:
        fields.append(pa.field(LABEL_COLUMN, pa.float32(), nullable=False))
    if weight:
        fields.append(pa.field(WEIGHT_COLUMN, pa.float32(), nullable=False))
    fields.extend(pa.field(EXTRA_PREFIX + n, t) for n, t in extra.items())
    metadata = {
        METADATA_DENSE: json.dumps(list(dense_names)).encode(),
        METADATA_SPARSE: json.dumps(list(sparse_names)).encode(),
    }
    return pa.schema(fields, metadata=metadata)


def assemble_wire_batch(
    schema: pa.Schema,
    dense: npt.NDArray[np.float32] | None,
    columns: Sequence[pa.Array],
) -> pa.RecordBatch:
    """Packs computed columns into one wire batch.

    Args:
        schema: from :func:`wire_schema`.
        dense: a C-contiguous float32 [B, D] array, or None when D == 0. Its buffer becomes
            the ``dense`` column's values without a copy.
        columns: the remaining columns in schema order, already of their wire types, with no
            nulls where the schema says not null.

    Returns:
        The record batch with exactly ``schema``.

    Raises:
        ValueError: ``dense`` is not C-contiguous float32 (a caller bug: the client reads the
            buffer as row-major).
    """
    arrays: list[pa.Array] = []
    if dense is not None:
        if dense.dtype != np.float32 or dense.ndim != 2 or not dense.flags.c_contiguous:
            raise ValueError(
                f"dense block must be C-contiguous float32 [B, D], got {dense.dtype} "
                f"shape {dense.shape}"
            )
        values = pa.array(dense.reshape(-1), type=pa.float32())
        arrays.append(
            pa.FixedSizeListArray.from_arrays(values, type=schema.field(DENSE_COLUMN).type)
        )
    arrays.extend(columns)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def feature_names(schema: pa.Schema, key: bytes) -> list[str] | None:
    """The feature names a schema's metadata ``key`` (``METADATA_DENSE`` or ``METADATA_SPARSE``)
    lists, or None when the key is absent.

    Raises:
        WireFormatError: the value is not a JSON list of strings.
    """
    raw = (schema.metadata or {}).get(key)
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WireFormatError(
            f"schema metadata {key.decode()} is not a JSON list of names: {raw!r}"
        )
    return names


def dedup_groups(schema: pa.Schema, where: str = "record batch") -> dict[str, list[str]]:
    """The dedup groups a schema's ``dpp.dedup`` metadata names (``{group: [features]}``, in
    spec order); empty when absent.

    Raises:
        WireFormatError: the value is not a JSON object of name lists; the message starts with
            ``where``.
    """
    raw = (schema.metadata or {}).get(METADATA_DEDUP)
    if raw is None:
        return {}
    try:
        groups = json.loads(raw)
    except ValueError as exc:
        raise WireFormatError(f"{where}: schema metadata dpp.dedup is not JSON: {raw!r}") from exc
    if not isinstance(groups, dict) or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in groups.values()
    ):
        raise WireFormatError(
            f"{where}: schema metadata dpp.dedup is not {{group: [names]}}: {raw!r}"
        )
    return groups


# -- encoding (the worker's half) ---------------------------------------------------------------


def _aligned(n: int) -> int:
    return (n + SECTION_ALIGNMENT - 1) // SECTION_ALIGNMENT * SECTION_ALIGNMENT


_ZEROS = bytes(SECTION_ALIGNMENT)

if sys.implementation.name == "cpython":
    # PyBytes_FromStringAndSize(NULL, n) is CPython's documented way to get a bytes object
    # whose contents are "uninitialized", for the caller to fill before anyone else sees it
    # (what C extensions do, and what bytes(n) does after its memset).
    _bytes_uninitialized = ctypes.pythonapi.PyBytes_FromStringAndSize
    _bytes_uninitialized.restype = ctypes.py_object
    _bytes_uninitialized.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    _bytes_address = ctypes.pythonapi.PyBytes_AsString
    _bytes_address.restype = ctypes.c_void_p
    _bytes_address.argtypes = (ctypes.py_object,)

    def _new_frame(size: int) -> tuple[bytes | bytearray, pa.Buffer]:
        """A fresh, uninitialized ``bytes`` of ``size`` bytes and a writable Arrow view of it.

        The caller must write every byte before the object escapes (bytes are immutable to
        everyone else; its hash is computed lazily, so none is cached yet)."""
        frame: bytes = _bytes_uninitialized(None, size)
        view = (ctypes.c_char * size).from_address(_bytes_address(frame))
        return frame, pa.py_buffer(view)

else:  # pragma: no cover - other interpreters: a zeroed bytearray, copied once at the end

    def _new_frame(size: int) -> tuple[bytes | bytearray, pa.Buffer]:
        frame = bytearray(size)
        return frame, pa.py_buffer(frame)


def reheaded(
    frame: bytes, session_id: str, epoch: int, rank: int
) -> tuple[bytes, worker_pb2.FrameHeader] | None:
    """The same frame addressed to another (session, epoch, rank), and its new header: the
    header is parsed, those three fields replaced, and the sections copied as they are (one
    copy, no encoding). Byte-identical to encoding the batch again for that stream.

    For a worker serving one production to several sessions (spec ``share``). None when the
    new header does not end in the same 64-byte slot as the old one (e.g. a rank past 127
    where the old was below): the caller encodes the batch again.
    """
    magic, length = FRAME_PREFIX.unpack_from(frame)
    if magic != FRAME_MAGIC:
        raise WireFormatError(f"not a frame: magic {magic!r}, expected {FRAME_MAGIC!r}")
    header = worker_pb2.FrameHeader()
    header.ParseFromString(frame[FRAME_PREFIX.size : FRAME_PREFIX.size + length])
    header.session_id, header.epoch, header.rank = session_id, epoch, rank
    body = header.SerializeToString()
    head = FRAME_PREFIX.pack(FRAME_MAGIC, len(body)) + body
    if not header.sections:
        return head, header
    start = header.sections[0].offset
    if _aligned(len(head)) != start:
        return None
    return b"".join((head, bytes(start - len(head)), memoryview(frame)[start:])), header


class FrameEncoder:
    """Encodes the frames of one session.

    Why this shape: each section's size is known before anything is written
    (``pa.ipc.get_record_batch_size`` walks the buffers without copying them), so Arrow writes
    every section straight into the frame: a ``bytes`` object allocated uninitialized
    (:func:`_new_frame`), because gRPC's raw-bytes path (a handler registered with
    ``response_serializer=None``) takes ``bytes`` only (``bytearray`` and ``memoryview`` are
    refused with a TypeError in grpcio 1.85). Every byte is written exactly once, padding
    included, so no zero-fill and no second copy (``docs/worker-efficiency.md`` has the
    numbers).

    Every frame carries its sections' schemas so that each frame decodes on its own; the
    encoder keeps the last schema it serialized per section, so a session's frames serialize
    each once. Thread-safe: each cache entry is one tuple, replaced atomically.
    """

    def __init__(self, options: WireOptions | None = None) -> None:
        self.options = options or WireOptions()
        self._write_options = pa.ipc.IpcWriteOptions(compression=self.options.compression)
        # Section name to (schema, its serialized IPC message).
        self._schemas: dict[str, tuple[pa.Schema, pa.Buffer]] = {}

    def _schema_message(self, name: str, schema: pa.Schema) -> pa.Buffer:
        cached = self._schemas.get(name)
        if cached is not None and cached[0].equals(schema, check_metadata=True):
            return cached[1]
        message = schema.serialize()
        self._schemas[name] = (schema, message)
        return message

    @staticmethod
    def encode_empty(header: worker_pb2.FrameHeader) -> bytes:
        """A frame without rows: an end-of-split marker or an error report."""
        del header.sections[:]
        body = header.SerializeToString()
        return FRAME_PREFIX.pack(FRAME_MAGIC, len(body)) + body

    def encode(
        self,
        header: worker_pb2.FrameHeader,
        batch: pa.RecordBatch | None,
        sections: Sequence[Section] = (),
    ) -> bytes:
        """Returns one frame: prefix, header, and (when ``batch`` is given) a "rows" section
        holding an Arrow IPC stream of the schema and the batch, then one more section per
        entry of ``sections`` (``(name, batch)``, e.g. ``dedup/<group>``), each starting at a
        64-byte offset. ``header.sections`` is filled in here."""
        if batch is None:
            return self.encode_empty(header)
        del header.sections[:]
        batches = [(ROWS_SECTION, batch), *sections]
        if self.options.packed:
            batches = self._pack(batches)
        written: list[pa.Buffer | None]
        if self.options.compression is None:
            schemas = [self._schema_message(name, b.schema) for name, b in batches]
            lengths = [
                schema.size + pa.ipc.get_record_batch_size(b) + _EOS_SIZE
                for (_, b), schema in zip(batches, schemas, strict=True)
            ]
            written = [None] * len(batches)
        else:  # compressed sizes are known only once written
            written = [self._write_compressed(b) for _, b in batches]
            lengths = [w.size for w in written if w is not None]
        entries = [
            header.sections.add(name=name, length=length)
            for (name, _), length in zip(batches, lengths, strict=True)
        ]
        offset = SECTION_ALIGNMENT
        while True:  # the header's length depends on the offsets' varints, and they on it
            position = offset
            for entry in entries:
                entry.offset = position
                position = _aligned(position + entry.length)
            body = header.SerializeToString()
            needed = _aligned(FRAME_PREFIX.size + len(body))
            if needed <= offset:
                break
            offset = needed
        size = entries[-1].offset + entries[-1].length
        frame, target = _new_frame(size)
        sink = pa.FixedSizeBufferWriter(target)
        sink.write(FRAME_PREFIX.pack(FRAME_MAGIC, len(body)) + body)
        for entry, (_, b), done in zip(entries, batches, written, strict=True):
            sink.write(_ZEROS[: entry.offset - sink.tell()])  # padding: below 64 bytes
            if done is not None:
                sink.write(done)
                continue
            with pa.ipc.new_stream(sink, b.schema) as writer:
                writer.write_batch(b)
            if sink.tell() != entry.offset + entry.length:
                raise RuntimeError(
                    f"section {entry.name!r} took {sink.tell() - entry.offset} bytes, "
                    f"{entry.length} were planned; pyarrow's IPC sizes changed: fix "
                    "dpp_proto/wire.py"
                )
        del sink, target  # the frame escapes only after its last byte is written
        return frame if isinstance(frame, bytes) else bytes(frame)

    def _write_compressed(self, batch: pa.RecordBatch) -> pa.Buffer:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema, options=self._write_options) as writer:
            writer.write_batch(batch)
        return sink.getvalue()

    def _pack(self, batches: list[Section]) -> list[Section]:
        """The packed layout (:class:`WireOptions`) of the rows and each dedup section."""
        narrow = self.options.int32_features
        lengths = self.options.narrow_lengths
        rows, packed = pack_sparse(
            batches[0][1], narrow, keep_one_column=True, narrow_lengths=lengths
        )
        out: list[Section] = [(ROWS_SECTION, rows)]
        if packed is not None:
            out.append((SPARSE_SECTION, packed))
        for name, section in batches[1:]:
            if name.startswith(DEDUP_SECTION_PREFIX):
                rest, packed = pack_sparse(
                    section, narrow, keep_one_column=False, narrow_lengths=lengths
                )
                if packed is not None and rest.num_columns == 0:
                    section = packed
            out.append((name, section))
        return out


def pack_sparse(
    batch: pa.RecordBatch,
    int32_features: frozenset[str],
    *,
    keep_one_column: bool,
    narrow_lengths: bool = False,
) -> tuple[pa.RecordBatch, pa.RecordBatch | None]:
    """Splits ``batch``'s ``sparse.<name>`` id-list columns off into one packed batch.

    The packed batch has one column :data:`PACKED_COLUMN` of ``K * B`` lists (feature 0's
    ``B`` rows, then feature 1's, ...), int32 offsets from 0, and int32 ids when every
    feature is in ``int32_features`` (else int64); :data:`METADATA_KEYS` records each column's
    name, index and nullability so :func:`unpack_sparse` restores ``batch`` exactly. One copy
    of the ids (they come from K separate arrays).

    The lengths layout (``narrow_lengths`` and every list at most 65535 ids long): the
    packed batch has ONE row and two columns instead, because Arrow lists need int32 offsets
    and a record batch equal column lengths: :data:`PACKED_COLUMN` holds all ``N`` ids as one
    list, :data:`LENGTHS_COLUMN` the ``K * B`` list lengths as one ``list<uint8>`` (every
    list at most 255 long) or ``list<uint16>``, a null length marking a null list. The
    schema alone tells the layouts apart.

    Args:
        batch: a rows batch or a dedup section.
        int32_features: feature names (without ``sparse.``) whose ids fit int32.
        keep_one_column: leave the batch unpacked rather than without columns (a record
            batch without columns would lose its row count).
        narrow_lengths: use the lengths layout where this batch's lists allow it.

    Returns:
        ``(batch without those columns, packed)``, or ``(batch, None)`` when nothing packs.

    Raises:
        ValueError: a list holds null ids, or the batch holds 2**31 ids or more (int32
            offsets; a frame that large is past every message limit anyway).
    """
    schema = batch.schema
    picked = [
        i
        for i, f in enumerate(schema)
        if f.name.startswith(SPARSE_PREFIX) and is_id_list_type(f.type)
    ]
    if not picked or (keep_one_column and len(picked) == batch.num_columns):
        return batch, None
    rows = batch.num_rows
    narrow = all(schema.field(i).name[len(SPARSE_PREFIX) :] in int32_features for i in picked)
    dtype = np.dtype(np.int32 if narrow else np.int64)
    offsets = np.empty(len(picked) * rows + 1, dtype=np.int32)
    offsets[0] = 0
    parts: list[np.ndarray] = []
    masks: list[np.ndarray] | None = None
    base = 0
    for k, i in enumerate(picked):
        column = batch.column(i)
        own = column.offsets.to_numpy()
        first, last = int(own[0]), int(own[-1])
        values = column.values.slice(first, last - first)
        if values.null_count:
            raise ValueError(
                f"{schema.field(i).name} holds {values.null_count} null ids; the pipeline "
                "drops null ids before encoding"
            )
        if base + last - first >= 2**31:
            raise ValueError(f"a batch of {rows} rows holds 2**31 ids or more; cut smaller")
        np.add(
            own[1:], base - first, out=offsets[k * rows + 1 : (k + 1) * rows + 1], casting="unsafe"
        )
        base += last - first
        parts.append(values.to_numpy())
        if column.null_count:
            masks = masks if masks is not None else [np.zeros(rows, bool)] * k
        if masks is not None:
            masks.append(column.is_null().to_numpy(zero_copy_only=False))
    flat = np.concatenate(parts, dtype=dtype, casting="unsafe") if parts else np.empty(0, dtype)
    mask = None if masks is None else np.concatenate(masks)
    keys = [[schema.field(i).name, i, schema.field(i).nullable] for i in picked]
    metadata = {METADATA_KEYS: json.dumps(keys).encode()}
    lengths = _narrow_lengths(offsets) if narrow_lengths else None
    if lengths is not None:
        # One list each: the offsets buffers are [0, N] and [0, K*B], 8 bytes apiece.
        packed = pa.RecordBatch.from_arrays(
            [
                pa.ListArray.from_arrays(
                    pa.array(np.array([0, len(flat)], np.int32)),
                    pa.array(flat),
                    type=_PACKED_TYPES[dtype],
                ),
                pa.ListArray.from_arrays(
                    pa.array(np.array([0, len(lengths)], np.int32)),
                    pa.array(lengths, mask=mask),
                    type=dict(_LENGTH_TYPES)[lengths.dtype],
                ),
            ],
            schema=pa.schema(
                [
                    pa.field(PACKED_COLUMN, _PACKED_TYPES[dtype], nullable=False),
                    pa.field(LENGTHS_COLUMN, dict(_LENGTH_TYPES)[lengths.dtype], nullable=False),
                ],
                metadata=metadata,
            ),
        )
    else:
        ids = pa.ListArray.from_arrays(
            pa.array(offsets),
            pa.array(flat),
            type=_PACKED_TYPES[dtype],
            mask=None if mask is None else pa.array(mask),
        )
        packed = pa.RecordBatch.from_arrays(
            [ids],
            schema=pa.schema(
                [pa.field(PACKED_COLUMN, ids.type, nullable=mask is not None)], metadata=metadata
            ),
        )
    kept = [i for i in range(batch.num_columns) if i not in set(picked)]
    rest = pa.RecordBatch.from_arrays(
        [batch.column(i) for i in kept],
        schema=pa.schema([schema.field(i) for i in kept], metadata=schema.metadata),
    )
    return rest, packed


def _narrow_lengths(offsets: npt.NDArray[np.int32]) -> npt.NDArray[np.unsignedinteger] | None:
    """The list lengths ``offsets`` stand for in the narrowest type of :data:`_LENGTH_TYPES`
    that holds the longest, or None when one is longer than all of them allow (a null list's
    length is its extent, as in the offsets, so both layouts decode to the same arrays)."""
    lengths = np.diff(offsets)
    longest = int(lengths.max()) if len(lengths) else 0
    for dtype, _ in _LENGTH_TYPES:
        if longest <= np.iinfo(dtype).max:
            return lengths.astype(dtype)
    return None


@dataclass(frozen=True)
class _UnpackPlan:
    """How a packed section goes back into its rows: the unpacked schema, and for each of its
    columns either a column of ``rest`` (``>= 0``) or packed feature ``k`` (``-1 - k``);
    ``lengths``: the section is in the lengths layout (:func:`pack_sparse`)."""

    schema: pa.Schema
    sources: tuple[int, ...]
    count: int
    lengths: bool


_UNPACK_PLANS: SchemaMemo[_UnpackPlan] = SchemaMemo()


def _unpack_plan(rest: pa.Schema | None, packed: pa.Schema, where: str) -> _UnpackPlan:
    """The plan of :func:`unpack_sparse` for these schemas (validated once per schema pair).

    Raises:
        WireFormatError: the packed schema does not follow :func:`pack_sparse`.
    """
    key = (packed,) if rest is None else (packed, rest)
    plan = _UNPACK_PLANS.get(key)
    if plan is not None:
        return plan
    raw = (packed.metadata or {}).get(METADATA_KEYS)
    try:
        keys = json.loads(raw) if raw is not None else None
        keys = [(str(n), int(i), bool(nullable)) for n, i, nullable in keys]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise WireFormatError(
            f"{where}: packed sparse metadata is not [[name, index, nullable], ...]: {raw!r}"
        ) from exc
    lengths = len(packed) == 2
    if lengths:
        ids_type, lengths_type = packed.field(0).type, packed.field(1).type
        if (
            packed.names != [PACKED_COLUMN, LENGTHS_COLUMN]
            or not pa.types.is_list(ids_type)
            or not is_id_list_type(ids_type)
            or lengths_type not in [t for _, t in _LENGTH_TYPES]
        ):
            raise WireFormatError(
                f"{where}: a packed sparse section in the lengths layout holds the columns "
                f"{PACKED_COLUMN!r} (list<int32|int64>) and {LENGTHS_COLUMN!r} "
                f"(list<uint8|uint16>), not {packed}"
            )
    elif len(packed) != 1 or not is_id_list_type(packed.field(0).type):
        raise WireFormatError(
            f"{where}: a packed sparse section holds one list<int32|int64> column "
            f"{PACKED_COLUMN!r}, not {packed}"
        )
    ids_type = packed.field(0).type
    fields = list(rest) if rest is not None else []
    sources = list(range(len(fields)))
    total = len(fields) + len(keys)
    if sorted(i for _, i, _ in keys) != sorted(set(i for _, i, _ in keys)) or any(
        not 0 <= i < total for _, i, _ in keys
    ):
        raise WireFormatError(f"{where}: packed sparse indices {keys} do not fit {total} columns")
    for k, (name, index, nullable) in sorted(enumerate(keys), key=lambda e: e[1][1]):
        fields.insert(index, pa.field(name, ids_type, nullable=nullable))
        sources.insert(index, -1 - k)
    metadata = rest.metadata if rest is not None else None
    plan = _UnpackPlan(pa.schema(fields, metadata=metadata), tuple(sources), len(keys), lengths)
    return _UNPACK_PLANS.put(key, plan)


def unpack_sparse(
    rest: pa.RecordBatch | None, packed: pa.RecordBatch, rows: int | None, where: str
) -> pa.RecordBatch:
    """The inverse of :func:`pack_sparse`: ``rest`` with each packed feature back at its
    index, as a zero-copy slice of the packed column (so every feature's column shares one
    values and one offsets buffer: ``dpp_client.batch`` views them as 2 tensors).

    The schema work (metadata, positions, the unpacked schema) is done once per schema pair
    and remembered; a frame costs one slice per feature and one ``from_arrays``.

    Args:
        rest: the other columns (the rows section), or None (a dedup section: ``rows`` is
            then the packed length over K).
        packed: the packed batch.
        rows: rows per feature (the frame's ``num_rows``), or None (see ``rest``).
        where: the frame, for error messages.

    Raises:
        WireFormatError: the packed batch does not follow :func:`pack_sparse`.
    """
    plan = _unpack_plan(None if rest is None else rest.schema, packed.schema, where)
    ids = _ids_from_lengths(packed, where) if plan.lengths else packed.column(0)
    count = plan.count
    if rows is None:
        rows = len(ids) // count if count else 0
    if len(ids) != count * rows:
        raise WireFormatError(
            f"{where}: packed sparse section holds {len(ids)} lists, expected {count} "
            f"features x {rows} rows"
        )
    columns = rest.columns if rest is not None else []
    arrays = [columns[i] if i >= 0 else ids.slice((-1 - i) * rows, rows) for i in plan.sources]
    return pa.RecordBatch.from_arrays(arrays, schema=plan.schema)


def _only_list(column: pa.ListArray) -> pa.Array:
    """The values of a one-row list column, a zero-copy slice (``flatten`` costs twice as
    much); its offsets were checked by the section's full validation."""
    start, end = np.frombuffer(
        column.buffers()[1], dtype=np.int32, count=2, offset=column.offset * 4
    ).tolist()
    return column.values.slice(start, end - start)


def _ids_from_lengths(packed: pa.RecordBatch, where: str) -> pa.ListArray:
    """The K*B id lists of a packed section in the lengths layout, as the offsets layout
    carries them (``list<int32|int64>`` with int32 offsets from 0, the ids not copied):
    the offsets are rebuilt once, a ``cumsum`` of the lengths into a fresh int32 buffer.

    Memory safety against a hostile worker: the section passed Arrow's full validation
    (buffer sizes, the two one-row lists' offsets), the schema was checked by
    :func:`_unpack_plan`; here the lengths must sum to exactly the number of ids (in int64
    where an int32 sum could wrap), so every rebuilt offset lies within the ids.

    Raises:
        WireFormatError: not one row, a null list, null ids, or lengths that do not sum to
            the number of ids.
    """
    if packed.num_rows != 1:
        raise WireFormatError(
            f"{where}: a packed sparse section in the lengths layout holds one row, not "
            f"{packed.num_rows}"
        )
    ids_list, lengths_list = packed.column(0), packed.column(1)
    if ids_list.null_count or lengths_list.null_count:
        raise WireFormatError(f"{where}: the packed sparse section's one row is null")
    values = _only_list(ids_list)
    lengths = _only_list(lengths_list)
    if values.null_count:
        raise WireFormatError(
            f"{where}: the packed sparse section holds {values.null_count} null ids"
        )
    count = len(lengths)
    narrow = lengths.type == pa.uint8()
    dtype = np.dtype(np.uint8 if narrow else np.uint16)
    longest = 255 if narrow else 65535
    data = lengths.buffers()[1]
    host = (
        np.frombuffer(data, dtype=dtype, count=count, offset=lengths.offset * dtype.itemsize)
        if count
        else np.zeros(0, dtype)
    )
    total = len(values)
    if count * longest >= 2**31:  # the int32 sum could wrap: sum exactly first
        summed = int(host.sum(dtype=np.int64))
        if summed != total:
            raise WireFormatError(
                f"{where}: the packed sparse section's {count} lengths sum to {summed} ids, "
                f"but it holds {total}"
            )
    offsets = np.empty(count + 1, dtype=np.int32)
    offsets[0] = 0
    np.cumsum(host, dtype=np.int32, out=offsets[1:])
    if offsets[-1] != total:
        raise WireFormatError(
            f"{where}: the packed sparse section's {count} lengths sum to {int(offsets[-1])} "
            f"ids, but it holds {total}"
        )
    return pa.ListArray.from_arrays(
        int32_array(offsets),
        values,
        type=ids_list.type,
        mask=lengths.is_null() if lengths.null_count else None,
    )


def int32_array(values: npt.NDArray[np.int32]) -> pa.Array:
    """``values`` as an Arrow int32 array, zero-copy. Not ``pa.array(values)``: its first
    call in a process imports ``numpy.ma`` (30-170 ms of CPU, seen as the trainer's first
    decoded frame costing 100 ms), which the client's decoding otherwise never needs."""
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


# -- decoding (the client's half) ---------------------------------------------------------------


def decode_frame(buf: bytes) -> tuple[worker_pb2.FrameHeader, pa.RecordBatch | None]:
    """Parses one frame into its header and, when it carries rows, its Arrow record batch.

    Decoding is zero copy: the batch's buffers point into ``buf``, which the batch keeps
    alive. Dedup sections are joined into the rows (see the module docstring); a group sent
    plain in this batch (auto mode) becomes the same dictionary type with indices ``0..B-1``,
    so every decoded batch of a session has one schema.

    Args:
        buf: one StreamBatches response message, exactly as received.

    Returns:
        ``(header, batch)``. ``batch`` is None for frames without a "rows" section: a split's
        end marker (``num_rows == 0``) or an error frame (``header.error`` set). The caller
        decides what an error frame means; decoding it is not a failure.

    Raises:
        WireFormatError: bad magic, a truncated header or section, a section outside the
            frame, a reserved section that cannot be interpreted, or a row count that
            disagrees with the header.
    """
    view = memoryview(buf)
    size = len(view)
    if size < FRAME_PREFIX.size:
        raise WireFormatError(
            f"frame of {size} bytes is shorter than its {FRAME_PREFIX.size}-byte prefix; the "
            "stream is corrupted or the server speaks another protocol"
        )
    magic, header_len = FRAME_PREFIX.unpack_from(view, 0)
    if magic != FRAME_MAGIC:
        raise WireFormatError(
            f"frame starts with {bytes(magic)!r}, expected {FRAME_MAGIC!r}; the server speaks "
            "another protocol (check that client and server versions match)"
        )
    header_end = FRAME_PREFIX.size + header_len
    if header_end > size:
        raise WireFormatError(
            f"frame header claims {header_len} bytes but only {size - FRAME_PREFIX.size} "
            "follow the prefix; the message was truncated"
        )
    header = worker_pb2.FrameHeader()
    try:
        header.ParseFromString(bytes(view[FRAME_PREFIX.size : header_end]))
    except Exception as exc:  # protobuf raises DecodeError, whose import path varies
        raise WireFormatError(
            f"frame header ({header_len} bytes) is not a FrameHeader: {exc}"
        ) from exc

    batch: pa.RecordBatch | None = None
    packed: pa.RecordBatch | None = None
    dedup: dict[str, pa.RecordBatch] = {}
    for section in header.sections:
        end = section.offset + section.length
        if section.offset < header_end or end > size:
            raise WireFormatError(
                f"section {section.name!r} of split {header.split_id} seq {header.batch_seq} "
                f"spans [{section.offset}, {end}) outside the frame's body "
                f"[{header_end}, {size}); the message was truncated or mis-encoded"
            )
        if section.name == ROWS_SECTION:
            batch = _read_single_batch(view[section.offset : end], header)
        elif section.name == SPARSE_SECTION:
            packed = _read_single_batch(view[section.offset : end], header, section.name)
        elif section.name.startswith(DEDUP_SECTION_PREFIX):
            group = section.name[len(DEDUP_SECTION_PREFIX) :]
            dedup[group] = _read_single_batch(view[section.offset : end], header, section.name)
        else:
            _log.debug("ignoring unknown frame section %r", section.name)

    where = f"frame of split {header.split_id} seq {header.batch_seq}"
    if packed is not None:
        if batch is None:
            raise WireFormatError(f"{where} carries a packed sparse section but no rows")
        batch = unpack_sparse(batch, packed, batch.num_rows, where)
    for group, unique in dedup.items():
        if METADATA_KEYS in (unique.schema.metadata or {}):
            dedup[group] = unpack_sparse(None, unique, None, f"{where}, {dedup_section(group)}")
    if batch is not None and batch.num_rows != header.num_rows:
        raise WireFormatError(
            f"frame of split {header.split_id} seq {header.batch_seq} says num_rows="
            f"{header.num_rows} but its rows section holds {batch.num_rows} rows"
        )
    if batch is None and header.num_rows != 0 and not header.error:
        raise WireFormatError(
            f"frame of split {header.split_id} seq {header.batch_seq} says num_rows="
            f"{header.num_rows} but has no {ROWS_SECTION!r} section"
        )
    if batch is not None and (dedup or METADATA_DEDUP in (batch.schema.metadata or {})):
        batch = _join_dedup(batch, dedup, header)
    elif dedup:
        raise WireFormatError(
            f"frame of split {header.split_id} seq {header.batch_seq} carries sections "
            f"{sorted(dedup)} but no rows to join them to"
        )
    return header, batch


def _join_dedup(
    rows: pa.RecordBatch, dedup: dict[str, pa.RecordBatch], header: worker_pb2.FrameHeader
) -> pa.RecordBatch:
    """Replaces each dedup group's columns with ``IKJT_TYPE`` ones (unique rows as the
    dictionary, the inverse as indices, bounds-checked); see :func:`decode_frame`."""
    where = f"frame of split {header.split_id} seq {header.batch_seq}"
    groups = dedup_groups(rows.schema, where)
    unknown = sorted(set(dedup) - set(groups))
    if unknown:
        raise WireFormatError(f"{where}: sections for unknown dedup groups {unknown}")
    dropped: set[str] = set()
    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []
    plain_inverse: pa.Array | None = None
    for group, names in groups.items():
        columns = [SPARSE_PREFIX + n for n in names]
        unique = dedup.get(group)
        if unique is not None:
            inverse_name = inverse_column(group)
            index = rows.schema.get_field_index(inverse_name)
            if index < 0 or rows.schema.field(index).type != INVERSE_TYPE:
                raise WireFormatError(
                    f"{where}: section {dedup_section(group)} without int32 {inverse_name!r}"
                )
            inverse = rows.column(index)
            dropped.add(inverse_name)
            source = unique
        else:
            if plain_inverse is None:
                plain_inverse = int32_array(np.arange(rows.num_rows, dtype=np.int32))
            inverse = plain_inverse
            source = rows
            dropped.update(columns)
        for column in columns:
            index = source.schema.get_field_index(column)
            if index < 0:
                raise WireFormatError(f"{where}: dedup group {group!r} lacks column {column!r}")
            try:
                joined = pa.DictionaryArray.from_arrays(inverse, source.column(index), safe=True)
            except (pa.ArrowException, IndexError) as exc:  # an index past the unique rows
                raise WireFormatError(
                    f"{where}: bad inverse of dedup group {group!r}: {exc}"
                ) from exc
            if not is_id_list_type(joined.type.value_type):
                raise WireFormatError(
                    f"{where}: {column!r} has type {joined.type}, expected {IKJT_TYPE}"
                )
            fields.append(pa.field(column, joined.type, nullable=False))
            arrays.append(joined)
    keep = [i for i, name in enumerate(rows.schema.names) if name not in dropped]
    schema = pa.schema([rows.schema.field(i) for i in keep] + fields, metadata=rows.schema.metadata)
    return pa.RecordBatch.from_arrays([rows.column(i) for i in keep] + arrays, schema=schema)


def _read_single_batch(
    section: memoryview, header: worker_pb2.FrameHeader, name: str = ROWS_SECTION
) -> pa.RecordBatch:
    """Reads the one record batch of an Arrow IPC stream section without copying.

    The stream's schema message is parsed once per distinct schema (:class:`_IpcSchemas`);
    then only the record batch message is read. A schema with dictionary fields (whose
    dictionaries come as messages of their own) goes through the stream reader.
    """
    try:
        batch: pa.RecordBatch | None = None
        if len(section) >= _IPC_PREFIX.size:
            token, length = _IPC_PREFIX.unpack_from(section, 0)
            start = _IPC_PREFIX.size + length
            if token == _IPC_CONTINUATION and length > 0 and start < len(section):
                schema, has_dictionaries = _IPC_SCHEMAS.get(bytes(section[:start]))
                if not has_dictionaries:
                    batch = pa.ipc.read_record_batch(pa.py_buffer(section[start:]), schema)
        if batch is None:
            reader = pa.ipc.open_stream(pa.py_buffer(section))
            batch = reader.read_next_batch()
        # Reading trusts the message's buffer sizes and offsets: a hostile or broken worker
        # could make later zero-copy views read past the frame. Full validation checks every
        # buffer's size and every list offset (fuzzing found this; tests/fuzz).
        batch.validate(full=True)
        batch.schema.names  # noqa: B018 - column names must be UTF-8 (read lazily elsewhere)
    except (pa.ArrowException, StopIteration, EOFError, OSError, UnicodeDecodeError) as exc:
        raise WireFormatError(
            f"{name} section of split {header.split_id} seq {header.batch_seq} is not an Arrow "
            f"IPC stream with one valid record batch: {exc}"
        ) from exc
    return batch


# -- dedup groups on either side ----------------------------------------------------------------


def concat_rows(
    pieces: Sequence[pa.RecordBatch], *, drop_unused_unique_rows: bool = False
) -> pa.RecordBatch:
    """Concatenates record batches of one schema into one contiguous batch (a copy).

    A dictionary column (a dedup group's feature: the worker's per-chunk form, or the client's
    decoded ``IKJT_TYPE``) gets its pieces' dictionaries concatenated and each piece's indices
    rebased by the dictionary rows of the pieces before it (Arrow cannot unify list
    dictionaries). Features of one group share their indices, so they stay aligned.

    Args:
        pieces: one or more batches of one schema.
        drop_unused_unique_rows: also drop dictionary rows no index refers to (pieces cut from
            bigger batches), renumbering the indices in order; the client does, so a joined
            remainder carries only its own unique rows. The worker does not: it re-numbers
            every cut batch's unique rows anyway.

    Raises:
        ValueError: ``pieces`` is empty (the schema would be unknown).
    """
    if not pieces:
        raise ValueError("concat_rows needs at least one record batch to know the schema")
    if len(pieces) == 1:
        return pieces[0]
    schema = pieces[0].schema
    if not any(pa.types.is_dictionary(f.type) for f in schema):
        table = pa.Table.from_batches(pieces).combine_chunks()
        batches = table.to_batches()
        if not batches:
            return pa.RecordBatch.from_arrays(
                [pa.array([], type=f.type) for f in table.schema], schema=table.schema
            )
        return batches[0]  # combine_chunks leaves one chunk per column: one batch
    arrays: list[pa.Array] = []
    for i, field in enumerate(schema):
        parts = [piece.column(i) for piece in pieces]
        if not pa.types.is_dictionary(field.type):
            arrays.append(pa.concat_arrays(parts))
            continue
        sizes = np.array([len(part.dictionary) for part in parts], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        indices = np.concatenate(
            [
                part.indices.to_numpy().astype(np.int64) + start
                for part, start in zip(parts, starts, strict=True)
            ]
        )
        dictionary = pa.concat_arrays([part.dictionary for part in parts])
        if drop_unused_unique_rows:
            used, compact = np.unique(indices, return_inverse=True)
            if len(used) < len(dictionary):
                dictionary = dictionary.take(pa.array(used))
                indices = compact.reshape(-1)
        arrays.append(
            pa.DictionaryArray.from_arrays(pa.array(indices, type=INVERSE_TYPE), dictionary)
        )
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def expand(
    rows: pa.RecordBatch, sections: Sequence[Section], groups: Mapping[str, Sequence[str]]
) -> pa.RecordBatch:
    """The plain batch a deduplicated one stands for: every group's features as
    ``sparse.<name>`` columns taken through the inverse (a copy; tests and benchmarks use it,
    trainers get ``dpp_client.Batch.expand`` on tensors)."""
    by_name = dict(sections)
    arrays = []
    fields = []
    for i, field in enumerate(rows.schema):
        if not field.name.startswith(DEDUP_COLUMN_PREFIX):
            fields.append(field)
            arrays.append(rows.column(i))
    for group, features in groups.items():
        section = by_name.get(dedup_section(group))
        if section is None:
            continue
        take = rows.column(inverse_column(group))
        for name in features:
            column = SPARSE_PREFIX + name
            fields.append(section.schema.field(column))
            arrays.append(section.column(column).take(take))
    return pa.RecordBatch.from_arrays(
        arrays, schema=pa.schema(fields, metadata=rows.schema.metadata)
    )
