"""The packed layout's narrow list lengths (dpp_proto.wire, ``WireOptions.narrow_lengths``):
the K*B lengths as uint8/uint16 where a batch allows, property-tested against the int32-offsets
decoding as the reference, the width chosen per batch at its boundaries, and hostile sections
refused with WireFormatError."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpp_client.batch import batch_from_arrow
from dpp_proto import wire, worker_pb2
from dpp_proto.wire import FrameEncoder, WireFormatError, WireOptions, decode_frame

#: The reference: the packed layout with int32 offsets (what workers sent before).
OFFSETS = WireOptions(narrow_lengths=False)
UNPACKED = WireOptions(packed=False)


def section_schemas(frame: bytes) -> dict[str, pa.Schema]:
    """Each section's schema as it travels (before decoding joins or unpacks anything)."""
    length = wire.FRAME_PREFIX.unpack_from(frame)[1]
    header = worker_pb2.FrameHeader.FromString(frame[8 : 8 + length])
    return {
        s.name: pa.ipc.open_stream(frame[s.offset : s.offset + s.length]).schema
        for s in header.sections
    }


def lengths_type(schema: pa.Schema) -> pa.DataType | None:
    """The lengths column's item type, or None for the offsets layout."""
    if wire.LENGTHS_COLUMN not in schema.names:
        return None
    return schema.field(wire.LENGTHS_COLUMN).type.value_type


def sparse_rows(features: dict[str, list[list[int] | None]]) -> pa.RecordBatch:
    rows = len(next(iter(features.values())))
    fields = [pa.field(wire.SPARSE_PREFIX + n, wire.SPARSE_TYPE) for n in features]
    fields.append(pa.field(wire.LABEL_COLUMN, pa.float32(), nullable=False))
    arrays = [pa.array(v, wire.SPARSE_TYPE) for v in features.values()]
    arrays.append(pa.array(np.zeros(rows, np.float32)))
    metadata = {
        wire.METADATA_DENSE: b"[]",
        wire.METADATA_SPARSE: json.dumps(list(features)).encode(),
    }
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def both(
    rows: pa.RecordBatch, sections: list[wire.Section], narrow: frozenset[str] = frozenset()
) -> tuple[bytes, pa.RecordBatch, pa.RecordBatch]:
    """The frame in the lengths layout, its decoding and the reference decoding."""
    header = worker_pb2.FrameHeader(split_id="s", num_rows=rows.num_rows)
    frame = FrameEncoder(WireOptions(int32_features=narrow)).encode(header, rows, sections)
    reference = FrameEncoder(WireOptions(int32_features=narrow, narrow_lengths=False)).encode(
        worker_pb2.FrameHeader(split_id="s", num_rows=rows.num_rows), rows, sections
    )
    got, expected = decode_frame(frame)[1], decode_frame(reference)[1]
    assert got is not None and expected is not None
    return frame, got, expected


# -- round trips, property-tested against the offsets layout ------------------------------------


def id_lists(rows: int, low: int, high: int) -> st.SearchStrategy[list[list[int] | None]]:
    """``rows`` id lists: mostly short, some empty or null, now and then one past 255 ids."""
    short = st.lists(st.integers(low, high), max_size=4)
    long = st.builds(lambda n, v: [v] * n, st.integers(250, 300), st.integers(low, high))
    one = st.one_of(st.none(), short, short, short, long)
    return st.lists(one, min_size=rows, max_size=rows)


@st.composite
def cases(draw: st.DrawFn) -> tuple[pa.RecordBatch, list[wire.Section], frozenset[str]]:
    """A rows batch of 1-3 plain features (int32-bounded or int64 ids, empty and null lists,
    maybe a list longer than 255), maybe a dedup group of 1-2 features; and the int32 set."""
    rows = draw(st.integers(1, 6))
    features: dict[str, list[list[int] | None]] = {}
    for i in range(draw(st.integers(1, 3))):
        wide = draw(st.booleans())
        bound = 2**63 if wide else 2**31
        features[f"p{i}"] = draw(id_lists(rows, -bound, bound - 1))
    narrow = frozenset(
        n
        for n, lists in features.items()
        if all(-(2**31) <= v < 2**31 for x in lists if x for v in x) and draw(st.booleans())
    )
    batch = sparse_rows(features)
    sections: list[wire.Section] = []
    if draw(st.booleans()):
        unique_rows = draw(st.integers(1, rows))
        group = [f"u{i}" for i in range(draw(st.integers(1, 2)))]
        unique = pa.record_batch(
            {
                wire.SPARSE_PREFIX + n: pa.array(
                    draw(id_lists(unique_rows, 0, 1000).map(lambda v: [x or [] for x in v])),
                    wire.SPARSE_TYPE,
                )
                for n in group
            }
        )
        inverse = draw(st.lists(st.integers(0, unique_rows - 1), min_size=rows, max_size=rows))
        metadata = dict(batch.schema.metadata)
        metadata[wire.METADATA_SPARSE] = json.dumps([*features, *group]).encode()
        metadata[wire.METADATA_DEDUP] = json.dumps({"g": group}).encode()
        batch = batch.append_column(
            pa.field(wire.inverse_column("g"), wire.INVERSE_TYPE, nullable=False),
            pa.array(inverse, wire.INVERSE_TYPE),
        ).replace_schema_metadata(metadata)
        sections.append((wire.dedup_section("g"), unique))
        narrow |= frozenset(group) if draw(st.booleans()) else frozenset()
    return batch, sections, narrow


@settings(max_examples=150, deadline=None)
@given(case=cases())
def test_lengths_layout_decodes_like_the_offsets_layout(
    case: tuple[pa.RecordBatch, list[wire.Section], frozenset[str]],
) -> None:
    rows, sections, narrow = case
    frame, got, expected = both(rows, sections, narrow)
    assert got.equals(expected)
    assert got.schema.equals(expected.schema, check_metadata=True)
    # The width is decided per section from its longest list.
    for name, schema in section_schemas(frame).items():
        if name == wire.ROWS_SECTION:
            continue
        source = rows if name == wire.SPARSE_SECTION else dict(sections)[name]
        longest = max(
            (
                len(x)
                for f in source.schema.names
                if f.startswith(wire.SPARSE_PREFIX)
                for x in source.column(f).to_pylist()
                if x
            ),
            default=0,
        )
        assert lengths_type(schema) == (pa.uint8() if longest <= 255 else pa.uint16())


@pytest.mark.parametrize(
    ("longest", "width"),
    [(0, pa.uint8()), (255, pa.uint8()), (256, pa.uint16()), (65535, pa.uint16()), (65536, None)],
)
def test_the_narrowest_width_that_holds_the_longest_list(
    longest: int, width: pa.DataType | None
) -> None:
    ids = list(range(longest))
    frame, got, expected = both(
        sparse_rows({"a": [[1, 2], ids, None, []], "b": [[7], [], [8, 9], None]}),
        [],
        frozenset({"a", "b"}),
    )
    assert lengths_type(section_schemas(frame)[wire.SPARSE_SECTION]) == width
    assert got.equals(expected)
    assert got.column("sparse.a").to_pylist() == [[1, 2], ids, None, []]
    assert got.column("sparse.b").to_pylist() == [[7], [], [8, 9], None]


def test_int64_ids_and_a_packed_dedup_group_in_the_lengths_layout() -> None:
    rows = sparse_rows({"wide": [[2**62], [], [-(2**63)], [1, 2]]})
    metadata = dict(rows.schema.metadata)
    metadata[wire.METADATA_SPARSE] = b'["wide", "u0"]'
    metadata[wire.METADATA_DEDUP] = b'{"user": ["u0"]}'
    rows = rows.append_column(
        pa.field(wire.inverse_column("user"), wire.INVERSE_TYPE, nullable=False),
        pa.array([0, 1, 1, 0], wire.INVERSE_TYPE),
    ).replace_schema_metadata(metadata)
    unique = pa.record_batch({"sparse.u0": pa.array([[5, 6, 7], []], wire.SPARSE_TYPE)})
    frame, got, expected = both(rows, [(wire.dedup_section("user"), unique)], frozenset({"u0"}))
    schemas = section_schemas(frame)
    assert lengths_type(schemas[wire.SPARSE_SECTION]) == pa.uint8()
    assert schemas[wire.SPARSE_SECTION].field(wire.PACKED_COLUMN).type.value_type == pa.int64()
    assert lengths_type(schemas["dedup/user"]) == pa.uint8()
    assert schemas["dedup/user"].field(wire.PACKED_COLUMN).type.value_type == pa.int32()
    assert got.equals(expected)
    assert got.column("sparse.wide").to_pylist() == [[2**62], [], [-(2**63)], [1, 2]]
    assert got.column("sparse.u0").dictionary.to_pylist() == [[5, 6, 7], []]


def test_the_client_sees_the_same_tensors_as_from_the_offsets_layout() -> None:
    rng = np.random.default_rng(3)
    features = {
        f"f{k}": [list(map(int, rng.integers(0, 10**5, rng.integers(0, 21)))) for _ in range(256)]
        for k in range(5)
    }
    rows = sparse_rows(features)  # type: ignore[arg-type]
    frame, got, expected = both(rows, [], frozenset(features))
    new, old = batch_from_arrow(got), batch_from_arrow(expected)
    assert new.packed is not None and old.packed is not None
    assert new.packed.offsets.dtype == torch.int32 and new.packed.values.dtype == torch.int32
    assert torch.equal(new.packed.offsets, old.packed.offsets)
    assert torch.equal(new.packed.values, old.packed.values)
    for name in features:
        assert torch.equal(new.sparse[name].offsets, old.sparse[name].offsets)
        assert torch.equal(new.sparse[name].values, old.sparse[name].values)
    # 3 of every 4 offset bytes saved (5 features x 256 rows x 3 bytes), less a fixed cost per
    # frame: the second column's schema and its buffers (about 220 bytes).
    reference = FrameEncoder(WireOptions(int32_features=frozenset(features), narrow_lengths=False))
    old_frame = reference.encode(worker_pb2.FrameHeader(num_rows=256), rows)
    assert len(old_frame) - len(frame) >= 5 * 256 * 3 - 256


def test_narrow_lengths_off_keeps_the_offsets_layout() -> None:
    frame = FrameEncoder(OFFSETS).encode(
        worker_pb2.FrameHeader(num_rows=4), sparse_rows({"a": [[1], [], None, [2, 3]]})
    )
    schema = section_schemas(frame)[wire.SPARSE_SECTION]
    assert schema.names == [wire.PACKED_COLUMN] and lengths_type(schema) is None


# -- hostile sections -----------------------------------------------------------------------------


def hostile(ids: pa.Array, lengths: pa.Array, rows: int = 2, row_count: int = 1) -> bytes:
    """A frame with 2 rows of one packed feature ``a`` whose lengths-layout section holds
    the list columns built from ``ids`` and ``lengths`` (``row_count`` copies of the row)."""

    def one_row(values: pa.Array) -> pa.Array:
        offsets = pa.array(np.arange(row_count + 1, dtype=np.int32) * len(values) // row_count)
        return pa.ListArray.from_arrays(offsets, values)

    packed = pa.RecordBatch.from_arrays(
        [one_row(ids), one_row(lengths)],
        schema=pa.schema(
            [
                pa.field(wire.PACKED_COLUMN, pa.list_(ids.type)),
                pa.field(wire.LENGTHS_COLUMN, pa.list_(lengths.type)),
            ],
            metadata={wire.METADATA_KEYS: b'[["sparse.a", 0, false]]'},
        ),
    )
    rest = pa.record_batch({"label": pa.array(np.zeros(rows, np.float32))})
    header = worker_pb2.FrameHeader(split_id="h", num_rows=rows)
    return FrameEncoder(UNPACKED).encode(header, rest, [(wire.SPARSE_SECTION, packed)])


I32 = pa.array([1, 2, 3], pa.int32())


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (hostile(I32, pa.array([1, 1], pa.uint8())), r"2 lengths sum to 2 ids, but it holds 3"),
        (hostile(I32, pa.array([3, 1], pa.uint8())), r"2 lengths sum to 4 ids, but it holds 3"),
        (hostile(I32, pa.array([1, 2], pa.int8())), r"\(list<uint8\|uint16>\), not"),
        (hostile(I32, pa.array([1, 2], pa.int32())), r"\(list<uint8\|uint16>\), not"),
        (hostile(I32, pa.array([1, 2], pa.uint32())), r"\(list<uint8\|uint16>\), not"),
        (hostile(I32.cast(pa.float32()), pa.array([1, 2], pa.uint8())), "list<int32|int64>"),
        (hostile(I32, pa.array([1, 2, 0], pa.uint8())), "holds 3 lists, expected 1 features x 2"),
        (
            hostile(pa.array([1, None, 3], pa.int32()), pa.array([1, 2], pa.uint8())),
            "holds 1 null ids",
        ),
        (
            hostile(pa.array([1, 2, 3, 4], pa.int32()), pa.array([1, 1, 1, 1], pa.uint8()), 2, 2),
            "in the lengths layout holds one row, not 2",
        ),
        (
            # 32770 lengths of 65535 wrap an int32 sum: summed exactly, in int64.
            hostile(I32, pa.array(np.full(32770, 65535, np.uint16)), rows=32770),
            r"32770 lengths sum to 2147581950 ids, but it holds 3",
        ),
    ],
    ids=[
        "short",
        "long",
        "int8 lengths",
        "int32 lengths",
        "uint32 lengths",
        "float ids",
        "lengths count",
        "null ids",
        "two rows",
        "int32 wrap",
    ],
)
def test_hostile_lengths_sections_are_refused(frame: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        decode_frame(frame)


def test_a_null_row_is_refused() -> None:
    packed = pa.RecordBatch.from_arrays(
        [
            pa.array([None], pa.list_(pa.int32())),
            pa.array([[0, 0]], pa.list_(pa.uint8())),
        ],
        schema=pa.schema(
            [
                pa.field(wire.PACKED_COLUMN, pa.list_(pa.int32())),
                pa.field(wire.LENGTHS_COLUMN, pa.list_(pa.uint8())),
            ],
            metadata={wire.METADATA_KEYS: b'[["sparse.a", 0, false]]'},
        ),
    )
    rest = pa.record_batch({"label": pa.array(np.zeros(2, np.float32))})
    header = worker_pb2.FrameHeader(split_id="h", num_rows=2)
    frame = FrameEncoder(UNPACKED).encode(header, rest, [(wire.SPARSE_SECTION, packed)])
    with pytest.raises(WireFormatError, match="section's one row is null"):
        decode_frame(frame)


def test_a_null_list_spanning_ids_round_trips() -> None:
    """A null list whose offsets still span ids (Arrow allows it): its length is its extent,
    so the lengths still sum to the ids and both layouts decode to the same array."""
    column = pa.ListArray.from_arrays(
        pa.array([0, 2, 4, 5], pa.int32()),
        pa.array([1, 2, 3, 4, 5], pa.int64()),
        mask=pa.array([False, True, False]),
    ).cast(wire.SPARSE_TYPE)
    assert column.to_pylist() == [[1, 2], None, [5]]
    rows = sparse_rows({"a": [[1, 2], None, [5]]})
    rows = rows.set_column(0, rows.schema.field(0), column)
    frame, got, expected = both(rows, [], frozenset({"a"}))
    assert lengths_type(section_schemas(frame)[wire.SPARSE_SECTION]) == pa.uint8()
    assert got.equals(expected)
    assert got.column("sparse.a").to_pylist() == [[1, 2], None, [5]]


def test_decoding_a_frame_imports_nothing_more(tmp_path: Path) -> None:
    """The trainer's decoding of a lengths-layout frame stays clear of
    ``pa.array(ndarray)``, whose first call imports ``numpy.ma``: 30-170 ms of CPU that made
    the trainer's first frame cost 100 ms. A fresh interpreter decodes and reports."""
    rows = sparse_rows({"a": [[1, 2], [], [300] * 300], "b": [[7], None, [8, 9]]})
    header = worker_pb2.FrameHeader(split_id="s", num_rows=rows.num_rows)
    frame = FrameEncoder(WireOptions(int32_features=frozenset({"a", "b"}))).encode(header, rows)
    path = tmp_path / "frame.bin"
    path.write_bytes(frame)
    probe = (
        "import sys; from dpp_proto.wire import decode_frame; "
        f"header, rb = decode_frame(open({str(path)!r}, 'rb').read()); "
        "assert rb.num_rows == 3 and rb.column('sparse.a')[2].as_py() == [300] * 300; "
        "print('numpy.ma' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stdout + out.stderr
