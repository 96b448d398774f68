"""Decoding of StreamBatches frames: the raw-bytes messages a worker streams to a client.

Owns: the client's reading of the frame layout described in ``worker.proto``::

    offset 0   4 bytes   magic "DPPF"
    offset 4   4 bytes   little-endian uint32 H: length of the FrameHeader
    offset 8   H bytes   FrameHeader (protobuf)
    then each section at the 64-byte aligned offset its Section names (relative to the
    frame start), holding an Arrow IPC stream (schema + one record batch).

The server owns encoding; this module only decodes. Decoding is zero copy: the returned
Arrow record batch's buffers point into the received ``bytes`` object, which the batch keeps
alive. Must never import ``dpp_server`` or ``storage``.

Deduplicated feature groups (RecD): a frame may carry sections ``dedup/<group>`` with the
group's unique rows, and the rows section then holds ``dedup.<group>.inverse`` (int32 ``[B]``).
:func:`decode_frame` joins them into one record batch in which each feature of a group is a
``dictionary<int32, large_list<int64>>`` column ``sparse.<name>``: the dictionary is the
unique rows, the indices are the inverse — Arrow's own inverse-keyed jagged column, built
without copying (indices are bounds-checked). A group sent plain in this batch (auto mode)
becomes the same type with indices ``0..B-1``, so every decoded batch of a session has one
schema and the assembler can slice and concatenate them like any other.
"""

from __future__ import annotations

import json
import logging
import struct

import numpy as np
import pyarrow as pa

from dpp_client.errors import FrameError
from dpp_proto import worker_pb2

__all__ = ["DEDUP_SECTION_PREFIX", "FRAME_MAGIC", "ROWS_SECTION", "decode_frame"]

_log = logging.getLogger(__name__)

FRAME_MAGIC = b"DPPF"
ROWS_SECTION = "rows"
DEDUP_SECTION_PREFIX = "dedup/"
METADATA_DEDUP = b"dpp.dedup"
IKJT_TYPE = pa.dictionary(pa.int32(), pa.large_list(pa.int64()))
_PREFIX = struct.Struct("<4sI")


def decode_frame(buf: bytes) -> tuple[worker_pb2.FrameHeader, pa.RecordBatch | None]:
    """Parses one frame into its header and, when it carries rows, its Arrow record batch.

    Args:
        buf: one StreamBatches response message, exactly as received.

    Returns:
        ``(header, batch)``. ``batch`` is None for frames without a "rows" section: a split's
        end marker (``num_rows == 0``) or an error frame (``header.error`` set). The caller
        decides what an error frame means; decoding it is not a failure.

    Raises:
        FrameError: bad magic, a truncated header or section, a section outside the frame, a
            reserved section this client cannot interpret, or a row count that disagrees
            with the header.
    """
    view = memoryview(buf)
    size = len(view)
    if size < _PREFIX.size:
        raise FrameError(
            f"frame of {size} bytes is shorter than its {_PREFIX.size}-byte prefix; the "
            "stream is corrupted or the server speaks another protocol"
        )
    magic, header_len = _PREFIX.unpack_from(view, 0)
    if magic != FRAME_MAGIC:
        raise FrameError(
            f"frame starts with {bytes(magic)!r}, expected {FRAME_MAGIC!r}; the server speaks "
            "another protocol (check that client and server versions match)"
        )
    header_end = _PREFIX.size + header_len
    if header_end > size:
        raise FrameError(
            f"frame header claims {header_len} bytes but only {size - _PREFIX.size} follow "
            "the prefix; the message was truncated"
        )
    header = worker_pb2.FrameHeader()
    try:
        header.ParseFromString(bytes(view[_PREFIX.size : header_end]))
    except Exception as exc:  # protobuf raises DecodeError, whose import path varies
        raise FrameError(f"frame header ({header_len} bytes) is not a FrameHeader: {exc}") from exc

    batch: pa.RecordBatch | None = None
    dedup: dict[str, pa.RecordBatch] = {}
    for section in header.sections:
        end = section.offset + section.length
        if section.offset < header_end or end > size:
            raise FrameError(
                f"section {section.name!r} of split {header.split_id} seq {header.batch_seq} "
                f"spans [{section.offset}, {end}) outside the frame's body "
                f"[{header_end}, {size}); the message was truncated or mis-encoded"
            )
        if section.name == ROWS_SECTION:
            batch = _read_single_batch(pa.py_buffer(view[section.offset : end]), header)
        elif section.name.startswith(DEDUP_SECTION_PREFIX):
            group = section.name[len(DEDUP_SECTION_PREFIX) :]
            dedup[group] = _read_single_batch(
                pa.py_buffer(view[section.offset : end]), header, section.name
            )
        else:
            _log.debug("ignoring unknown frame section %r", section.name)

    if batch is not None and batch.num_rows != header.num_rows:
        raise FrameError(
            f"frame of split {header.split_id} seq {header.batch_seq} says num_rows="
            f"{header.num_rows} but its rows section holds {batch.num_rows} rows"
        )
    if batch is None and header.num_rows != 0 and not header.error:
        raise FrameError(
            f"frame of split {header.split_id} seq {header.batch_seq} says num_rows="
            f"{header.num_rows} but has no {ROWS_SECTION!r} section"
        )
    if batch is not None and (dedup or METADATA_DEDUP in (batch.schema.metadata or {})):
        batch = _join_dedup(batch, dedup, header)
    elif dedup:
        raise FrameError(
            f"frame of split {header.split_id} seq {header.batch_seq} carries sections "
            f"{sorted(dedup)} but no rows to join them to"
        )
    return header, batch


def _join_dedup(
    rows: pa.RecordBatch, dedup: dict[str, pa.RecordBatch], header: worker_pb2.FrameHeader
) -> pa.RecordBatch:
    """Replaces each dedup group's columns with ``dictionary<int32, large_list<int64>>`` ones
    (unique rows as the dictionary, the inverse as indices); see the module docstring."""
    where = f"frame of split {header.split_id} seq {header.batch_seq}"
    raw = (rows.schema.metadata or {}).get(METADATA_DEDUP)
    try:
        groups = json.loads(raw) if raw is not None else {}
    except ValueError as exc:
        raise FrameError(f"{where}: schema metadata dpp.dedup is not JSON: {raw!r}") from exc
    if not isinstance(groups, dict) or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in groups.values()
    ):
        raise FrameError(f"{where}: schema metadata dpp.dedup is not {{group: [names]}}: {raw!r}")
    unknown = sorted(set(dedup) - set(groups))
    if unknown:
        raise FrameError(f"{where}: sections for unknown dedup groups {unknown}")
    dropped: set[str] = set()
    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []
    plain_inverse: pa.Array | None = None
    for group, names in groups.items():
        columns = ["sparse." + n for n in names]
        unique = dedup.get(group)
        if unique is not None:
            inverse_name = f"dedup.{group}.inverse"
            index = rows.schema.get_field_index(inverse_name)
            if index < 0 or rows.schema.field(index).type != pa.int32():
                raise FrameError(f"{where}: section dedup/{group} without int32 {inverse_name!r}")
            inverse = rows.column(index)
            dropped.add(inverse_name)
            source = unique
        else:
            if plain_inverse is None:
                plain_inverse = pa.array(np.arange(rows.num_rows, dtype=np.int32))
            inverse = plain_inverse
            source = rows
            dropped.update(columns)
        for column in columns:
            index = source.schema.get_field_index(column)
            if index < 0:
                raise FrameError(f"{where}: dedup group {group!r} lacks column {column!r}")
            try:
                joined = pa.DictionaryArray.from_arrays(inverse, source.column(index), safe=True)
            except (pa.ArrowException, IndexError) as exc:  # an index past the unique rows
                raise FrameError(f"{where}: bad inverse of dedup group {group!r}: {exc}") from exc
            if joined.type != IKJT_TYPE:
                raise FrameError(
                    f"{where}: {column!r} has type {joined.type}, expected {IKJT_TYPE}"
                )
            fields.append(pa.field(column, IKJT_TYPE, nullable=False))
            arrays.append(joined)
    keep = [i for i, name in enumerate(rows.schema.names) if name not in dropped]
    schema = pa.schema([rows.schema.field(i) for i in keep] + fields, metadata=rows.schema.metadata)
    return pa.RecordBatch.from_arrays([rows.column(i) for i in keep] + arrays, schema=schema)


def _read_single_batch(
    section: pa.Buffer, header: worker_pb2.FrameHeader, name: str = ROWS_SECTION
) -> pa.RecordBatch:
    """Reads the one record batch of an Arrow IPC stream section without copying."""
    try:
        reader = pa.ipc.open_stream(section)
        batch = reader.read_next_batch()
    except (pa.ArrowInvalid, StopIteration, OSError) as exc:
        raise FrameError(
            f"{name} section of split {header.split_id} seq {header.batch_seq} is not an Arrow "
            f"IPC stream with one record batch: {exc}"
        ) from exc
    return batch
