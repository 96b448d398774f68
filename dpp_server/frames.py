"""Encodes batches into wire frames (the layout is documented in ``proto/dpp_proto/worker.proto``).

Owns the server half of the frame format; ``dpp_client.frames`` owns the decoding half. Must
never import grpc or torch: a frame is plain bytes.

Why this shape: the record batch is serialized once by Arrow (``RecordBatch.serialize`` sizes
its output before writing, which is several times faster than a growing stream), and the
frame is assembled by one ``bytes.join``. Sections start at 64-byte offsets and Arrow pads every
buffer to 8 bytes, so the client can view every buffer as a tensor without copying.
"""

from __future__ import annotations

import struct

import pyarrow as pa

from dpp_proto import worker_pb2

MAGIC = b"DPPF"
ALIGNMENT = 64
_PREFIX = struct.Struct("<4sI")


def _aligned(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class FrameEncoder:
    """Encodes the frames of one session.

    Every frame carries the wire schema so that each frame decodes on its own; the encoder
    keeps the last schema it serialized, so a session's frames serialize it once. Thread-safe:
    the cache is one tuple, replaced atomically.
    """

    def __init__(self) -> None:
        self._schema_cache: tuple[pa.Schema, pa.Buffer] | None = None

    def _schema_message(self, schema: pa.Schema) -> pa.Buffer:
        cached = self._schema_cache
        if cached is not None and cached[0].equals(schema, check_metadata=True):
            return cached[1]
        message = schema.serialize()
        self._schema_cache = (schema, message)
        return message

    @staticmethod
    def encode_empty(header: worker_pb2.FrameHeader) -> bytes:
        """A frame without rows: an end-of-split marker or an error report."""
        del header.sections[:]
        body = header.SerializeToString()
        return _PREFIX.pack(MAGIC, len(body)) + body

    def encode(self, header: worker_pb2.FrameHeader, batch: pa.RecordBatch | None) -> bytes:
        """Returns one frame: prefix, header, and (when ``batch`` is given) a "rows" section
        holding an Arrow IPC stream of the schema and the batch. ``header.sections`` is filled
        in here."""
        if batch is None:
            return self.encode_empty(header)
        del header.sections[:]
        schema_message = self._schema_message(batch.schema)
        batch_message = batch.serialize()
        length = schema_message.size + batch_message.size
        offset = ALIGNMENT
        section = header.sections.add(name="rows", offset=offset, length=length)
        while True:
            body = header.SerializeToString()
            needed = _aligned(_PREFIX.size + len(body))
            if needed <= offset:
                break
            offset = needed
            section.offset = offset
        prefix = _PREFIX.pack(MAGIC, len(body)) + body
        padding = b"\0" * (offset - len(prefix))
        return b"".join((prefix, padding, schema_message, batch_message))
