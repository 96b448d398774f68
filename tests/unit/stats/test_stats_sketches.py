"""Split sketches: accuracy against exact counts, library compatibility, deterministic merge."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import datasketches as ds
import numpy as np
import pyarrow as pa
import pytest
from conftest import ROWS_PER_DAY, ZipfTable

from dpp_server.stats import SketchConfig, SparseFeature, SplitStats, StatsError, merge
from dpp_server.stats.report import build_report
from dpp_server.stats.sketches import _ThetaBuilder, theta_hashes

Payloads = Callable[[int], list[bytes]]


def test_theta_hashes_and_bytes_match_the_library() -> None:
    rng = np.random.default_rng(1)
    ids = np.concatenate([rng.integers(-(2**63), 2**63 - 1, 20_000), np.arange(-5, 5)])
    ours = _ThetaBuilder(10)
    ours.update(ids[:7000])
    ours.update(ids[7000:])
    theirs = ds.update_theta_sketch(10)
    for value in ids.tolist():
        theirs.update(value)
    union = ds.theta_union(10)
    union.update(theirs)
    expected = union.get_result().serialize()
    assert ours.to_bytes() == expected
    single = ds.update_theta_sketch(12)
    single.update(5)
    assert theta_hashes(np.array([5]))[0] == next(iter(single.compact()))


def test_exact_mode_theta_counts_every_id() -> None:
    builder = _ThetaBuilder(12)
    builder.update(np.array([3, 3, 4, 2**40, -1]))
    assert ds.compact_theta_sketch.deserialize(builder.to_bytes()).get_estimate() == 4.0


def test_exact_fields_and_pooling(zipf_table: ZipfTable, payloads_by_cuts: Payloads) -> None:
    report = build_report(merge(payloads_by_cuts(2)))
    lengths = np.concatenate(
        [np.diff(d.batch.column("skewed").offsets.to_numpy()) for d in zipf_table.days]
    )
    skewed = report["sparse"]["skewed"]
    assert skewed["rows"] == len(lengths) == 3 * ROWS_PER_DAY
    assert skewed["accesses"] == int(lengths.sum())
    assert skewed["coverage"] == np.count_nonzero(lengths) / len(lengths)
    pooling = skewed["pooling"]
    assert pooling["mean"] == lengths.sum() / len(lengths)
    for q in (50, 90, 99):
        # the smallest length holding at least q% of rows: numpy's "inverted_cdf" quantile.
        assert pooling[f"p{q}"] == np.percentile(lengths, q, method="inverted_cdf")
    assert pooling["max"] == lengths.max()


def test_distinct_ids_within_theta_bound(zipf_table: ZipfTable, payloads_by_cuts: Payloads) -> None:
    report = build_report(merge(payloads_by_cuts(2)))
    rse = report["sketches"]["theta_relative_std_error"]
    for name in ("skewed", "uniform"):
        exact = len(np.unique(zipf_table.flat(name)))
        figures = report["sparse"][name]["distinct_ids"]
        assert abs(figures["estimate"] - exact) <= 3 * rse * exact, (name, figures, exact)
        assert figures["lower_95"] <= exact <= figures["upper_95"]
    touched = report["sparse"]["skewed"]["rows_touched_share"]
    assert touched == pytest.approx(len(np.unique(zipf_table.flat("skewed"))) / 200_000, rel=0.05)


def test_heavy_hitters_and_access_cdf_within_bounds(
    zipf_table: ZipfTable, payloads_by_cuts: Payloads
) -> None:
    report = build_report(merge(payloads_by_cuts(3)))
    ids = zipf_table.flat("skewed")
    distinct, counts = np.unique(ids, return_counts=True)
    exact = dict(zip(distinct.tolist(), counts.tolist(), strict=True))
    feature = report["sparse"]["skewed"]
    for hitter in feature["heavy_hitters"]:
        assert hitter["lower"] <= exact[hitter["id"]] <= hitter["upper"], hitter
    top = [h["id"] for h in feature["heavy_hitters"][:5]]
    assert set(top) == set(distinct[np.argsort(-counts, kind="stable")[:5]].tolist())
    descending = np.sort(counts)[::-1]
    epsilon = report["sketches"]["heavy_epsilon"]
    for point in feature["access_cdf"]:
        share = descending[: point["ids"]].sum() / len(ids)
        assert point["lower"] - 1e-12 <= share <= point["upper"] + 1e-12, (point, share)
        if point["id_share"] == 0.001:  # within the head: the sketch's own error bound
            assert abs(point["access_share"] - share) <= epsilon * point["ids"] + 1e-9
    # Skewed: the hottest 1% of ids take over half the accesses; uniform ids a few percent.
    assert feature["access_cdf"][1]["access_share"] > 0.5
    uniform_ids = zipf_table.flat("uniform")
    uniform_desc = np.sort(np.unique(uniform_ids, return_counts=True)[1])[::-1]
    for point in report["sparse"]["uniform"]["access_cdf"]:
        share = uniform_desc[: point["ids"]].sum() / len(uniform_ids)
        assert point["lower"] - 1e-12 <= share <= point["upper"] + 1e-12, (point, share)
        assert point["access_share"] < 0.3


def test_collisions_measured_and_expected(
    zipf_table: ZipfTable, payloads_by_cuts: Payloads
) -> None:
    feature = build_report(merge(payloads_by_cuts(2)))["sparse"]["skewed"]
    raw = len(np.unique(zipf_table.flat("skewed", raw=True)))
    hashed = len(np.unique(zipf_table.flat("skewed")))
    measured = 1 - hashed / raw
    collisions = feature["collisions"]
    assert collisions["measured_lower"] <= measured <= collisions["measured_upper"]
    m = 200_000
    expected = 1 - m * (1 - (1 - 1 / m) ** raw) / raw
    assert collisions["expected_share"] == pytest.approx(expected, rel=0.05)
    # sigrid_hash behaves like a random function: the birthday formula predicts it.
    assert measured == pytest.approx(expected, abs=0.01)
    assert build_report(merge(payloads_by_cuts(2)))["sparse"]["uniform"]["collisions"] is None


def test_dense_exact_fields_and_quantiles(
    zipf_table: ZipfTable, payloads_by_cuts: Payloads
) -> None:
    report = build_report(merge(payloads_by_cuts(3)))
    column = pa.chunked_array([d.batch.column("price") for d in zipf_table.days])
    values = column.drop_null().to_numpy().astype(np.float32)
    finite = np.sort(values[np.isfinite(values)])
    price = report["dense"]["price"]
    assert price["null_share"] == column.null_count / len(column)
    assert price["nan"] == np.count_nonzero(np.isnan(values))
    assert price["min"] == finite[0] and price["max"] == finite[-1]
    assert price["mean"] == math.fsum(finite.astype(np.float64)) / len(finite)
    epsilon = price["rank_error"]
    for q, value in price["quantiles"].items():
        below = np.searchsorted(finite, value, side="left") / len(finite)
        at_most = np.searchsorted(finite, value, side="right") / len(finite)
        assert below - epsilon <= float(q) <= at_most + epsilon, (q, value, below, at_most)


def _without_kll(report: dict[str, Any]) -> dict[str, Any]:
    """The report less what KLL's random compaction moves (dense quantiles and p50s)."""
    copy = json.loads(json.dumps(report))
    for dense in copy["dense"].values():
        dense.pop("quantiles")
        for day in dense["by_partition"].values():
            day.pop("p50")
    return copy


def test_merge_order_and_worker_count_do_not_change_the_report(payloads_by_cuts: Payloads) -> None:
    """The same splits, produced by any workers, arriving in any order: the same report."""
    payloads = payloads_by_cuts(3)
    shuffled = list(payloads)
    random.Random(3).shuffle(shuffled)
    assert _without_kll(build_report(merge(payloads))) == _without_kll(
        build_report(merge(shuffled))
    )


def test_other_split_cuts_agree_exactly_or_within_bounds(payloads_by_cuts: Payloads) -> None:
    """One split per day vs three: exact fields equal; sketch estimates within their bounds."""
    one, three = (build_report(merge(payloads_by_cuts(c))) for c in (1, 3))
    for name in one["sparse"]:
        a, b = one["sparse"][name], three["sparse"][name]
        for key in ("rows", "accesses", "coverage", "pooling", "hash_rows"):
            assert a[key] == b[key], (name, key)
        da, db = a["distinct_ids"], b["distinct_ids"]
        assert db["lower_95"] <= da["estimate"] <= db["upper_95"]
        others = {h["id"]: h for h in b["heavy_hitters"]}
        for hitter in a["heavy_hitters"]:
            if hitter["id"] in others:  # bounds of one id's count from both cuts overlap
                other = others[hitter["id"]]
                assert other["lower"] <= hitter["upper"] and hitter["lower"] <= other["upper"]
    pa_, pb = one["dense"]["price"], three["dense"]["price"]
    for key in ("rows", "null_share", "nan", "inf", "min", "max", "mean"):
        assert pa_[key] == pb[key], key


def test_partitions_and_drift(payloads_by_cuts: Payloads) -> None:
    feature = build_report(merge(payloads_by_cuts(2)))["sparse"]["skewed"]
    days = feature["by_partition"]["partitions"]
    assert list(days) == ["ds=2026-01-01", "ds=2026-01-02", "ds=2026-01-03"]
    assert sum(d["rows"] for d in days.values()) == feature["rows"]
    drift = feature["by_partition"]["drift"]
    assert [(d["from"], d["to"]) for d in drift] == [
        ("ds=2026-01-01", "ds=2026-01-02"),
        ("ds=2026-01-02", "ds=2026-01-03"),
    ]
    # The hottest 50 ranks keep their ids every day, the rest move: the top set stays.
    assert all(d["top_ids_jaccard"] == 1.0 for d in drift)
    assert all(d["id_set_jaccard"]["estimate"] < 0.5 for d in drift)


def test_a_split_counted_twice_is_refused(payloads_by_cuts: Payloads) -> None:
    payloads = payloads_by_cuts(1)
    with pytest.raises(StatsError, match=r"split ds=2026-01-01/000 has two stats payloads"):
        merge([*payloads, payloads[0]])


def test_mismatched_config_and_bad_input_are_refused() -> None:
    def payload(split: str, config: SketchConfig) -> bytes:
        stats = SplitStats(split, "", [SparseFeature("a")], [], config)
        stats.update(pa.record_batch({"a": pa.array([[1, 2]], pa.list_(pa.int64()))}))
        return stats.serialize()

    with pytest.raises(StatsError, match="one session uses one config"):
        merge([payload("a", SketchConfig()), payload("b", SketchConfig(theta_lg_k=10))])
    with pytest.raises(StatsError, match="no split payloads"):
        merge([])
    with pytest.raises(StatsError, match="DPPSTAT1"):
        merge([b"garbage"])
    stats = SplitStats("s9", "", [SparseFeature("a")], ["d"])
    with pytest.raises(StatsError, match=r"split s9: the batch has no column 'd'"):
        stats.update(pa.record_batch({"a": pa.array([[1]], pa.list_(pa.int64()))}))


def test_truncated_batches_keep_heavy_hitter_bounds() -> None:
    """Few ids per batch into frequent items: the truncation error widens the upper bound."""
    rng = np.random.default_rng(5)
    ids = rng.zipf(1.3, 200_000) % 100_000
    column = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 200_001, 4, dtype=np.int32)), pa.array(ids)
    )
    stats = SplitStats("s", "", [SparseFeature("a")], [], SketchConfig(top_ids_per_batch=16))
    for start in range(0, len(column), 5000):
        stats.update(pa.record_batch({"a": column.slice(start, 5000)}))
    merged = merge([stats.serialize()])
    assert merged.sparse_total["a"].truncation_error_total > 0
    distinct, counts = np.unique(ids, return_counts=True)
    exact = dict(zip(distinct.tolist(), counts.tolist(), strict=True))
    for hitter in build_report(merged)["sparse"]["a"]["heavy_hitters"]:
        assert hitter["lower"] <= exact[hitter["id"]] <= hitter["upper"]
