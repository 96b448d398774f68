"""Merged sketches to the stats report (``stats.json``), bucketize boundaries and a PNG.

Owns what each reported figure means and the error bound printed beside it
(``docs/stats.md`` explains them for users). Must never import grpc, storage or torch;
matplotlib is imported only by :func:`write_png`, as an optional extra.

Bounds. Exact fields (rows, coverage, pooling factors, null shares, min, max, mean) have none.
A distinct count gives its theta sketch's 2-standard-deviation bounds (~95%). A heavy
hitter's true count lies in ``[lower, upper]`` (the frequent-items sketch's deterministic
bounds, the upper one widened by the batch truncation, see :mod:`.sketches`). An access-CDF
point gives an estimate and rigorous ``[lower, upper]`` bounds (given the distinct count's
upper bound): within the head the sketch's bounds, beyond it the untracked accesses spread
evenly (lower) or each at the largest count an untracked id may have (upper); the estimate
beyond the head extends the head's power law. Dense quantiles carry KLL's normalized rank
error (single-sided, 99%).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import datasketches as ds
import numpy as np

from dpp_server.errors import StatsError
from dpp_server.stats.sketches import DenseSketches, MergedStats, SparseSketches

__all__ = [
    "REPORT_FORMAT",
    "TOP_ID_SHARES",
    "access_share",
    "bucketize_op_text",
    "build_report",
    "dense_boundaries",
    "suggest_boundaries",
    "write_png",
]

REPORT_FORMAT = "dpp.stats/1"
#: The access-CDF points reported: the share of accesses to the hottest 0.1%, 1%, 10% of ids.
TOP_ID_SHARES = (0.001, 0.01, 0.1)
DENSE_QUANTILES = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
#: Points of the access curve kept for the shard planner (log-spaced id shares).
_CURVE_POINTS = 48
#: Head ranks used to fit the power law extended over the tail: the last decade of the head.
_FIT_MIN_HEAD = 20
_NO_FALSE_NEGATIVES = ds.frequent_items_error_type.NO_FALSE_NEGATIVES


def _theta_figures(sketch: Any) -> dict[str, float]:
    return {
        "estimate": float(sketch.get_estimate()),
        "lower_95": float(sketch.get_lower_bound(2)),
        "upper_95": float(sketch.get_upper_bound(2)),
    }


class _Head:
    """The tracked ids of a frequent-items sketch, hottest first, and the bounds they allow."""

    def __init__(self, sk: SparseSketches) -> None:
        items = sk.heavy.get_frequent_items(_NO_FALSE_NEGATIVES, 0)
        items.sort(key=lambda it: (-it[1], it[0]))
        self.items: list[tuple[int, int, int, int]] = items
        self.total = sk.accesses
        truncation = sk.truncation_error_total
        self.truncation = float(truncation)
        self.estimates = np.array([it[1] for it in items], dtype=np.float64)
        self.lowers = np.sort(np.array([it[2] for it in items], dtype=np.float64))[::-1]
        self.uppers = np.sort(np.array([it[3] + truncation for it in items], dtype=np.float64))
        self.uppers = self.uppers[::-1]
        #: the most accesses an id the sketch does not track can have.
        self.untracked_max = float(sk.heavy.epsilon * sk.heavy.total_weight + truncation)
        self.distinct = max(float(sk.distinct.get_estimate()), float(len(items)))
        self.distinct_upper = max(float(sk.distinct.get_upper_bound(2)), self.distinct)
        self.slope = self._fit_slope()

    def _fit_slope(self) -> float | None:
        """The power-law exponent of the head's last decade of ranks, None if too short."""
        count = len(self.estimates)
        if count < _FIT_MIN_HEAD:
            return None
        ranks = np.arange(count // 10 + 1, count + 1, dtype=np.float64)
        counts = self.estimates[count // 10 :]
        if counts.min() <= 0 or counts.max() == counts.min():
            return None
        slope = -float(np.polyfit(np.log(ranks), np.log(counts), 1)[0])
        return min(max(slope, 0.0), 3.0)

    def top_accesses(self, k: int) -> tuple[float, float, float]:
        """(estimate, lower, upper) accesses of the ``k`` most accessed ids."""
        head = len(self.items)
        if k <= head:
            estimate = float(self.estimates[:k].sum())
            lower = float(self.lowers[:k].sum())
            pad = np.full(k, self.untracked_max)
            upper = float(np.sort(np.concatenate([self.uppers[:k], pad]))[::-1][:k].sum())
            return estimate, lower, min(upper, float(self.total))
        head_estimate = float(self.estimates.sum())
        untracked_low = max(0.0, self.total - float(self.uppers.sum()))
        spread = max(self.distinct_upper - head, 1.0)
        lower = float(self.lowers.sum()) + untracked_low * min(1.0, (k - head) / spread)
        upper = min(float(self.total), float(self.uppers.sum()) + (k - head) * self.untracked_max)
        rest = max(0.0, self.total - head_estimate)
        estimate = head_estimate + rest * self._tail_share(head, k)
        return min(max(estimate, lower), upper), lower, upper

    def _tail_share(self, head: int, k: int) -> float:
        """Share of the untracked accesses going to ranks ``head+1 .. k``."""
        distinct = max(self.distinct, float(k))
        if distinct <= head:
            return 1.0
        if self.slope is None:
            return (k - head) / (distinct - head)

        def integral(a: float, b: float) -> float:
            s = self.slope or 0.0
            if abs(s - 1.0) < 1e-9:
                return math.log(b) - math.log(a)
            return float((b ** (1.0 - s) - a ** (1.0 - s)) / (1.0 - s))

        whole = integral(head + 0.5, distinct + 0.5)
        return integral(head + 0.5, k + 0.5) / whole if whole > 0 else 1.0


def access_share(sk: SparseSketches, id_share: float) -> dict[str, float]:
    """The share of accesses going to the hottest ``id_share`` of the distinct ids.

    Returns:
        ``{"id_share", "ids", "access_share", "lower", "upper"}``; ``ids`` is the number of
        hottest ids (``ceil(id_share * distinct estimate)``, at least 1).
    """
    if sk.accesses == 0:
        return {"id_share": id_share, "ids": 0, "access_share": 0.0, "lower": 0.0, "upper": 0.0}
    head = _Head(sk)
    return _share_of(head, id_share)


def _share_of(head: _Head, id_share: float) -> dict[str, float]:
    k = max(1, math.ceil(id_share * head.distinct - 1e-9))
    estimate, lower, upper = head.top_accesses(k)
    total = float(head.total)
    return {
        "id_share": id_share,
        "ids": k,
        "access_share": estimate / total,
        "lower": lower / total,
        "upper": upper / total,
    }


def _pooling(sk: SparseSketches) -> dict[str, Any]:
    lengths = np.array(sorted(sk.lengths), dtype=np.int64)
    rows = np.array([sk.lengths[int(v)] for v in lengths], dtype=np.int64)
    cumulative = np.cumsum(rows)

    def quantile(q: float) -> int:
        if len(lengths) == 0:
            return 0
        index = int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))
        return int(lengths[min(index, len(lengths) - 1)])

    return {
        "mean": sk.accesses / sk.rows if sk.rows else 0.0,
        "mean_nonempty": sk.accesses / sk.nonempty_rows if sk.nonempty_rows else 0.0,
        "p50": quantile(0.5),
        "p90": quantile(0.9),
        "p99": quantile(0.99),
        "max": int(lengths[-1]) if len(lengths) else 0,
        "histogram": [[int(v), int(r)] for v, r in zip(lengths, rows, strict=True)],
    }


def _collisions(sk: SparseSketches) -> dict[str, Any] | None:
    """Birthday effect of hashing ``n`` distinct raw ids into ``m`` rows.

    expected share = 1 - m * (1 - (1 - 1/m)**n) / n (the expected distinct rows over n);
    measured share = 1 - distinct hashed ids / distinct raw ids.
    """
    if sk.raw_distinct is None or sk.hash_rows is None or sk.raw_distinct.is_empty():
        return None
    m = float(sk.hash_rows)
    raw = _theta_figures(sk.raw_distinct)
    hashed = _theta_figures(sk.distinct)
    n = raw["estimate"]
    expected_rows = -m * math.expm1(n * math.log1p(-1.0 / m)) if m > 1 else 1.0
    return {
        "raw_distinct_ids": raw,
        "expected_share": 1.0 - expected_rows / n,
        "measured_share": max(0.0, 1.0 - hashed["estimate"] / n),
        "measured_lower": max(0.0, 1.0 - hashed["upper_95"] / max(raw["lower_95"], 1.0)),
        "measured_upper": min(1.0, max(0.0, 1.0 - hashed["lower_95"] / raw["upper_95"])),
    }


def _heavy_hitters(head: _Head, top_k: int) -> list[dict[str, Any]]:
    total = float(head.total) or 1.0
    return [
        {
            "id": int(item),
            "accesses": int(estimate),
            "lower": int(lower),
            "upper": int(upper + head.truncation),
            "share": estimate / total,
        }
        for item, estimate, lower, upper in head.items[:top_k]
    ]


def _access_curve(head: _Head) -> dict[str, list[float]]:
    """The access CDF on log-spaced id shares from one id to all: what the planner reads."""
    if head.total == 0:
        return {"id_share": [0.0, 1.0], "access_share": [0.0, 0.0]}
    shares = np.unique(np.geomspace(1.0 / head.distinct, 1.0, _CURVE_POINTS))
    points = [_share_of(head, float(x)) for x in shares]
    access = np.maximum.accumulate([p["access_share"] for p in points])
    return {
        "id_share": [0.0, *(float(x) for x in shares)],
        "access_share": [0.0, *(min(1.0, float(a)) for a in access)],
    }


def _sparse_report(sk: SparseSketches, top_k: int) -> dict[str, Any]:
    head = _Head(sk)
    distinct = _theta_figures(sk.distinct)
    return {
        "rows": sk.rows,
        "accesses": sk.accesses,
        "coverage": sk.nonempty_rows / sk.rows if sk.rows else 0.0,
        "pooling": _pooling(sk),
        "distinct_ids": distinct,
        "hash_rows": sk.hash_rows,
        "rows_touched_share": None if sk.hash_rows is None else distinct["estimate"] / sk.hash_rows,
        "access_cdf": [_share_of(head, x) for x in TOP_ID_SHARES] if sk.accesses else [],
        "access_curve": _access_curve(head),
        "heavy_hitters": _heavy_hitters(head, top_k),
        "heavy_hitters_error_max": head.untracked_max,
        "collisions": _collisions(sk),
    }


def _top_ids(sk: SparseSketches, k: int) -> list[int]:
    items = sk.heavy.get_frequent_items(_NO_FALSE_NEGATIVES, 0)
    items.sort(key=lambda it: (-it[1], it[0]))
    return [int(it[0]) for it in items[:k]]


def _sparse_partitions(per: Mapping[str, SparseSketches], top_k: int) -> dict[str, Any]:
    days: dict[str, dict[str, Any]] = {
        p: {
            "rows": sk.rows,
            "accesses": sk.accesses,
            "coverage": sk.nonempty_rows / sk.rows if sk.rows else 0.0,
            "distinct_ids": float(sk.distinct.get_estimate()),
            "top_ids": _top_ids(sk, top_k),
        }
        for p, sk in per.items()
    }
    drift = []
    names = list(per)
    for before, after in itertools.pairwise(names):
        a, b = per[before], per[after]
        top_a, top_b = set(days[before]["top_ids"]), set(days[after]["top_ids"])
        union = top_a | top_b
        jaccard = ds.theta_jaccard_similarity.jaccard(a.distinct, b.distinct)
        da, db = days[before]["distinct_ids"], days[after]["distinct_ids"]
        drift.append(
            {
                "from": before,
                "to": after,
                "distinct_ratio": db / da if da else None,
                "top_ids_jaccard": len(top_a & top_b) / len(union) if union else 1.0,
                "id_set_jaccard": {
                    "lower": jaccard[0],
                    "estimate": jaccard[1],
                    "upper": jaccard[2],
                },
            }
        )
    return {"partitions": days, "drift": drift}


def _dense_report(dk: DenseSketches) -> dict[str, Any]:
    quantiles: dict[str, float] = {}
    if dk.finite:
        values = dk.quantiles.get_quantiles(list(DENSE_QUANTILES))
        quantiles = {f"{q:g}": float(v) for q, v in zip(DENSE_QUANTILES, values, strict=True)}
    return {
        "rows": dk.rows,
        "null_share": dk.nulls / dk.rows if dk.rows else 0.0,
        "nan": dk.nans,
        "inf": dk.infs,
        "min": dk.min_value,
        "max": dk.max_value,
        "mean": dk.mean,
        "quantiles": quantiles,
        "rank_error": float(dk.quantiles.normalized_rank_error(False)),
    }


def build_report(merged: MergedStats, top_k: int = 20) -> dict[str, Any]:
    """The JSON-ready stats report (what ``dpp stats --out stats.json`` writes).

    Args:
        merged: every split's sketches, merged.
        top_k: heavy hitters listed per feature, and top ids per partition for drift.
    """
    config = merged.config
    sparse = {}
    for name, total in merged.sparse_total.items():
        entry = _sparse_report(total, top_k)
        entry["by_partition"] = _sparse_partitions(merged.sparse[name], top_k)
        sparse[name] = entry
    dense = {}
    for name, dtotal in merged.dense_total.items():
        dentry = _dense_report(dtotal)
        dentry["by_partition"] = {
            p: {
                "rows": d.rows,
                "null_share": d.nulls / d.rows if d.rows else 0.0,
                "mean": d.mean,
                "p50": float(d.quantiles.get_quantile(0.5)) if d.finite else None,
            }
            for p, d in merged.dense[name].items()
        }
        dense[name] = dentry
    return {
        "format": REPORT_FORMAT,
        "splits": len(merged.split_ids),
        "partitions": list(merged.partitions),
        "sketches": {
            **asdict(config),
            "theta_relative_std_error": 1.0 / math.sqrt(1 << config.theta_lg_k),
            "heavy_epsilon": float(
                ds.frequent_items_sketch.get_epsilon_for_lg_size(config.heavy_lg_max_map_size)
            ),
            "kll_rank_error": float(
                ds.kll_floats_sketch.get_normalized_rank_error(config.kll_k, False)
            ),
        },
        "sparse": sparse,
        "dense": dense,
    }


def suggest_boundaries(merged: MergedStats, feature: str, buckets: int) -> list[float]:
    """Bucketize boundaries cutting a dense feature into ``buckets`` equally filled buckets.

    The ``i / buckets`` quantiles (KLL; each bucket's share is off by at most twice the rank
    error), rounded to 6 significant digits so they paste well, repeats dropped (a value
    holding many rows makes fewer, fuller buckets).

    Raises:
        StatsError: unknown feature, ``buckets`` < 2, or no finite values to cut.
    """
    if feature not in merged.dense_total:
        raise StatsError(
            f"no dense feature {feature!r} in the stats; dense features: "
            f"{sorted(merged.dense_total)}"
        )
    if buckets < 2:
        raise StatsError(f"--suggest-boundaries {buckets}: give 2 or more buckets")
    dk = merged.dense_total[feature]
    if dk.finite == 0:
        raise StatsError(f"dense feature {feature!r} has no finite values to cut into buckets")
    values = dk.quantiles.get_quantiles([i / buckets for i in range(1, buckets)])
    out: list[float] = []
    for value in values:
        rounded = float(f"{float(value):.6g}")
        if math.isfinite(rounded) and (not out or rounded > out[-1]):
            out.append(rounded)
    if not out:
        raise StatsError(f"dense feature {feature!r} is constant; there is nothing to cut")
    return out


def dense_boundaries(merged: MergedStats, buckets: int) -> dict[str, list[float]]:
    """``--suggest-boundaries N``: per dense feature with values to cut (finite, not constant),
    N equally filled buckets' boundaries; none when ``buckets`` < 2."""
    if buckets < 2:
        return {}
    return {
        name: suggest_boundaries(merged, name, buckets)
        for name, total in merged.dense_total.items()
        if total.finite and total.min_value != total.max_value
    }


def bucketize_op_text(boundaries: Sequence[float]) -> str:
    """The ready-to-paste op, e.g. ``{op: bucketize, boundaries: [0.5, 2, 10]}``."""
    return "{op: bucketize, boundaries: [" + ", ".join(f"{b:g}" for b in boundaries) + "]}"


def write_png(report: Mapping[str, Any], path: str, max_features: int = 12) -> None:
    """Draws the access CDFs and pooling-factor distributions of the report into a PNG.

    Args:
        report: a :func:`build_report` result (or ``stats.json`` read back).
        path: where to write the PNG.
        max_features: features drawn (those with the most accesses), to keep it readable.

    Raises:
        StatsError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise StatsError(
            "drawing the stats PNG needs matplotlib; install it (pip install 'dpp[bench]') "
            "or leave out --png"
        ) from exc
    sparse = report["sparse"]
    names = sorted(sparse, key=lambda n: -int(sparse[n]["accesses"]))[:max_features]
    fig, (cdf_ax, pool_ax) = plt.subplots(1, 2, figsize=(13, 5))
    for name in names:
        curve = sparse[name]["access_curve"]
        cdf_ax.plot(curve["id_share"][1:], curve["access_share"][1:], label=name)
        histogram = np.array(sparse[name]["pooling"]["histogram"], dtype=np.float64)
        if len(histogram):
            share = np.cumsum(histogram[:, 1]) / histogram[:, 1].sum()
            pool_ax.step(histogram[:, 0], share, where="post", label=name)
    cdf_ax.set_xscale("log")
    cdf_ax.set_xlabel("share of distinct ids (hottest first)")
    cdf_ax.set_ylabel("share of accesses")
    cdf_ax.set_title("access CDF")
    cdf_ax.grid(True, alpha=0.3)
    pool_ax.set_xlabel("ids per row (pooling factor)")
    pool_ax.set_ylabel("share of rows")
    pool_ax.set_title("pooling factor CDF")
    pool_ax.grid(True, alpha=0.3)
    cdf_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
