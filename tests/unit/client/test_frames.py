"""Frame decoding: round trip through the test encoder, and clear errors on bad input."""

from __future__ import annotations

import struct

import pyarrow as pa
import pytest
from client_frames import encode_frame, header, ipc_bytes, make_rows

from dpp_client.errors import FrameError
from dpp_client.frames import decode_frame
from dpp_proto import worker_pb2


def test_round_trip_header_and_rows() -> None:
    rb = make_rows(7, seed=3)
    frame = encode_frame(header("split-a", 2, epoch=1, last=True), rb)
    got_header, got = decode_frame(frame)
    assert got is not None
    assert got.equals(rb)
    assert got.schema.metadata == rb.schema.metadata
    assert (got_header.split_id, got_header.batch_seq, got_header.epoch) == ("split-a", 2, 1)
    assert got_header.last_in_split
    assert got_header.num_rows == 7
    assert got_header.sections[0].offset % 64 == 0


def test_rows_buffers_point_into_the_frame() -> None:
    frame = encode_frame(header("a", 0), make_rows(16))
    _, rb = decode_frame(frame)
    assert rb is not None
    start = pa.py_buffer(frame).address
    for column in rb.columns:
        for buf in column.buffers():
            if buf is not None and buf.size:
                assert start <= buf.address < start + len(frame)


def test_end_marker_has_no_batch() -> None:
    got_header, rb = decode_frame(encode_frame(header("a", 3, last=True), None))
    assert rb is None
    assert got_header.last_in_split and got_header.num_rows == 0


def test_error_frame_decodes_with_its_message() -> None:
    got_header, rb = decode_frame(encode_frame(header("a", 0, error="file vanished"), None))
    assert rb is None
    assert got_header.error == "file vanished"


def test_bad_magic() -> None:
    frame = b"XXXX" + encode_frame(header("a", 0), None)[4:]
    with pytest.raises(FrameError, match=r"expected b'DPPF'"):
        decode_frame(frame)


def test_shorter_than_prefix() -> None:
    with pytest.raises(FrameError, match="shorter than its 8-byte prefix"):
        decode_frame(b"DPP")


def test_truncated_header() -> None:
    frame = encode_frame(header("a", 0), None)
    with pytest.raises(FrameError, match="truncated"):
        decode_frame(frame[:-2])


def test_truncated_section() -> None:
    frame = encode_frame(header("a", 0), make_rows(4))
    with pytest.raises(FrameError, match="outside the frame's body"):
        decode_frame(frame[:-10])


def test_row_count_mismatch() -> None:
    h = worker_pb2.FrameHeader(split_id="a", num_rows=5)
    body = ipc_bytes(make_rows(4))
    h.sections.add(name="rows", offset=128, length=len(body))
    raw = h.SerializeToString()
    prefix = b"DPPF" + struct.pack("<I", len(raw)) + raw
    frame = prefix + b"\0" * (128 - len(prefix)) + body
    with pytest.raises(FrameError, match="num_rows=5 but its rows section holds 4 rows"):
        decode_frame(frame)


def test_section_that_is_not_arrow() -> None:
    h = worker_pb2.FrameHeader(split_id="a", num_rows=1)
    h.sections.add(name="rows", offset=64, length=16)
    raw = h.SerializeToString()
    prefix = b"DPPF" + struct.pack("<I", len(raw)) + raw
    frame = prefix + b"\0" * (64 - len(prefix)) + b"\x01" * 16
    with pytest.raises(FrameError, match="not an Arrow IPC stream"):
        decode_frame(frame)


def test_malformed_dedup_section_is_refused_clearly() -> None:
    h = worker_pb2.FrameHeader(split_id="a")
    h.sections.add(name="dedup/g", offset=64, length=0)
    raw = h.SerializeToString()
    prefix = b"DPPF" + struct.pack("<I", len(raw)) + raw
    with pytest.raises(FrameError, match="dedup/g section of split a seq 0 is not an Arrow IPC"):
        decode_frame(prefix + b"\0" * (64 - len(prefix)))


def test_rows_claimed_but_no_section() -> None:
    with pytest.raises(FrameError, match="has no 'rows' section"):
        decode_frame(encode_frame(header("a", 0, num_rows=3), None))
