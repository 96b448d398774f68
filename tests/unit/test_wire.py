"""FeaturePipeline end to end: table rows in, the exact wire batch out."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpp_proto import spec_pb2
from dpp_server.errors import SpecError
from dpp_server.spec import Spec, spec_from_proto
from dpp_server.transforms import FeaturePipeline
from tests.helpers.oracle import FLT_MAX, M64, f32, fmix64

DENSE = spec_pb2.FEATURE_KIND_DENSE
SPARSE = spec_pb2.FEATURE_KIND_SPARSE


def make_spec(features: list[dict[str, Any]], **fields: Any) -> Spec:
    return spec_from_proto(
        spec_pb2.SessionSpec(table_uri="memory://t", batch_size=8, features=features, **fields)
    )


FEATURES: list[dict[str, Any]] = [
    {
        "name": "d_log",
        "source": "counts",
        "kind": DENSE,
        "ops": [{"op": "fill_null", "params": {"value": 1.0}}, {"op": "log1p"}],
    },
    {
        "name": "s_hash",
        "source": "ids",
        "kind": SPARSE,
        "ops": [
            {"op": "first_x", "params": {"x": 2}},
            {"op": "sigrid_hash", "params": {"salt": 3, "max_value": 100}},
        ],
    },
    {
        "name": "d_clamp",
        "source": "price",
        "kind": DENSE,
        "ops": [
            {"op": "clamp", "params": {"min": -1.0, "max": 10.0}},
        ],
    },
    {"name": "s_raw", "source": "single", "kind": SPARSE},
]


def make_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "counts": pa.array([None, 0, 3, 1_000_000, 7], pa.int64()),
            "ids": pa.array(
                [[1, 2, 3], None, [], [None, 5, 6], [2**64 - 1]], pa.list_(pa.uint64())
            ),
            "price": pa.array([None, -5.5, 2.25, math.nan, 100.0], pa.float64()),
            "single": pa.array([10, None, -3, 0, 2**31 - 1], pa.int32()),
            "y": pa.array([1, 0, None, 1, 0], pa.int8()),
            "w": pa.array([0.5, None, 2.0, 1.0, 1.0], pa.float64()),
            "row_id": pa.array(["a", "b", None, "d", "e"], pa.string()),
            "ds": pa.array([20260101] * 5, pa.int32()),
        }
    )


def expected_schema(extra: dict[str, pa.DataType]) -> pa.Schema:
    fields = [
        pa.field("dense", pa.list_(pa.field("item", pa.float32(), nullable=False), 2), False),
        pa.field("sparse.s_hash", pa.large_list(pa.int64()), False),
        pa.field("sparse.s_raw", pa.large_list(pa.int64()), False),
        pa.field("label", pa.float32(), False),
        pa.field("weight", pa.float32(), False),
    ]
    fields += [pa.field(f"extra.{name}", dtype) for name, dtype in extra.items()]
    metadata = {b"dpp.dense": b'["d_log", "d_clamp"]', b"dpp.sparse": b'["s_hash", "s_raw"]'}
    return pa.schema(fields, metadata=metadata)


def test_wire_schema_is_exact() -> None:
    spec = make_spec(FEATURES, label="y", weight="w", passthrough=["row_id", "ds"])
    batch = make_batch()
    # Passthrough columns travel as their family's wire type (wire.passthrough_type).
    want = expected_schema({"row_id": pa.large_string(), "ds": pa.int64()})
    pipeline = FeaturePipeline(spec, batch.schema)
    assert pipeline.wire_schema.equals(want, check_metadata=True)
    out = pipeline.apply(batch)
    assert out.schema.equals(want, check_metadata=True)
    assert out.schema.field("dense").type == pa.list_(
        pa.field("item", pa.float32(), nullable=False), 2
    )
    assert out.schema.field("sparse.s_hash").type == pa.large_list(pa.int64())
    assert json.loads(out.schema.metadata[b"dpp.dense"]) == ["d_log", "d_clamp"]
    assert json.loads(out.schema.metadata[b"dpp.sparse"]) == ["s_hash", "s_raw"]
    assert pipeline.input_columns == ["counts", "ids", "price", "single", "y", "w", "row_id", "ds"]
    out.validate(full=True)


def test_wire_values() -> None:
    spec = make_spec(FEATURES, label="y", weight="w", passthrough=["row_id"])
    batch = make_batch()
    out = FeaturePipeline(spec).apply(batch)
    assert out.num_rows == 5

    dense = out.column("dense")
    assert dense.null_count == 0
    block = dense.values.to_numpy().reshape(5, 2)  # row-major [B, D] straight off the buffer
    assert block.dtype == np.float32
    want_log = [f32(math.log1p(x)) for x in (1.0, 0.0, 3.0, 1_000_000.0, 7.0)]
    np.testing.assert_allclose(block[:, 0], want_log, rtol=2.5e-7)
    # Null stays null through clamp, then the wire fills 0.0; NaN passes clamp unchanged.
    assert block[:, 1].tolist()[:3] == [0.0, -1.0, 2.25]
    assert math.isnan(block[3, 1]) and block[4, 1] == 10.0

    def h(i: int) -> int:
        return fmix64((i & M64) ^ fmix64(3)) % 100

    assert out.column("sparse.s_hash").to_pylist() == [
        [h(1), h(2)],
        [],  # null list -> empty
        [],
        [h(5), h(6)],  # null id dropped before first_x
        [h(-1)],  # uint64 2**64-1 keeps its bits: int64 -1
    ]
    assert out.column("sparse.s_hash").null_count == 0
    assert out.column("sparse.s_raw").to_pylist() == [[10], [], [-3], [0], [2**31 - 1]]
    assert out.column("label").to_pylist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert out.column("label").type == pa.float32()
    assert out.column("weight").to_pylist() == [0.5, 0.0, 2.0, 1.0, 1.0]
    assert out.column("extra.row_id").to_pylist() == ["a", "b", None, "d", "e"]


def test_table_input_with_chunks_and_empty_batch() -> None:
    spec = make_spec(FEATURES, label="y", passthrough=["row_id"])
    batch = make_batch()
    pipeline = FeaturePipeline(spec)
    table = pa.Table.from_batches([batch.slice(0, 2), batch.slice(2)])
    assert table.column("ids").num_chunks == 2
    from_table, from_batch = pipeline.apply(table), pipeline.apply(batch)
    assert from_table.schema.equals(from_batch.schema, check_metadata=True)
    # Compared as numpy: the block holds a NaN, and NaN != NaN for Arrow's equals.
    np.testing.assert_array_equal(
        from_table.column("dense").values.to_numpy(), from_batch.column("dense").values.to_numpy()
    )
    for name in from_batch.schema.names[1:]:
        assert from_table.column(name).equals(from_batch.column(name)), name
    empty = pipeline.apply(batch.slice(0, 0))
    assert empty.num_rows == 0
    assert empty.schema.equals(pipeline.wire_schema, check_metadata=True)


def test_only_sparse_has_no_dense_column() -> None:
    spec = make_spec([FEATURES[1]])
    pipeline = FeaturePipeline(spec)
    assert pipeline.wire_schema.names == ["sparse.s_hash"]
    assert json.loads(pipeline.wire_schema.metadata[b"dpp.dense"]) == []
    out = pipeline.apply(make_batch())
    assert out.schema.names == ["sparse.s_hash"]


def test_wire_schema_needs_types_of_passthrough_columns() -> None:
    pipeline = FeaturePipeline(make_spec([FEATURES[0]], passthrough=["row_id"]))
    with pytest.raises(RuntimeError, match="pass input_schema"):
        _ = pipeline.wire_schema
    pipeline.apply(make_batch())
    assert pipeline.wire_schema.field("extra.row_id").type == pa.large_string()


def test_batch_that_does_not_fit_the_spec() -> None:
    pipeline = FeaturePipeline(make_spec([FEATURES[0]]))
    bad = pa.RecordBatch.from_pydict({"counts": pa.array(["x"])})
    with pytest.raises(SpecError) as info:
        pipeline.apply(bad)
    assert info.value.field == "features[0].source"
    with pytest.raises(SpecError):
        FeaturePipeline(make_spec([FEATURES[0]]), bad.schema)


# --- property test against a per-row reference -----------------------------------------------

floats = st.none() | st.floats(width=32) | st.sampled_from([math.inf, -math.inf, math.nan])
id_lists = st.none() | st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=30)


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(st.tuples(floats, floats, id_lists), max_size=80),
    x=st.integers(1, 40),
    salt=st.integers(0, 2**53),
)
def test_pipeline_matches_reference(
    rows: list[tuple[float | None, float | None, list[int | None] | None]], x: int, salt: int
) -> None:
    features = [
        {"name": "a", "kind": DENSE, "ops": [{"op": "log1p"}]},
        {"name": "b", "kind": DENSE, "ops": [{"op": "clamp", "params": {"min": 0.0}}]},
        {
            "name": "c",
            "kind": SPARSE,
            "ops": [
                {"op": "first_x", "params": {"x": x}},
                {"op": "sigrid_hash", "params": {"salt": salt, "max_value": 1000}},
            ],
        },
    ]
    batch = pa.RecordBatch.from_pydict(
        {
            "a": pa.array([r[0] for r in rows], pa.float32()),
            "b": pa.array([r[1] for r in rows], pa.float32()),
            "c": pa.array([r[2] for r in rows], pa.list_(pa.int64())),
        }
    )
    out = FeaturePipeline(make_spec(features)).apply(batch)
    block = out.column("dense").values.to_numpy().reshape(len(rows), 2)
    for i, (a, b, c) in enumerate(rows):
        want_a = 0.0 if a is None or math.isnan(a) or a <= 0 else f32(math.log1p(min(a, FLT_MAX)))
        assert math.isclose(block[i, 0], want_a, rel_tol=2.5e-7, abs_tol=1e-45)
        if b is None:
            assert block[i, 1] == 0.0
        elif math.isnan(b):
            assert math.isnan(block[i, 1])
        else:
            assert block[i, 1] == max(b, 0.0)
        kept = [] if c is None else [v for v in c if v is not None][:x]
        want_c = [fmix64((v & M64) ^ fmix64(salt)) % 1000 for v in kept]
        assert out.column("sparse.c")[i].as_py() == want_c
