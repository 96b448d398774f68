"""The shard plan: RecShard-style beats the size-balanced baseline; capacity errors are clear."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from dpp_server.stats import CapacityError, SparseFeature, SplitStats, merge
from dpp_server.stats.commands import main_shard_plan
from dpp_server.stats.report import build_report
from dpp_server.stats.shard_plan import PlanConfig, build_plan, tables_from_report

ROWS = 20_000
#: (name, hash rows, mean ids per row, Zipf exponent or None for uniform ids)
FEATURES = (
    ("skew_a", 2_000_000, 20, 1.1),
    ("skew_b", 1_000_000, 10, 1.2),
    ("skew_c", 500_000, 5, 1.3),
    ("flat_a", 4_000_000, 1, None),
    ("flat_b", 3_000_000, 1, None),
    ("flat_c", 2_000_000, 2, None),
)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    rng = np.random.default_rng(11)
    columns = {}
    for name, rows, mean, zipf in FEATURES:
        lengths = rng.poisson(mean, ROWS)
        n = int(lengths.sum())
        ids = rng.zipf(zipf, n) % rows if zipf else rng.integers(0, rows, n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        columns[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int64()))
    batch = pa.record_batch(columns)
    features = [SparseFeature(name, rows) for name, rows, _, _ in FEATURES]
    payloads = []
    for i, start in enumerate(range(0, ROWS, 5000)):
        stats = SplitStats(f"s{i}", "", features, [])
        stats.update(batch.slice(start, 5000))
        payloads.append(stats.serialize())
    return build_report(merge(payloads))


def test_plan_beats_the_size_balanced_baseline_on_both_figures(report: dict[str, Any]) -> None:
    # 12.5M rows x 64 x 4 B = 3.2 GB of tables, 2 x 0.5 GB of HBM: most rows must go to UVM.
    config = PlanConfig(gpus=2, hbm_gb=0.5, dim=64)
    plan = build_plan(tables_from_report(report), config)
    ours, base = plan["plan"]["cost"], plan["baseline"]["cost"]
    assert ours["max_gpu_lookups_per_batch"] < base["max_gpu_lookups_per_batch"]
    assert ours["slow_lookups_per_batch"] < base["slow_lookups_per_batch"]
    assert plan["ratios"]["slow_lookups"] > 2
    assert plan["ratios"]["load_balance"] > 1
    # Same lookups in total, just placed differently; HBM use within capacity.
    assert ours["mean_gpu_lookups_per_batch"] == pytest.approx(base["mean_gpu_lookups_per_batch"])
    for gpu in ours["per_gpu"]:
        assert gpu["hbm_gb"] <= 0.5 + 1e-9
    hot = {t["table"]: t for t in plan["plan"]["tables"]}
    assert hot["skew_a"]["hot_access_share"] > 0.5  # few hot rows take most lookups
    assert hot["flat_a"]["hot_rows"] < hot["flat_a"]["rows"]


def test_everything_in_hbm_when_it_fits(report: dict[str, Any]) -> None:
    plan = build_plan(tables_from_report(report), PlanConfig(gpus=2, hbm_gb=4, dim=64))
    assert plan["plan"]["cost"]["slow_lookups_per_batch"] == 0
    assert plan["ratios"]["slow_lookups"] is None  # baseline has none either: 0 / 0
    assert all(h["compute_kernels"] == ["fused"] for h in plan["torchrec"]["constraints"].values())


def test_capacity_error_names_the_table_and_shortfall(report: dict[str, Any]) -> None:
    config = PlanConfig(gpus=2, hbm_gb=0.5, dim=64, uvm_gb=0.5)
    with pytest.raises(CapacityError) as caught:
        build_plan(tables_from_report(report), config)
    error = caught.value
    assert error.table in {name for name, *_ in FEATURES}
    assert f"table {error.table!r}" in str(error)
    assert f"short by {error.shortfall_gb:.3f} GB" in str(error)
    assert error.shortfall_gb > 0


def test_torchrec_hints_build_parameter_constraints(report: dict[str, Any]) -> None:
    pytest.importorskip("torchrec")
    from dpp_client.shard_plan import torchrec_constraints

    plan = build_plan(tables_from_report(report), PlanConfig(gpus=2, hbm_gb=0.5, dim=64))
    constraints = torchrec_constraints(plan)
    assert set(constraints) == {name for name, *_ in FEATURES}
    skew = constraints["skew_a"]
    assert skew.compute_kernels == ["fused_uvm_caching"]
    assert 0 < skew.cache_params.load_factor < 1
    assert skew.pooling_factors[0] == pytest.approx(20, rel=0.05)


def test_cli_prints_both_plans_and_ratios(report: dict[str, Any], tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(report))
    out = io.StringIO()
    args = [str(stats), "--gpus", "2", "--hbm-gb", "0.5", "--dim", "64"]
    assert main_shard_plan([*args, "--out", str(tmp_path / "plan.json")], out) == 0
    text = out.getvalue()
    assert "RecShard-style" in text and "size-balanced baseline" in text
    assert "ratios baseline/plan" in text
    assert json.loads((tmp_path / "plan.json").read_text())["format"] == "dpp.shard_plan/1"
    assert main_shard_plan([*args, "--uvm-gb", "0.1"], io.StringIO()) == 2
