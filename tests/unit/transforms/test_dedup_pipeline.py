"""RecD deduplication on the worker side: ``unique_rows`` and ``DedupPipeline`` against the plain
``FeaturePipeline`` on generated tables (no duplicates, all duplicates, empty lists, null lists,
null ids, integer and string sources), through the real frame encoder and client decoder.

The property: for every batch cut, the client's expansion of the deduplicated frame equals the
plain pipeline's batch, column by column."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpp_client.batch import batch_from_arrow, concat_batches
from dpp_client.frames import decode_frame
from dpp_client.spec import Feature, Op, SessionSpec
from dpp_proto import worker_pb2
from dpp_proto.wire import FrameEncoder
from dpp_server.spec import Spec, spec_from_proto
from dpp_server.transforms import FeaturePipeline
from dpp_server.transforms.dedup import DedupPipeline, session_starts, unique_rows

SETTINGS = settings(max_examples=40, deadline=None)

id_lists = st.none() | st.lists(st.none() | st.integers(-3, 3), max_size=4)
pools = st.lists(
    st.tuples(id_lists, id_lists, st.none() | st.integers(0, 2), st.sampled_from(["a", "b", ""])),
    min_size=1,
    max_size=5,
)


def table_of(rows: list[tuple[Any, ...]]) -> pa.Table:
    return pa.table(
        {
            "u0": pa.array([r[0] for r in rows], pa.list_(pa.int64())),
            "u1": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
            "uid": pa.array([r[2] for r in rows], pa.int64()),
            "country": pa.array([r[3] for r in rows], pa.string()),
            "item": pa.array([[i, i + 1] for i in range(len(rows))], pa.list_(pa.int64())),
            "dense_0": pa.array(np.arange(len(rows), dtype=np.float32)),
            "label": pa.array([i % 2 for i in range(len(rows))], pa.int8()),
            "row_id": pa.array(np.arange(len(rows), dtype=np.int64)),
        }
    )


def specs(group: str, batch_size: int, min_share: float = 0.0) -> tuple[Spec, Spec]:
    def features(g: str) -> tuple[Feature, ...]:
        hashed = (Op("sigrid_hash", {"max_value": 50}),)
        return (
            Feature("d", "dense", source="dense_0", ops=(Op("log1p"),)),
            Feature("u0", "sparse", ops=(Op("first_x", {"x": 3}), *hashed), dedup_group=g),
            Feature("u1", "sparse", ops=hashed, dedup_group=g),
            Feature("uid", "sparse", dedup_group=g),
            Feature(
                "cx",
                "sparse",
                source="u0",
                ops=(Op("cross", {"other": "u1", "max_value": 97}),),
                dedup_group=g,
            ),
            Feature("c", "sparse", source="country", ops=(Op("hash_string", {"max_value": 9}),)),
            Feature("item", "sparse", ops=hashed),
        )

    def spec(g: str) -> Spec:
        return spec_from_proto(
            SessionSpec(
                table_uri="mem://t",
                features=features(g),
                label="label",
                passthrough=("row_id",),
                batch_size=batch_size,
                dedup_min_share=min_share,
            ).to_proto()
        )

    return spec(group), spec("")


def frames_of(pipeline: DedupPipeline, wire: pa.RecordBatch, batch_size: int) -> list[bytes]:
    encoder = FrameEncoder()
    out = []
    for seq, start in enumerate(range(0, wire.num_rows, batch_size)):
        rows, sections = pipeline.finish(wire.slice(start, batch_size))
        header = worker_pb2.FrameHeader(split_id="s", batch_seq=seq, num_rows=rows.num_rows)
        out.append(encoder.encode(header, rows, sections))
    return out


def assert_same_batch(got: pa.RecordBatch, want: pa.RecordBatch) -> None:
    g, w = batch_from_arrow(got).expand(), batch_from_arrow(want)
    assert list(g.sparse) == list(w.sparse)
    for name, jt in w.sparse.items():
        assert torch.equal(g.sparse[name].values, jt.values), name
        assert torch.equal(g.sparse[name].offsets, jt.offsets), name
    assert torch.equal(g.dense, w.dense)
    assert w.labels is not None and g.labels is not None
    assert torch.equal(g.labels, w.labels)
    assert torch.equal(g.extras["row_id"], w.extras["row_id"])


@SETTINGS
@given(
    pool=pools,
    picks=st.lists(st.integers(0, 4), min_size=1, max_size=40),
    batch_size=st.integers(1, 16),
    min_share=st.sampled_from([0.0, 0.5, 0.9]),
)
def test_expanded_frames_equal_the_plain_batches(
    pool: list[tuple[Any, ...]], picks: list[int], batch_size: int, min_share: float
) -> None:
    table = table_of([pool[p % len(pool)] for p in picks])
    dedup_spec, plain_spec = specs("user", batch_size, min_share)
    pipeline = DedupPipeline(dedup_spec, table.schema)
    wire = pipeline.apply(table)
    plain = FeaturePipeline(plain_spec, table.schema).apply(table)
    frames = frames_of(pipeline, wire, batch_size)
    decoded = []
    for i, frame in enumerate(frames):
        _, rb = decode_frame(frame)
        assert rb is not None
        decoded.append(rb)
        assert_same_batch(rb, plain.slice(i * batch_size, batch_size))
    # The client's re-batching of cut pieces across frames rebases the inverse indices.
    pieces = [rb.slice(1) for rb in decoded if rb.num_rows > 1] or decoded
    want = [
        plain.slice(i * batch_size + (1 if rb.num_rows > 1 else 0), rb.num_rows - 1 or 1)
        for i, rb in enumerate(decoded)
        if rb.num_rows > 1 or len(pieces) == len(decoded)
    ]
    assert_same_batch(concat_batches(pieces), concat_batches(want))


@SETTINGS
@given(pool=pools, picks=st.lists(st.integers(0, 4), min_size=1, max_size=60))
def test_unique_rows_is_exact_and_in_first_occurrence_order(
    pool: list[tuple[Any, ...]], picks: list[int]
) -> None:
    table = table_of([pool[p % len(pool)] for p in picks]).select(["u0", "u1", "uid", "country"])
    first, inverse = unique_rows(table)
    rows = table.to_pylist()
    assert [rows[int(first[u])] for u in inverse] == rows
    distinct: list[dict[str, Any]] = []
    for row in rows:
        if row not in distinct:
            distinct.append(row)
    assert [rows[int(f)] for f in first] == distinct
    assert inverse.dtype == np.int32
    assert list(first) == sorted(first)


@SETTINGS
@given(
    pool=st.lists(st.none() | st.lists(st.integers(-(2**40), 2**40), max_size=4), min_size=1),
    picks=st.lists(st.integers(0, 6), min_size=2, max_size=60),
    start=st.integers(0, 5),
    list_type=st.sampled_from(
        [pa.list_(pa.int64()), pa.large_list(pa.int64()), pa.list_(pa.int32())]
    ),
)
def test_sliced_integer_lists_compare_exactly(
    pool: list[list[int] | None], picks: list[int], start: int, list_type: pa.DataType
) -> None:
    """The byte-view comparison of integer lists on slices (non-zero offsets into shared
    buffers), null lists beside empty ones, and 32-bit ids."""
    if list_type.value_type == pa.int32():
        pool = [None if r is None else [v % 2**31 for v in r] for r in pool]
    rows = [pool[p % len(pool)] for p in picks]
    whole = pa.record_batch({"a": pa.array([[9, 9, 9], *rows], list_type)})
    batch = whole.slice(1 + min(start, len(rows) - 1))
    check_runs_and_uniques(batch)
    # The same lists over a child array that is itself a slice (its own non-zero offset).
    flat = [v for r in rows for v in (r or [])]
    child = pa.array([5] * start + flat, list_type.value_type).slice(start)
    offsets = np.concatenate([[0], np.cumsum([len(r or []) for r in rows])])
    large = pa.types.is_large_list(list_type)
    array_type = pa.LargeListArray if large else pa.ListArray
    nested = array_type.from_arrays(
        pa.array(offsets, pa.int64() if large else pa.int32()),
        child,
        mask=pa.array([r is None for r in rows]),
    )
    assert nested.to_pylist() == rows
    check_runs_and_uniques(pa.record_batch({"a": nested}))


def check_runs_and_uniques(batch: pa.RecordBatch) -> None:
    values = batch.column(0).to_pylist()
    expected_starts = [i for i in range(len(values)) if i == 0 or values[i] != values[i - 1]]
    assert list(session_starts(batch)) == expected_starts
    first, inverse = unique_rows(batch)
    assert [values[int(first[u])] for u in inverse] == values
    assert len(first) == len({repr(v) for v in values})


def test_no_duplicates_and_all_duplicates() -> None:
    table = pa.table({"a": pa.array([[i] for i in range(50)], pa.list_(pa.int64()))})
    first, inverse = unique_rows(table)
    assert list(first) == list(range(50)) and list(inverse) == list(range(50))
    table = pa.table({"a": pa.array([[7, 8]] * 50, pa.list_(pa.int64()))})
    first, inverse = unique_rows(table)
    assert list(first) == [0] and not inverse.any()


def test_null_ids_never_merge_with_values() -> None:
    table = pa.table({"a": pa.array([[None], [0], None, [], [None], [0]], pa.list_(pa.int64()))})
    first, inverse = unique_rows(table)
    assert list(first) == [0, 1, 2, 3]
    assert list(inverse) == [0, 1, 2, 3, 0, 1]


def test_dedup_section_and_inverse_layout() -> None:
    table = table_of([([1, 2], [3], 1, "a")] * 6 + [([5], [], None, "b")] * 2)
    spec, _ = specs("user", 8)
    pipeline = DedupPipeline(spec, table.schema)
    rows, sections = pipeline.finish(pipeline.apply(table))
    assert [name for name, _ in sections] == ["dedup/user"]
    unique = sections[0][1]
    assert unique.num_rows == 2
    assert unique.schema.names == ["sparse.u0", "sparse.u1", "sparse.uid", "sparse.cx"]
    assert rows.column("dedup.user.inverse").to_pylist() == [0] * 6 + [1] * 2
    assert rows.schema.field("dedup.user.inverse").type == pa.int32()
    assert "extra.u0" not in rows.schema.names and "extra.row_id" in rows.schema.names
    assert rows.schema.metadata[b"dpp.dedup"] == b'{"user": ["u0", "u1", "uid", "cx"]}'


def test_auto_mode_sends_plain_columns_below_the_threshold() -> None:
    table = table_of([([i], [], i, "a") for i in range(8)])
    spec, _ = specs("user", 8, min_share=0.3)
    pipeline = DedupPipeline(spec, table.schema)
    rows, sections = pipeline.finish(pipeline.apply(table))
    assert sections == []
    assert "dedup.user.inverse" not in rows.schema.names
    assert "sparse.u0" in rows.schema.names
    _, rb = decode_frame(FrameEncoder().encode(worker_pb2.FrameHeader(num_rows=8), rows))
    assert rb is not None
    batch = batch_from_arrow(rb)
    assert list(batch.dedup) == ["user"]
    assert batch.dedup["user"].num_unique == 8
    assert batch.dedup["user"].inverse_indices.tolist() == list(range(8))


def test_session_starts_finds_runs() -> None:
    table = pa.table({"a": pa.array([[1], [1], [2], [2], [2], [1]], pa.list_(pa.int64()))})
    assert session_starts(table).tolist() == [0, 2, 5]
    assert session_starts(table.slice(0, 0)).tolist() == []


def test_without_groups_finish_is_the_identity() -> None:
    table = table_of([([1], [2], 3, "a")])
    _, plain_spec = specs("", 4)
    pipeline = DedupPipeline(plain_spec, table.schema)
    wire = pipeline.apply(table)
    rows, sections = pipeline.finish(wire)
    assert rows is wire and sections == []
    assert pipeline.session_starts(table) is None


@pytest.mark.parametrize("rows", [1, 3])
def test_group_only_spec_without_other_features(rows: int) -> None:
    table = table_of([([1, 2], [3], 1, "a")] * rows)
    spec = spec_from_proto(
        SessionSpec(
            table_uri="mem://t",
            features=(Feature("u0", "sparse", dedup_group="g"),),
            batch_size=rows,
        ).to_proto()
    )
    pipeline = DedupPipeline(spec, table.schema)
    out, sections = pipeline.finish(pipeline.apply(table))
    assert out.num_rows == rows and sections[0][1].num_rows == 1


def test_hash_collisions_never_merge_different_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import polars as pl

    def colliding(self: pl.DataFrame, seed: int = 0) -> pl.Series:
        return pl.Series([0] * self.height, dtype=pl.UInt64)

    monkeypatch.setattr(pl.DataFrame, "hash_rows", colliding)
    table = pa.table(
        {
            "a": pa.array([[1], [2], [1], [2, 3], None, [2, 3], None], pa.list_(pa.int64())),
            "s": pa.array(["x", "x", "x", "y", "x", "y", "x"]),
        }
    )
    first, inverse = unique_rows(table)
    rows = table.to_pylist()
    # Every row still maps to an equal row (a collision costs merges, never correctness).
    assert [rows[int(first[u])] for u in inverse] == rows
    assert list(inverse[:3]) == [0, 1, 0]  # row 2 equals row 0, its bucket's first row
