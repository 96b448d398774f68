"""Encodes batches into wire frames (the layout is documented in ``proto/dpp_proto/worker.proto``).

Owns the server half of the frame format; ``dpp_client.frames`` owns the decoding half. Must
never import grpc or torch: a frame is plain bytes.

Why this shape: each section's size is known before anything is written
(``pa.ipc.get_record_batch_size`` walks the buffers without copying them), so Arrow writes every
section straight into one presized buffer (several times faster than a growing stream). gRPC
sends ``bytes`` only, so the buffer is then copied once into the frame's ``bytes``. Writing into
a fresh ``bytes`` object through ctypes would spare that copy (0.80 instead of 1.19 ms of CPU
per 8 MB frame, about 1% of a worker's time); we keep to public CPython behaviour instead.
Each section is a complete Arrow IPC stream (schema, batch, end marker).
Sections start at 64-byte offsets and Arrow pads every buffer to 8 bytes, so the client can
view every buffer as a tensor without copying.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pyarrow as pa

from dpp_proto import worker_pb2

MAGIC = b"DPPF"
ALIGNMENT = 64
_PREFIX = struct.Struct("<4sI")
# An Arrow IPC stream ends with this 8-byte marker (continuation token, zero length).
_EOS_SIZE = 8


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
        # Schemas of the other sections ("dedup/<group>"), by section name; same rules.
        self._section_schemas: dict[str, tuple[pa.Schema, pa.Buffer]] = {}

    def _section_schema_message(self, name: str, schema: pa.Schema) -> pa.Buffer:
        cached = self._section_schemas.get(name)
        if cached is not None and cached[0].equals(schema, check_metadata=True):
            return cached[1]
        message = schema.serialize()
        self._section_schemas[name] = (schema, message)
        return message

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

    def encode(
        self,
        header: worker_pb2.FrameHeader,
        batch: pa.RecordBatch | None,
        sections: Sequence[tuple[str, pa.RecordBatch]] = (),
    ) -> bytes:
        """Returns one frame: prefix, header, and (when ``batch`` is given) a "rows" section
        holding an Arrow IPC stream of the schema and the batch, then one more section per
        entry of ``sections`` (``(name, batch)``, e.g. ``dedup/<group>``), each starting at a
        64-byte offset. ``header.sections`` is filled in here."""
        if batch is None:
            return self.encode_empty(header)
        del header.sections[:]
        batches = [("rows", batch), *sections]
        schemas = [self._schema_message(batch.schema)]
        schemas += [self._section_schema_message(name, b.schema) for name, b in sections]
        entries = [
            header.sections.add(
                name=name,
                length=schema.size + pa.ipc.get_record_batch_size(b) + _EOS_SIZE,
            )
            for (name, b), schema in zip(batches, schemas, strict=True)
        ]
        offset = ALIGNMENT
        while True:
            position = offset
            for entry in entries:
                entry.offset = position
                position = _aligned(position + entry.length)
            body = header.SerializeToString()
            needed = _aligned(_PREFIX.size + len(body))
            if needed <= offset:
                break
            offset = needed
        size = entries[-1].offset + entries[-1].length
        frame = bytearray(size)
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(frame))
        sink.write(_PREFIX.pack(MAGIC, len(body)) + body)
        for entry, (_, b) in zip(entries, batches, strict=True):
            sink.write(b"\0" * (entry.offset - sink.tell()))
            with pa.ipc.new_stream(sink, b.schema) as writer:
                writer.write_batch(b)
            if sink.tell() != entry.offset + entry.length:
                raise RuntimeError(
                    f"section {entry.name!r} took {sink.tell() - entry.offset} bytes, "
                    f"{entry.length} were planned; pyarrow's IPC sizes changed: fix frames.py"
                )
        return bytes(frame)
