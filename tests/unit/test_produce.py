"""produce_split without threads or transport: one split in, its numbered frames out."""

from __future__ import annotations

import collections

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dpp_client.frames import decode_frame
from dpp_proto import spec_pb2
from dpp_server.master import LeaseGrant
from dpp_server.produce import (
    SessionPipeline,
    StageTotals,
    chunk_permutation,
    produce_split,
    take_rows,
)
from dpp_server.spec import spec_from_proto
from storage import SplitInfo, Table, read_split


def lease() -> LeaseGrant:
    split = SplitInfo("s1", "/x.parquet", 1, (0,), 10, {})
    return LeaseGrant(session_id="x", epoch=2, rank=0, split=split, start_batch=0)


def test_take_rows_slices_within_a_piece_and_joins_across() -> None:
    pieces = collections.deque(
        [pa.record_batch({"x": list(range(0, 5))}), pa.record_batch({"x": list(range(5, 8))})]
    )
    first = take_rows(pieces, 3)
    second = take_rows(pieces, 4)
    assert first.column("x").to_pylist() == [0, 1, 2]
    assert second.column("x").to_pylist() == [3, 4, 5, 6]
    assert [p.column("x").to_pylist() for p in pieces] == [[7]]


def test_session_permutation_moves_whole_sessions() -> None:
    starts = np.array([0, 3, 4, 9], dtype=np.int64)
    order = chunk_permutation(7, lease(), 0, 12, starts).to_pylist()
    assert sorted(order) == list(range(12))
    blocks = [[0, 1, 2], [3], [4, 5, 6, 7, 8], [9, 10, 11]]
    i = 0
    seen = []
    while i < 12:
        block = next(b for b in blocks if b[0] == order[i])
        assert order[i : i + len(block)] == block
        seen.append(block[0])
        i += len(block)
    assert sorted(seen) == [0, 3, 4, 9]
    assert order == chunk_permutation(7, lease(), 0, 12, starts).to_pylist()


def test_a_split_yields_its_filtered_rows_from_start_batch_and_times_every_stage(
    small_table: str,
) -> None:
    spec = spec_from_proto(
        spec_pb2.SessionSpec(
            table_uri=small_table,
            batch_size=100,
            target_split_rows=4000,
            passthrough=["row_id"],
            label="label",
            row_filter="label = 0",
            features=[{"name": "d0", "source": "dense_0", "kind": spec_pb2.FEATURE_KIND_DENSE}],
        )
    )
    table = Table.open(small_table)
    split = table.plan_splits(spec.target_split_rows).splits[0]
    session = SessionPipeline.compile(spec, read_batch_rows=1000)
    want = pa.Table.from_batches(
        read_split(
            split,
            filesystem=table.filesystem,
            columns=["row_id", "label"],
            row_filter=None,
            batch_rows=1000,
        )
    ).filter(pc.field("label") == 0)
    grant = LeaseGrant(session_id="s", epoch=1, rank=0, split=split, start_batch=2)
    totals = StageTotals()
    frames = [decode_frame(f) for f in produce_split(session, grant, totals)]

    *batches, (end, no_rows) = frames
    batch_count = -(-want.num_rows // 100)
    assert end.last_in_split and no_rows is None and end.batch_seq == batch_count
    assert [h.batch_seq for h, _ in batches] == list(range(2, batch_count))
    assert {(h.session_id, h.epoch, h.split_id) for h, _ in batches} == {("s", 1, split.split_id)}
    row_ids = [
        r for _, rows in batches if rows is not None for r in rows["extra.row_id"].to_pylist()
    ]
    assert row_ids == want.column("row_id").to_pylist()[200:]
    assert totals.counts["rows_read"] == want.num_rows < split.num_rows
    assert totals.counts["rows_out"] == len(row_ids)
    assert totals.counts["batches_out"] == batch_count - 2
    for stage in ("read_s", "filter_s", "transform_s", "batch_s", "serialize_s"):
        assert totals.seconds[stage] > 0, stage


def test_rows_dropped_by_a_mask_transform_exactly_as_rows_filtered_first(
    small_table: str,
) -> None:
    """The worker hands the row filter's mask to the transform instead of filtering first;
    the wire batch must be the one of the filtered rows, column for column (ids hashed,
    dense filled, passthrough kept), with and without sampling."""
    from dpp_server.transforms import FeaturePipeline
    from storage import parse_filter
    from storage.reader import row_mask, scan_split

    features = [
        {
            "name": "d0",
            "source": "dense_0",
            "kind": spec_pb2.FEATURE_KIND_DENSE,
            "ops": [{"op": "fill_null", "params": {"value": 0.0}}, {"op": "log1p"}],
        },
        {
            "name": "s0",
            "source": "sparse_0",
            "kind": spec_pb2.FEATURE_KIND_SPARSE,
            "ops": [
                {"op": "first_x", "params": {"x": 3}},
                {"op": "sigrid_hash", "params": {"salt": 5, "max_value": 1000}},
            ],
        },
    ]
    table = Table.open(small_table)
    split = table.plan_splits(4000).splits[0]
    row_filter = parse_filter("dense_1 IS NOT NULL OR label = 1", "row_filter")
    for sampled in ({}, {"sample_rate": 0.5, "sample_key": "row_id", "seed": 3}):
        spec = spec_from_proto(
            spec_pb2.SessionSpec(
                table_uri=small_table,
                batch_size=100,
                passthrough=["row_id"],
                label="label",
                row_filter=row_filter.text,
                features=features,
                **sampled,  # type: ignore[arg-type]
            )
        )
        pipeline = FeaturePipeline(spec)
        for scanned in scan_split(
            split,
            filesystem=table.filesystem,
            columns=pipeline.input_columns,
            row_filter=row_filter,
            batch_rows=1000,
        ):
            keep = row_mask(scanned, row_filter)
            assert keep is not None and keep.null_count == 0
            assert 0 < keep.true_count < scanned.num_rows
            got = pipeline.apply(scanned, keep)
            want = pipeline.apply(scanned.filter(row_filter.expression))
            assert got.equals(want), sampled
