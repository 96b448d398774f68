"""The frame contract (dpp_proto.wire): encode -> decode round trips over every column kind,
dedup sections, concatenation and expansion, and every decode error with its text.

Every layout is covered: the packed (KeyedJaggedTensor) layout with int32 ids and narrow list
lengths, which workers send, and with int32 offsets (``narrow_lengths=False``, the reference of
the lengths layout), each checked against the per-feature layout's decoding as the reference."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpp_client.errors import FrameError
from dpp_client.frames import decode_frame as client_decode_frame
from dpp_proto import wire, worker_pb2
from dpp_proto.wire import FrameEncoder, WireFormatError, WireOptions, decode_frame

#: The per-feature layout: its decoding is the reference the packed layout must equal.
UNPACKED = WireOptions(packed=False)
#: The packed layout with int32 offsets, as before narrow lengths: their decodings must be equal.
OFFSETS = WireOptions(narrow_lengths=False)
LAYOUTS = {"unpacked": UNPACKED, "offsets": OFFSETS, "packed": WireOptions()}


def reference(rb: pa.RecordBatch) -> pa.RecordBatch:
    """``rb`` with every id list as ``large_list<int64>`` (the unpacked layout's type), dictionary
    columns too, so a packed decoding compares equal to the reference decoding."""
    fields, arrays = [], []
    for field, column in zip(rb.schema, rb.columns, strict=True):
        if wire.is_id_list_type(field.type):
            column = column.cast(wire.SPARSE_TYPE)
        elif pa.types.is_dictionary(field.type):
            column = pa.DictionaryArray.from_arrays(
                column.indices, column.dictionary.cast(wire.SPARSE_TYPE)
            )
        fields.append(pa.field(field.name, column.type, field.nullable))
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=rb.schema.metadata))


SPARSE = {
    "a": [[1, 2, 3], [], None, [2**63 - 1, -(2**63)]],  # empty and null lists, int64 bounds
    "b": [[], [], [], []],
}


def plain_rows() -> pa.RecordBatch:
    """Every plain column kind: dense, sparse, label, weight and passthrough extras."""
    schema = wire.wire_schema(
        ["d0", "d1"],
        list(SPARSE),
        label=True,
        weight=True,
        extra={"row_id": pa.int64(), "country": pa.string(), "seen": pa.bool_()},
    )
    sparse_fields = [pa.field(wire.SPARSE_PREFIX + n, wire.SPARSE_TYPE) for n in SPARSE]
    # A null list is not what a worker sends (the schema says not null), but the envelope must
    # carry it unchanged: the client, not the frame, refuses it.
    schema = pa.schema(
        [schema.field(0), *sparse_fields, *list(schema)[3:]], metadata=schema.metadata
    )
    dense = np.arange(8, dtype=np.float32).reshape(4, 2)
    columns = [
        *(pa.array(v, wire.SPARSE_TYPE) for v in SPARSE.values()),
        pa.array([1.0, 0.0, 1.0, 0.0], pa.float32()),
        pa.array([0.5, 1.0, 2.0, 1.0], pa.float32()),
        pa.array([10, 11, 12, 13], pa.int64()),
        pa.array(["de", None, "fr", ""], pa.string()),
        pa.array([True, False, None, True]),
    ]
    return wire.assemble_wire_batch(schema, dense, columns)


def dedup_frame(
    seq: int = 0, options: WireOptions = UNPACKED
) -> tuple[pa.RecordBatch, list[wire.Section], bytes]:
    """Rows with group ``user`` deduplicated (3 unique rows of 5) and group ``plain`` sent
    plain, and the encoded frame."""
    unique = pa.record_batch(
        {
            "sparse.u0": pa.array([[7], [], [8, 9]], wire.SPARSE_TYPE),
            "sparse.u1": pa.array([[1], [2], [3]], wire.SPARSE_TYPE),
        }
    )
    metadata = {
        wire.METADATA_DENSE: b"[]",
        wire.METADATA_SPARSE: b'["u0", "u1", "p0"]',
        wire.METADATA_DEDUP: b'{"user": ["u0", "u1"], "plain": ["p0"]}',
    }
    rows = pa.RecordBatch.from_arrays(
        [
            pa.array([0, 1, 0, 2, 1], wire.INVERSE_TYPE),
            pa.array([[5], [6], [], [5], [6]], wire.SPARSE_TYPE),
            pa.array([1, 2, 3, 4, 5], pa.int64()),
        ],
        schema=pa.schema(
            [
                pa.field(wire.inverse_column("user"), wire.INVERSE_TYPE, nullable=False),
                pa.field("sparse.p0", wire.SPARSE_TYPE, nullable=False),
                pa.field("extra.row_id", pa.int64()),
            ],
            metadata=metadata,
        ),
    )
    sections = [(wire.dedup_section("user"), unique)]
    header = worker_pb2.FrameHeader(split_id="s", batch_seq=seq, num_rows=5)
    return rows, sections, FrameEncoder(options).encode(header, rows, sections)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_plain_columns_round_trip_exactly(layout: str) -> None:
    rows = plain_rows()
    header = worker_pb2.FrameHeader(session_id="s1", epoch=2, rank=1, split_id="a", batch_seq=3)
    header.num_rows = rows.num_rows
    frame = FrameEncoder(LAYOUTS[layout]).encode(header, rows)
    got_header, got = decode_frame(frame)
    assert got is not None
    got = reference(got)
    assert got.equals(rows) and got.schema.equals(rows.schema, check_metadata=True)
    assert got.column("sparse.a").to_pylist() == SPARSE["a"]
    assert got.column("extra.country").to_pylist() == ["de", None, "fr", ""]
    assert got.column("dense").values.to_numpy().tolist() == list(range(8))
    assert wire.feature_names(got.schema, wire.METADATA_DENSE) == ["d0", "d1"]
    assert wire.feature_names(got.schema, wire.METADATA_SPARSE) == ["a", "b"]
    assert (got_header.session_id, got_header.epoch, got_header.rank) == ("s1", 2, 1)
    assert (got_header.split_id, got_header.batch_seq, got_header.num_rows) == ("a", 3, 4)
    packed = [wire.SPARSE_SECTION] if layout != "unpacked" else []
    assert [s.name for s in got_header.sections] == [wire.ROWS_SECTION, *packed]
    assert all(s.offset % wire.SECTION_ALIGNMENT == 0 for s in got_header.sections)
    assert frame[:4] == wire.FRAME_MAGIC


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rows_buffers_point_into_the_frame(layout: str) -> None:
    frame = FrameEncoder(LAYOUTS[layout]).encode(worker_pb2.FrameHeader(num_rows=4), plain_rows())
    _, rb = decode_frame(frame)
    assert rb is not None
    start = pa.py_buffer(frame).address
    for name, column in zip(rb.schema.names, rb.columns, strict=True):
        buffers = column.buffers()
        if layout == "packed" and name.startswith(wire.SPARSE_PREFIX):
            # The lengths layout's one copy: validity and offsets rebuilt from the lengths.
            assert column.buffers()[1].size == 4 * (2 * 4 + 1)
            buffers = buffers[2:]
        for buf in buffers:
            if buf is not None and buf.size:
                assert start <= buf.address < start + len(frame)
                assert (buf.address - start) % 8 == 0


def test_encoded_frames_decode_with_header_and_rows() -> None:
    batch = pa.record_batch({"label": pa.array([1.0, 0.0], pa.float32())})
    encoder = FrameEncoder()
    header = worker_pb2.FrameHeader(session_id="s", split_id="a", batch_seq=2, num_rows=2)
    decoded_header, rows = decode_frame(encoder.encode(header, batch))
    assert decoded_header.batch_seq == 2 and decoded_header.sections[0].offset % 64 == 0
    assert rows is not None and rows.column("label").to_pylist() == [1.0, 0.0]
    end = worker_pb2.FrameHeader(split_id="a", batch_seq=3, last_in_split=True)
    end_header, no_rows = decode_frame(FrameEncoder.encode_empty(end))
    assert end_header.last_in_split and no_rows is None


def test_end_marker_and_error_frames_have_no_batch() -> None:
    end = worker_pb2.FrameHeader(split_id="a", batch_seq=3, last_in_split=True)
    got_header, rb = decode_frame(FrameEncoder().encode(end, None))
    assert rb is None
    assert got_header.last_in_split and got_header.num_rows == 0 and not got_header.sections
    failed = worker_pb2.FrameHeader(split_id="a", last_in_split=True, error="file vanished")
    got_header, rb = decode_frame(FrameEncoder.encode_empty(failed))
    assert rb is None
    assert got_header.error == "file vanished"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dedup_sections_join_as_dictionaries_and_expand_to_the_plain_rows(layout: str) -> None:
    rows, sections, frame = dedup_frame(options=LAYOUTS[layout])
    header, got = decode_frame(frame)
    assert got is not None
    packed = [wire.SPARSE_SECTION] if layout != "unpacked" else []
    assert [s.name for s in header.sections] == ["rows", *packed, "dedup/user"]
    assert all(s.offset % wire.SECTION_ALIGNMENT == 0 for s in header.sections)
    assert got.schema.names == ["extra.row_id", "sparse.u0", "sparse.u1", "sparse.p0"]
    for name in ("sparse.u0", "sparse.u1", "sparse.p0"):
        assert reference(got).schema.field(name).type == wire.IKJT_TYPE
    assert got.column("sparse.u0").indices.to_pylist() == [0, 1, 0, 2, 1]
    assert got.column("sparse.u0").dictionary.to_pylist() == [[7], [], [8, 9]]
    assert got.column("sparse.p0").indices.to_pylist() == [0, 1, 2, 3, 4]  # a plain group
    expanded = wire.expand(rows, sections, {"user": ["u0", "u1"]})
    assert expanded.column("sparse.u0").to_pylist() == [[7], [], [7], [8, 9], []]
    assert expanded.column("sparse.u1").to_pylist() == [[1], [2], [1], [3], [2]]
    assert wire.inverse_column("user") not in expanded.schema.names
    for name in ("sparse.u0", "sparse.u1", "sparse.p0"):
        assert got.column(name).to_pylist() == expanded.column(name).to_pylist()


@pytest.mark.parametrize("drop_unused", [False, True])
def test_concat_rows_rebases_dictionary_indices(drop_unused: bool) -> None:
    _, _, frame = dedup_frame()
    _, got = decode_frame(frame)
    assert got is not None
    first, second = got.slice(3), got.slice(0, 2)  # [2, 1] and [0, 1] of 3 unique rows each
    joined = wire.concat_rows([first, second], drop_unused_unique_rows=drop_unused)
    column = joined.column("sparse.u0")
    assert column.to_pylist() == [[8, 9], [], [7], []]
    assert joined.column("sparse.u1").to_pylist() == [[3], [2], [1], [2]]
    assert joined.column("extra.row_id").to_pylist() == [4, 5, 1, 2]
    assert joined.schema.equals(got.schema, check_metadata=True)
    if drop_unused:  # the unique rows no row refers to are gone, the rest keep their order
        assert column.indices.to_pylist() == [1, 0, 2, 3]
        assert column.dictionary.to_pylist() == [[], [8, 9], [7], []]
    else:
        assert column.indices.to_pylist() == [2, 1, 3, 4]
        assert len(column.dictionary) == 6


def test_concat_rows_of_plain_batches_and_its_limits() -> None:
    rows = plain_rows()
    joined = wire.concat_rows([rows.slice(0, 1), rows.slice(1)])
    assert joined.equals(rows)
    assert wire.concat_rows([rows]) is rows
    with pytest.raises(ValueError, match="at least one record batch"):
        wire.concat_rows([])


def raw_frame(header: worker_pb2.FrameHeader, body: bytes = b"", offset: int = 64) -> bytes:
    """A frame whose header and body are written by hand, to break the contract on purpose."""
    raw = header.SerializeToString()
    prefix = wire.FRAME_PREFIX.pack(wire.FRAME_MAGIC, len(raw)) + raw
    return prefix + b"\0" * (offset - len(prefix)) + body


def ipc_bytes(rb: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rb.schema) as writer:
        writer.write_batch(rb)
    return bytes(sink.getvalue().to_pybytes())


def row_count_mismatch() -> bytes:
    h = worker_pb2.FrameHeader(split_id="a", num_rows=5)
    body = ipc_bytes(plain_rows())
    h.sections.add(name="rows", offset=128, length=len(body))
    return raw_frame(h, body, 128)


def not_arrow() -> bytes:
    h = worker_pb2.FrameHeader(split_id="a", num_rows=1)
    h.sections.add(name="rows", offset=64, length=16)
    return raw_frame(h, b"\x01" * 16)


def schema_without_batch() -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, plain_rows().schema):
        pass
    body = bytes(sink.getvalue().to_pybytes())
    h = worker_pb2.FrameHeader(split_id="a", num_rows=4)
    h.sections.add(name="rows", offset=64, length=len(body))
    return raw_frame(h, body)


def empty_dedup_section() -> bytes:
    h = worker_pb2.FrameHeader(split_id="a")
    h.sections.add(name="dedup/g", offset=64, length=0)
    return raw_frame(h)


def dedup_without_rows() -> bytes:
    unique = pa.record_batch({"sparse.u0": pa.array([[1]], wire.SPARSE_TYPE)})
    body = ipc_bytes(unique)
    h = worker_pb2.FrameHeader(split_id="a", batch_seq=4, last_in_split=True)
    h.sections.add(name="dedup/user", offset=64, length=len(body))
    return raw_frame(h, body)


def with_rows(change: Callable[[pa.RecordBatch], pa.RecordBatch]) -> bytes:
    rows, sections, _ = dedup_frame()
    header = worker_pb2.FrameHeader(split_id="s", batch_seq=0, num_rows=5)
    return FrameEncoder().encode(header, change(rows), sections)


def with_metadata(value: bytes) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    def change(rows: pa.RecordBatch) -> pa.RecordBatch:
        return rows.replace_schema_metadata({**rows.schema.metadata, wire.METADATA_DEDUP: value})

    return change


def inverse_of(values: list[int]) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    def change(rows: pa.RecordBatch) -> pa.RecordBatch:
        index = rows.schema.get_field_index("dedup.user.inverse")
        return rows.set_column(index, "dedup.user.inverse", pa.array(values, pa.int32()))

    return change


def without_inverse(rows: pa.RecordBatch) -> pa.RecordBatch:
    return rows.drop_columns(["dedup.user.inverse"])


def packed_with(change: Callable[[list[list[object]]], bytes]) -> bytes:
    """A packed frame whose packed section's key metadata was changed."""
    rows, packed = wire.pack_sparse(plain_rows(), frozenset(), keep_one_column=True)
    assert packed is not None
    keys = json.loads(packed.schema.metadata[wire.METADATA_KEYS])
    packed = packed.replace_schema_metadata({wire.METADATA_KEYS: change(keys)})
    header = worker_pb2.FrameHeader(split_id="a", num_rows=4)
    return FrameEncoder(UNPACKED).encode(header, rows, [(wire.SPARSE_SECTION, packed)])


def good() -> bytes:
    return FrameEncoder().encode(worker_pb2.FrameHeader(split_id="a", num_rows=4), plain_rows())


BAD_FRAMES: list[tuple[str, Callable[[], bytes], str]] = [
    ("bad magic", lambda: b"XXXX" + good()[4:], r"starts with b'XXXX', expected b'DPPF'"),
    ("shorter than prefix", lambda: b"DPP", "frame of 3 bytes is shorter than its 8-byte prefix"),
    (
        "header past the end",
        lambda: FrameEncoder.encode_empty(worker_pb2.FrameHeader(split_id="a"))[:-2],
        "frame header claims 3 bytes but only 1 follow the prefix; the message was truncated",
    ),
    (
        "header not protobuf",
        lambda: wire.FRAME_PREFIX.pack(wire.FRAME_MAGIC, 2) + b"\xff\xff",
        r"frame header \(2 bytes\) is not a FrameHeader",
    ),
    ("truncated section", lambda: good()[:-10], r"section 'sparse' of split a seq 0 spans \["),
    (
        "packed keys not a list",
        lambda: packed_with(lambda _: b"{oops"),
        r"packed sparse metadata is not \[\[name, index, nullable\], ...\]: b'\{oops'",
    ),
    (
        "packed index past the columns",
        lambda: packed_with(lambda keys: json.dumps([keys[0], [keys[1][0], 99, True]]).encode()),
        r"packed sparse indices .* do not fit 8 columns",
    ),
    (
        "packed count off",
        lambda: packed_with(lambda keys: json.dumps(keys[:1]).encode()),
        "packed sparse section holds 8 lists, expected 1 features x 4 rows",
    ),
    ("row count", row_count_mismatch, "num_rows=5 but its rows section holds 4 rows"),
    ("bad IPC", not_arrow, "rows section of split a seq 0 is not an Arrow IPC stream"),
    (
        "schema but no batch",
        schema_without_batch,
        "rows section of split a seq 0 is not an Arrow IPC stream with one valid record batch",
    ),
    (
        "empty dedup section",
        empty_dedup_section,
        "dedup/g section of split a seq 0 is not an Arrow IPC",
    ),
    (
        "rows claimed, no section",
        lambda: FrameEncoder.encode_empty(worker_pb2.FrameHeader(split_id="a", num_rows=3)),
        "says num_rows=3 but has no 'rows' section",
    ),
    (
        "dedup section without rows",
        dedup_without_rows,
        r"seq 4 carries sections \['user'\] but no rows to join them to",
    ),
    (
        "unknown group",
        lambda: with_rows(with_metadata(b'{"plain": ["p0"]}')),
        r"sections for unknown dedup groups \['user'\]",
    ),
    (
        "metadata not JSON",
        lambda: with_rows(with_metadata(b"{oops")),
        "frame of split s seq 0: schema metadata dpp.dedup is not JSON: b'{oops'",
    ),
    (
        "metadata not groups",
        lambda: with_rows(with_metadata(b'["u0"]')),
        r"schema metadata dpp.dedup is not \{group: \[names\]\}",
    ),
    (
        "inverse missing",
        lambda: with_rows(without_inverse),
        "section dedup/user without int32 'dedup.user.inverse'",
    ),
    (
        "inverse out of range",
        lambda: with_rows(inverse_of([5] * 5)),
        "bad inverse of dedup group 'user'",
    ),
]


@pytest.mark.parametrize(
    ("make", "message"), [(m, t) for _, m, t in BAD_FRAMES], ids=[n for n, _, _ in BAD_FRAMES]
)
def test_every_malformed_frame_is_refused_with_its_reason(
    make: Callable[[], bytes], message: str
) -> None:
    frame = make()
    with pytest.raises(WireFormatError, match=message):
        decode_frame(frame)
    # The client raises the same text as its own FrameError.
    with pytest.raises(FrameError, match=message):
        client_decode_frame(frame)


def test_metadata_names_must_be_a_json_list_of_strings() -> None:
    schema = pa.schema([], metadata={wire.METADATA_DENSE: b'{"a": 1}', wire.METADATA_SPARSE: b"x"})
    for key in (wire.METADATA_DENSE, wire.METADATA_SPARSE):
        with pytest.raises(WireFormatError, match=f"{key.decode()} is not a JSON list of names"):
            wire.feature_names(schema, key)
    assert wire.feature_names(pa.schema([]), wire.METADATA_DENSE) is None
    assert wire.dedup_groups(pa.schema([])) == {}


def test_unknown_sections_are_skipped() -> None:
    rows = plain_rows()
    frame = FrameEncoder().encode(
        worker_pb2.FrameHeader(num_rows=4), rows, [("future/x", pa.record_batch({"z": [1]}))]
    )
    header, got = decode_frame(frame)
    assert [s.name for s in header.sections] == ["rows", "sparse", "future/x"]
    assert got is not None and reference(got).equals(rows)


def test_prefix_is_magic_and_little_endian_length() -> None:
    frame = FrameEncoder.encode_empty(worker_pb2.FrameHeader(split_id="abc"))
    magic, length = struct.unpack_from("<4sI", frame)
    assert magic == b"DPPF" and length == len(frame) - 8


# -- the packed layout against the per-feature one, property-tested -----------------------------


@st.composite
def frames_to_compare(draw: st.DrawFn) -> tuple[pa.RecordBatch, list[wire.Section], frozenset[str]]:
    """A rows batch with 0-3 plain sparse features (nulls, empty lists; some int32-bounded,
    some int64), a label, and maybe a dedup group of 1-2 features; plus the int32 set."""
    rows = draw(st.integers(1, 6))
    lists = st.lists(
        st.one_of(st.none(), st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4)),
        min_size=rows,
        max_size=rows,
    )
    wide = st.lists(
        st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3), min_size=rows, max_size=rows
    )
    plain = {f"p{i}": draw(st.one_of(lists, wide)) for i in range(draw(st.integers(0, 3)))}
    narrow = frozenset(
        n for n, v in plain.items() if all(-(2**31) <= i < 2**31 for x in v if x for i in x)
    )
    narrow = narrow if draw(st.booleans()) else frozenset(list(narrow)[:1])
    fields = [pa.field("label", pa.float32(), nullable=False)]
    arrays: list[pa.Array] = [pa.array(np.arange(rows, dtype=np.float32))]
    for name, values in plain.items():
        fields.append(pa.field(wire.SPARSE_PREFIX + name, wire.SPARSE_TYPE))
        arrays.append(pa.array(values, wire.SPARSE_TYPE))
    metadata = {wire.METADATA_DENSE: b"[]", wire.METADATA_SPARSE: json.dumps(list(plain)).encode()}
    sections: list[wire.Section] = []
    if draw(st.booleans()):
        unique_rows = draw(st.integers(1, rows))
        group = [f"u{i}" for i in range(draw(st.integers(1, 2)))]
        ulists = st.lists(
            st.lists(st.integers(0, 1000), max_size=3), min_size=unique_rows, max_size=unique_rows
        )
        unique = pa.record_batch(
            {wire.SPARSE_PREFIX + n: pa.array(draw(ulists), wire.SPARSE_TYPE) for n in group}
        )
        inverse = draw(st.lists(st.integers(0, unique_rows - 1), min_size=rows, max_size=rows))
        fields.append(pa.field(wire.inverse_column("g"), wire.INVERSE_TYPE, nullable=False))
        arrays.append(pa.array(inverse, wire.INVERSE_TYPE))
        sections.append((wire.dedup_section("g"), unique))
        metadata[wire.METADATA_SPARSE] = json.dumps([*plain, *group]).encode()
        metadata[wire.METADATA_DEDUP] = json.dumps({"g": group}).encode()
        narrow |= frozenset(group) if draw(st.booleans()) else frozenset()
    batch = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))
    return batch, sections, narrow


@settings(max_examples=150, deadline=None)
@given(case=frames_to_compare(), compression=st.sampled_from([None, "lz4", "zstd"]))
def test_packed_layout_decodes_like_the_per_feature_layout(
    case: tuple[pa.RecordBatch, list[wire.Section], frozenset[str]], compression: str | None
) -> None:
    rows, sections, narrow = case
    header = worker_pb2.FrameHeader(split_id="s", num_rows=rows.num_rows)
    _, expected = decode_frame(FrameEncoder(UNPACKED).encode(header, rows, sections))
    options = WireOptions(int32_features=narrow, compression=compression)
    frame_header = worker_pb2.FrameHeader(split_id="s", num_rows=rows.num_rows)
    _, got = decode_frame(FrameEncoder(options).encode(frame_header, rows, sections))
    assert expected is not None and got is not None
    assert reference(got).equals(expected)
    assert reference(got).schema.equals(expected.schema, check_metadata=True)
    plain = [n for n in got.schema.names if n.startswith("sparse.p")]
    if plain:  # one packed column: its type says whether every feature was int32-bounded
        packed_type = got.schema.field(plain[0]).type
        narrowed = all(n[len(wire.SPARSE_PREFIX) :] in narrow for n in plain)
        assert packed_type.value_type == (pa.int32() if narrowed else pa.int64())
        assert pa.types.is_list(packed_type)  # int32 offsets


def test_packed_features_share_one_values_and_one_offsets_buffer() -> None:
    rows = plain_rows()
    frame = FrameEncoder(WireOptions(int32_features=frozenset({"b"}))).encode(
        worker_pb2.FrameHeader(num_rows=4), rows
    )
    _, got = decode_frame(frame)
    assert got is not None
    a, b = got.column("sparse.a"), got.column("sparse.b")
    assert a.type.value_type == pa.int64()  # "a" holds int64 ids: the whole section stays int64
    assert a.buffers()[1].address == b.buffers()[1].address  # one offsets buffer
    assert a.buffers()[3].address == b.buffers()[3].address  # one values buffer
    assert (a.offset, b.offset) == (0, 4)


def test_int32_ids_halve_the_sparse_bytes() -> None:
    ids = [list(range(i, i + 20)) for i in range(512)]
    rows = pa.RecordBatch.from_arrays(
        [pa.array(ids, wire.SPARSE_TYPE), pa.array(np.zeros(512, np.float32))],
        schema=pa.schema(
            [pa.field("sparse.x", wire.SPARSE_TYPE), pa.field("label", pa.float32())],
            metadata={wire.METADATA_SPARSE: b'["x"]'},
        ),
    )
    sizes = {
        name: len(FrameEncoder(o).encode(worker_pb2.FrameHeader(num_rows=512), rows))
        for name, o in {
            "old": UNPACKED,
            "int64": WireOptions(),
            "int32": WireOptions(int32_features=frozenset({"x"})),
            "lz4": WireOptions(int32_features=frozenset({"x"}), compression="lz4"),
        }.items()
    }
    assert sizes["int32"] < 0.55 * sizes["old"]
    assert sizes["int64"] < sizes["old"]  # int32 offsets
    assert sizes["lz4"] < sizes["int32"]  # consecutive ids compress


def test_unknown_compression_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"wire compression 'gzip' is not one of \(None, 'lz4'"):
        WireOptions(compression="gzip")


def test_frames_whose_schemas_differ_only_in_metadata_decode_each_by_its_own() -> None:
    """Decoding remembers what it derived per schema; a schema equal but for its metadata
    (here: the packed feature names) must not reuse another's plan."""
    rows, packed = wire.pack_sparse(plain_rows(), frozenset(), keep_one_column=True)
    assert packed is not None
    keys = json.loads(packed.schema.metadata[wire.METADATA_KEYS])
    # The same columns at the same places, but named the other way round.
    swapped = [[keys[1][0], keys[0][1], keys[0][2]], [keys[0][0], keys[1][1], keys[1][2]]]
    header = worker_pb2.FrameHeader(split_id="a", num_rows=4)
    straight = FrameEncoder(UNPACKED).encode(header, rows, [(wire.SPARSE_SECTION, packed)])
    other = packed.replace_schema_metadata({wire.METADATA_KEYS: json.dumps(swapped).encode()})
    crossed = FrameEncoder(UNPACKED).encode(header, rows, [(wire.SPARSE_SECTION, other)])
    for _ in range(2):  # the second round decodes from what the first remembered
        a = decode_frame(straight)[1]
        b = decode_frame(crossed)[1]
        assert a is not None and b is not None
        names = [keys[0][0], keys[1][0]]
        assert a.column(names[0]).equals(b.column(names[1]))
        assert a.column(names[1]).equals(b.column(names[0]))


def test_a_dictionary_passthrough_column_decodes_through_the_stream_reader() -> None:
    rows = plain_rows()
    labels = pa.array(["x", "y", "x", "z"]).dictionary_encode()
    rows = rows.append_column("extra.tag", labels)
    body = ipc_bytes(rows)  # the dictionary travels as a message of its own
    h = worker_pb2.FrameHeader(split_id="a", num_rows=4)
    h.sections.add(name="rows", offset=64, length=len(body))
    for _ in range(2):
        got = decode_frame(raw_frame(h, body))[1]
        assert got is not None
        assert got.column("extra.tag").to_pylist() == ["x", "y", "x", "z"]
