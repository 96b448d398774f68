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
"""

from __future__ import annotations

import logging
import struct

import pyarrow as pa

from dpp_client.errors import FrameError
from dpp_proto import worker_pb2

__all__ = ["FRAME_MAGIC", "ROWS_SECTION", "decode_frame"]

_log = logging.getLogger(__name__)

FRAME_MAGIC = b"DPPF"
ROWS_SECTION = "rows"
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
        elif section.name.startswith("dedup/"):
            raise FrameError(
                f"frame of split {header.split_id} carries deduplicated section "
                f"{section.name!r}, which this client cannot expand; upgrade dpp_client or "
                "remove dedup_group from the spec"
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
    return header, batch


def _read_single_batch(section: pa.Buffer, header: worker_pb2.FrameHeader) -> pa.RecordBatch:
    """Reads the one record batch of an Arrow IPC stream section without copying."""
    try:
        reader = pa.ipc.open_stream(section)
        batch = reader.read_next_batch()
    except (pa.ArrowInvalid, StopIteration, OSError) as exc:
        raise FrameError(
            f"rows section of split {header.split_id} seq {header.batch_seq} is not an Arrow "
            f"IPC stream with one record batch: {exc}"
        ) from exc
    return batch
