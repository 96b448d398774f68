"""Report extras: bucketize boundaries, the PNG, the pipeline seams, the report command."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from dpp_client import Feature, Op, SessionSpec
from dpp_server.spec import spec_from_proto
from dpp_server.stats import SplitStats, StatsError, merge
from dpp_server.stats.commands import main_stats_report
from dpp_server.stats.features import features_from_wire, measured_features, raw_id_spec
from dpp_server.stats.report import bucketize_op_text, build_report, suggest_boundaries, write_png
from dpp_server.transforms import FeaturePipeline
from dpp_server.transforms.hashing import sigrid_hash_values

Payloads = Callable[[int], list[bytes]]


def test_suggested_boundaries_cut_equal_buckets(payloads_by_cuts: Payloads) -> None:
    merged = merge(payloads_by_cuts(2))
    boundaries = suggest_boundaries(merged, "price", 4)
    assert len(boundaries) == 3 and boundaries == sorted(set(boundaries))
    # lognormal(3, 1): quartiles at exp(3 +- 0.674) and exp(3)
    expected = [np.exp(3 - 0.6745), np.exp(3), np.exp(3 + 0.6745)]
    assert boundaries == pytest.approx(expected, rel=0.05)
    text = bucketize_op_text(boundaries)
    assert text.startswith("{op: bucketize, boundaries: [") and text.endswith("]}")
    with pytest.raises(StatsError, match="no dense feature 'nope'"):
        suggest_boundaries(merged, "nope", 4)
    with pytest.raises(StatsError, match="give 2 or more buckets"):
        suggest_boundaries(merged, "price", 1)


def test_png_is_drawn(payloads_by_cuts: Payloads, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "stats.png"
    write_png(build_report(merge(payloads_by_cuts(1))), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_merges_saved_payloads(payloads_by_cuts: Payloads, tmp_path: Path) -> None:
    files = []
    for i, payload in enumerate(payloads_by_cuts(1)):
        files.append(tmp_path / f"split{i}.bin")
        files[-1].write_bytes(payload)
    out = io.StringIO()
    args = [*map(str, files), "--out", str(tmp_path / "stats.json"), "--suggest-boundaries", "3"]
    assert main_stats_report(args, out) == 0
    assert json.loads((tmp_path / "stats.json").read_text())["format"] == "dpp.stats/1"
    assert "price: {op: bucketize, boundaries: [" in out.getvalue()


def test_worker_seams_on_a_real_pipeline(small_table: str) -> None:
    """The wire batch of the spec's pipeline and the raw-id pipeline feed SplitStats."""
    spec = spec_from_proto(
        SessionSpec(
            table_uri=small_table,
            features=(
                Feature("d0", "dense", source="dense_0", ops=(Op("fill_null", {"value": 0.0}),)),
                Feature(
                    "s0",
                    "sparse",
                    source="sparse_0",
                    ops=(Op("first_x", {"x": 5}), Op("sigrid_hash", {"salt": 1, "max_value": 999})),
                ),
                Feature("s1", "sparse", source="sparse_1", ops=(Op("first_x", {"x": 3}),)),
            ),
            label="label",
        ).to_proto()
    )
    sparse, dense = measured_features(spec)
    assert [(f.name, f.hash_rows) for f in sparse] == [("s0", 999), ("s1", None)]
    assert dense == ("d0",)
    raw_spec = raw_id_spec(spec)
    assert raw_spec is not None and [f.name for f in raw_spec.features] == ["s0"]
    table = pads.dataset(small_table, partitioning="hive").to_table().slice(0, 3000)
    wire = FeaturePipeline(spec).apply(table)
    raw = features_from_wire(FeaturePipeline(raw_spec).apply(table))
    stats = SplitStats("s", "ds=x", sparse, dense)
    stats.update(features_from_wire(wire), raw)
    report = build_report(merge([stats.serialize()]))
    # The raw ids are the first 5 of each list; hashing them gives the ids the model sees.
    raw_ids = pc.list_flatten(pc.list_slice(table.column("sparse_0"), 0, 5)).to_numpy()
    hashed = sigrid_hash_values(raw_ids.astype(np.int64), 1, 999)
    assert report["sparse"]["s0"]["accesses"] == len(hashed)
    assert report["sparse"]["s0"]["distinct_ids"]["estimate"] == len(np.unique(hashed))
    raw_distinct = report["sparse"]["s0"]["collisions"]["raw_distinct_ids"]["estimate"]
    assert raw_distinct == len(np.unique(raw_ids))
    dense_0 = table.column("dense_0").to_numpy(zero_copy_only=False)
    assert report["dense"]["d0"]["min"] == pytest.approx(np.nanmin(np.r_[dense_0, 0.0]))
    assert report["dense"]["d0"]["rows"] == table.num_rows


def test_wire_unpacking_refuses_dedup_batches() -> None:
    schema = pa.schema([pa.field("x", pa.int32())], metadata={b"dpp.dedup": b"{}"})
    with pytest.raises(StatsError, match="deduplicated"):
        features_from_wire(pa.record_batch([pa.array([1], pa.int32())], schema=schema))
