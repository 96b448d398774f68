"""ORC tables: stripes as the split unit, read with pyarrow's ORC reader.

Owns: everything dpp knows about ORC files (Hive's format; DWRF, the warehouse format of the
DSI paper, is an ORC dialect). :mod:`storage.table` plans an ORC table as it plans a Parquet
one, with stripes in the place of row groups (``SplitInfo.row_groups`` holds stripe indices);
:mod:`storage.reader` hands an ORC split to :func:`scan_stripes`.

What pyarrow's ORC reader allows, and so what dpp does:

* projection: :meth:`pyarrow.orc.ORCFile.read_stripe` decodes only the named columns;
* stripes: read one at a time, so memory holds one stripe's projected columns;
* predicate pushdown: none. pyarrow exposes no stripe statistics, so a row filter prunes no
  stripe at planning; it is applied exactly to the rows read, as for Parquet.

pyarrow does not expose stripe row counts either, and planning needs them (splits are packed
toward ``target_split_rows``, and every split says its rows). Reading every stripe to count
would read the table; instead :func:`stripe_rows` parses the file's tail (PostScript and
Footer, a few KB, two range reads) with a minimal protobuf decoder for the handful of fields
it needs.

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.orc as paorc

from storage.errors import StorageError

__all__ = ["ORC_SUFFIXES", "read_schema", "scan_stripes", "stripe_rows"]

ORC_SUFFIXES = (".orc",)

# The most tail bytes read at once: a PostScript is at most 255 bytes, and footers of tables
# with a few hundred columns and stripes fit in 64 KiB; a bigger footer costs one more read.
_TAIL_BYTES = 64 * 1024
# PostScript.compression values and how to undo them (LZO and LZ4 are not supported here).
_NONE, _ZLIB, _SNAPPY, _ZSTD = 0, 1, 2, 5
_COMPRESSION_NAMES = {0: "NONE", 1: "ZLIB", 2: "SNAPPY", 3: "LZO", 4: "LZ4", 5: "ZSTD"}


def read_schema(filesystem: pafs.FileSystem, path: str) -> pa.Schema:
    """The ORC file's Arrow schema (one footer read).

    Raises:
        StorageError: the file is not readable ORC.
    """
    try:
        with filesystem.open_input_file(path) as source:
            schema: pa.Schema = paorc.ORCFile(source).schema
            return schema
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(
            f"reading the ORC footer of {path!r} failed ({exc}); is it a complete ORC file? "
            "Remove or rewrite it"
        ) from exc


def stripe_rows(filesystem: pafs.FileSystem, path: str, size: int) -> list[int]:
    """The row count of every stripe of an ORC file, from its footer.

    Raises:
        StorageError: the file is not ORC, its tail is cut off, or its footer is compressed
            with a codec dpp cannot undo (LZO, LZ4).
    """
    try:
        with filesystem.open_input_file(path) as source:
            tail_size = min(size, _TAIL_BYTES)
            source.seek(size - tail_size)
            tail = source.read(tail_size)
            if not tail:
                raise StorageError(f"{path!r} is empty; it is not an ORC file")
            ps_length = tail[-1]
            postscript = _fields(tail[-1 - ps_length : -1])
            footer_length = _first(postscript, 1, 0)
            compression = _first(postscript, 2, _NONE)
            if (
                _first(postscript, 8000, b"") != b"ORC"
                or not isinstance(footer_length, int)
                or not isinstance(compression, int)
            ):
                raise StorageError(
                    f"{path!r} does not end with an ORC PostScript: it is truncated or not an "
                    "ORC file; remove or rewrite it"
                )
            needed = footer_length + ps_length + 1
            if needed > len(tail):
                if needed > size:
                    raise StorageError(f"{path!r} is shorter than its footer; it is truncated")
                source.seek(size - needed)
                tail = source.read(needed)
            raw = tail[len(tail) - needed : len(tail) - ps_length - 1]
        footer = _fields(_decompress(raw, compression, path))
        stripes = [s for s in footer.get(3, []) if isinstance(s, bytes)]
        return [int(_first(_fields(stripe), 5, 0)) for stripe in stripes]
    except (OSError, pa.ArrowException, zlib.error) as exc:
        raise StorageError(
            f"reading the ORC footer of {path!r} failed ({exc}); is it a complete ORC file? "
            "Remove or rewrite it"
        ) from exc
    except StorageError as exc:
        if path in str(exc):
            raise
        raise StorageError(f"{path!r}: {exc}; remove or rewrite it") from exc


def scan_stripes(
    filesystem: pafs.FileSystem,
    path: str,
    stripes: Sequence[int],
    columns: Sequence[str],
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """Yields ``columns`` of the given stripes, in order, in batches of at most
    ``batch_rows`` rows (empty ones skipped).

    Raises:
        StorageError: a column is missing or the file cannot be read.
    """
    try:
        with filesystem.open_input_file(path) as source:
            reader = paorc.ORCFile(source)
            missing = [c for c in columns if c not in reader.schema.names]
            if missing:
                raise StorageError(
                    f"{path!r}: unknown column(s) {missing}; the file has {reader.schema.names}"
                )
            for stripe in stripes:
                if columns:
                    batch = reader.read_stripe(stripe, columns=list(columns))
                else:
                    # No column wanted, but the rows still count: read the first, keep none.
                    batch = reader.read_stripe(stripe, columns=[reader.schema.names[0]])
                    batch = batch.select([])
                for offset in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(offset, batch_rows)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(
            f"reading stripes {list(stripes)} of {path!r} failed ({exc}); the file may be "
            "corrupt or rewritten: replan"
        ) from exc


# -- a minimal protobuf decoder: varints, length-delimited and fixed fields -----------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise StorageError("ORC footer ends inside a varint; the file is corrupt")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> dict[int, list[int | bytes]]:
    """Decodes one protobuf message into ``{field number: [values]}`` (varints as ints,
    length-delimited fields as bytes, fixed-width ones as raw bytes)."""
    out: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire_type == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise StorageError(f"ORC footer holds protobuf wire type {wire_type}; corrupt file")
        out.setdefault(number, []).append(value)
    return out


def _first(fields: dict[int, list[int | bytes]], number: int, default: int | bytes) -> int | bytes:
    values = fields.get(number)
    return values[0] if values else default


def _decompress(data: bytes, compression: int, path: str) -> bytes:
    """Undoes ORC's chunked compression: 3-byte headers ``(length << 1) | is_original``."""
    if compression == _NONE:
        return data
    out = bytearray()
    pos = 0
    while pos + 3 <= len(data):
        header = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
        pos += 3
        length, original = header >> 1, header & 1
        chunk = data[pos : pos + length]
        pos += length
        if original:
            out += chunk
        elif compression == _ZLIB:
            out += zlib.decompress(chunk, -15)
        elif compression in (_SNAPPY, _ZSTD):
            codec = pa.Codec("snappy" if compression == _SNAPPY else "zstd")
            out += _codec_decompress(codec, chunk)
        else:
            name = _COMPRESSION_NAMES.get(compression, str(compression))
            raise StorageError(
                f"{path!r}: ORC footer compressed with {name}, which dpp cannot read; "
                "rewrite the table with ZLIB, SNAPPY, ZSTD or no compression"
            )
    return bytes(out)


def _codec_decompress(codec: pa.Codec, chunk: bytes) -> bytes:
    """Decompresses one chunk; pyarrow needs the exact decompressed size, which snappy keeps
    in its own header and a zstd frame in its Frame_Content_Size field."""
    size = _varint(chunk, 0)[0] if codec.name == "snappy" else _zstd_content_size(chunk)
    return bytes(codec.decompress(chunk, decompressed_size=size))


def _zstd_content_size(frame: bytes) -> int:
    """A zstd frame's Frame_Content_Size (RFC 8878, section 3.1.1.1)."""
    if len(frame) < 6 or int.from_bytes(frame[:4], "little") != 0xFD2FB528:
        raise StorageError("ORC footer chunk is not a zstd frame; the file is corrupt")
    descriptor = frame[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, descriptor >> 5 & 1, descriptor & 3
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if width == 0:
        raise StorageError(
            "ORC footer chunk is a zstd frame without its content size; dpp cannot size it: "
            "rewrite the table with ZLIB or SNAPPY"
        )
    size = int.from_bytes(frame[pos : pos + width], "little")
    return size + 256 if width == 2 else size
