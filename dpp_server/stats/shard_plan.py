"""Embedding placement from feature statistics: a RecShard-style plan, its baseline, one cost model.

Owns how ``stats.json`` becomes a plan (``dpp shard-plan``). Must never import grpc, storage,
torch or torchrec: the plan's TorchRec hints are plain JSON, which the trainer turns into
``ParameterConstraints`` with :func:`dpp_client.shard_plan.torchrec_constraints`.

One embedding table per sparse feature, ``rows x dim`` values of ``bytes_per_value`` bytes;
``rows`` is the feature's hash range (``max_value``), or for an unhashed feature the upper
bound of its distinct ids. Its expected lookups per batch are ``accesses / rows_of_data x
batch_size`` (coverage x pooling factor x batch size).

* RecShard-style: each table is cut into a hot part (its most accessed rows, in HBM) and a cold
  part (UVM / host memory). The hot rows are chosen across all tables by lookups saved per
  byte (the access CDF's slope, greedily, each table's hottest rows first) within the total
  HBM; then tables go, most looked-up first, to the GPU with the fewest lookups so far that can
  hold them, the hot part shrunk where that GPU's HBM is short.
* Baseline (what most users get by default): whole tables balanced by size, each in HBM when
  it fits on its GPU, else whole in UVM.
* Cost model, both plans: the largest per-GPU expected lookups per batch (a GPU serves every
  lookup of its tables, so the largest bounds the step time) and the expected lookups per
  batch that go to slow (UVM / host) memory: ``lookups x (1 - access share of the hot rows)``.

A hot part is a row share read off the access curve by linear interpolation between its
points; the curve is concave, so this underestimates the hot share slightly: slow lookups are
counted conservatively.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpp_server.errors import CapacityError, StatsError

__all__ = [
    "PlanConfig",
    "TableStats",
    "build_plan",
    "score",
    "tables_from_report",
]

_GB = 1e9


@dataclass(frozen=True)
class PlanConfig:
    """The cluster a plan is for. Each field's trade-off is stated beside it.

    Attributes:
        gpus: GPUs sharing the tables; more spread lookups and add HBM.
        hbm_gb: HBM per GPU for embedding rows (GB = 10**9 bytes); leave room for
            activations, optimizer state and the dense model, or the plan will not fit.
        dim: embedding dimension of every table; bytes grow linearly.
        uvm_gb: UVM / host memory per GPU for cold rows; None means not limited.
        batch_size: samples per training step (global), to turn per-sample lookups into
            per-batch ones; scales the cost figures, not the plan.
        bytes_per_value: 4 for fp32 weights, 2 for fp16; optimizer state is not counted.
    """

    gpus: int
    hbm_gb: float
    dim: int
    uvm_gb: float | None = None
    batch_size: int = 4096
    bytes_per_value: int = 4

    def __post_init__(self) -> None:
        """Rejects a config no plan can use, naming the field."""
        checks = [
            (self.gpus >= 1, "--gpus must be >= 1"),
            (self.hbm_gb >= 0, "--hbm-gb must be >= 0"),
            (self.dim >= 1, "--dim must be >= 1"),
            (self.uvm_gb is None or self.uvm_gb >= 0, "--uvm-gb must be >= 0"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.bytes_per_value >= 1, "bytes_per_value must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise StatsError(f"shard plan: {message}; got {self}")

    @property
    def row_bytes(self) -> int:
        """Bytes of one embedding row."""
        return self.dim * self.bytes_per_value


@dataclass(frozen=True)
class TableStats:
    """What the planner knows of one table.

    Attributes:
        name: the sparse feature.
        rows: embedding rows.
        lookups_per_sample: ids per sample (coverage x pooling factor).
        touched_share: share of ``rows`` ever accessed (1 for an unhashed feature).
        id_share: access curve x: share of the accessed ids, hottest first, ascending.
        access_share: access curve y: share of lookups they take, ascending.
    """

    name: str
    rows: int
    lookups_per_sample: float
    touched_share: float
    id_share: tuple[float, ...]
    access_share: tuple[float, ...]

    def hot_access_share(self, hot_rows: int) -> float:
        """Share of the table's lookups that its ``hot_rows`` hottest rows take."""
        if self.rows == 0 or hot_rows <= 0:
            return 0.0
        ids = min(1.0, hot_rows / (self.rows * self.touched_share))
        return float(np.interp(ids, self.id_share, self.access_share))


def tables_from_report(report: Mapping[str, Any]) -> list[TableStats]:
    """The planner's view of each sparse feature in a ``stats.json`` report.

    Raises:
        StatsError: the report is not a dpp stats report.
    """
    if report.get("format") != "dpp.stats/1":
        raise StatsError(
            f"not a dpp stats report (format {report.get('format')!r}); pass the stats.json "
            "that dpp stats wrote"
        )
    tables = []
    for name, f in sorted(report["sparse"].items()):
        distinct = f["distinct_ids"]
        if f["hash_rows"]:
            rows = int(f["hash_rows"])
            touched = min(1.0, max(distinct["estimate"], 1.0) / rows)
        else:
            rows = max(1, math.ceil(distinct["upper_95"]))
            touched = min(1.0, distinct["estimate"] / rows) if rows else 1.0
        tables.append(
            TableStats(
                name=name,
                rows=rows,
                lookups_per_sample=f["accesses"] / f["rows"] if f["rows"] else 0.0,
                touched_share=max(touched, 1e-12),
                id_share=tuple(f["access_curve"]["id_share"]),
                access_share=tuple(f["access_curve"]["access_share"]),
            )
        )
    return tables


@dataclass(frozen=True)
class _Placement:
    table: TableStats
    gpu: int
    hot_rows: int


def _hot_rows_by_benefit(
    tables: Sequence[TableStats], budget_bytes: float, row_bytes: int
) -> dict[str, int]:
    """Hot rows per table: the most lookups saved per HBM byte, each table hottest-first.

    HBM left once every looked-up row is hot takes never-touched rows too, so tables that fit
    are whole in HBM.
    """
    segments: dict[str, list[tuple[int, float]]] = {}
    for t in tables:
        # Curve points in rows (only the touched rows ever take lookups).
        cut_rows = [round(x * t.touched_share * t.rows) for x in t.id_share]
        pieces: list[tuple[int, float]] = []
        for i in range(1, len(cut_rows)):
            rows = cut_rows[i] - cut_rows[i - 1]
            gain = (t.access_share[i] - t.access_share[i - 1]) * t.lookups_per_sample
            if rows <= 0:
                continue
            # Pool adjacent pieces until densities fall (the curve's concave hull), so taking
            # pieces densest-first also takes each table's rows hottest-first.
            while pieces and pieces[-1][1] * rows <= gain * pieces[-1][0]:
                last_rows, last_gain = pieces.pop()
                rows, gain = rows + last_rows, gain + last_gain
            pieces.append((rows, gain))
        untouched = t.rows - sum(rows for rows, _ in pieces)
        if untouched > 0:
            pieces.append((untouched, 0.0))
        segments[t.name] = pieces
    hot = {t.name: 0 for t in tables}
    heap = [(-p[0][1] / p[0][0], name, 0) for name, p in segments.items() if p]
    heapq.heapify(heap)
    left_rows = int(budget_bytes // row_bytes)
    while heap and left_rows > 0:
        _, name, index = heapq.heappop(heap)
        take = min(segments[name][index][0], left_rows)
        hot[name] += take
        left_rows -= take
        if index + 1 < len(segments[name]):
            rows, gain = segments[name][index + 1]
            heapq.heappush(heap, (-gain / rows, name, index + 1))
    return hot


def _capacity_error(t: TableStats, needed: float, free: float, config: PlanConfig) -> CapacityError:
    short = (needed - free) / _GB
    return CapacityError(
        f"table {t.name!r} ({t.rows} rows x dim {config.dim} = {needed / _GB:.3f} GB) does not "
        f"fit: the most free memory on any of the {config.gpus} GPUs is {free / _GB:.3f} GB "
        f"(HBM + UVM); short by {short:.3f} GB. Add GPUs, raise --hbm-gb or --uvm-gb, or "
        "lower --dim",
        table=t.name,
        shortfall_gb=short,
    )


def _recshard(tables: Sequence[TableStats], config: PlanConfig) -> list[_Placement]:
    hbm = [config.hbm_gb * _GB] * config.gpus
    uvm = [math.inf if config.uvm_gb is None else config.uvm_gb * _GB] * config.gpus
    lookups = [0.0] * config.gpus
    wanted = _hot_rows_by_benefit(tables, sum(hbm), config.row_bytes)
    placements = []
    for t in sorted(tables, key=lambda t: (-t.lookups_per_sample, t.name)):
        size = t.rows * config.row_bytes
        fits = [g for g in range(config.gpus) if hbm[g] + uvm[g] >= size]
        if not fits:
            free = max(hbm[g] + uvm[g] for g in range(config.gpus))
            raise _capacity_error(t, size, free, config)
        gpu = min(fits, key=lambda g: (lookups[g], g))
        hot = min(wanted[t.name], int(hbm[gpu] // config.row_bytes), t.rows)
        cold_bytes = (t.rows - hot) * config.row_bytes
        if cold_bytes > uvm[gpu]:  # UVM is short: keep more rows in HBM
            hot = t.rows - int(uvm[gpu] // config.row_bytes)
            cold_bytes = (t.rows - hot) * config.row_bytes
        hbm[gpu] -= hot * config.row_bytes
        uvm[gpu] -= cold_bytes
        lookups[gpu] += t.lookups_per_sample
        placements.append(_Placement(t, gpu, hot))
    return placements


def _baseline(tables: Sequence[TableStats], config: PlanConfig) -> list[_Placement] | str:
    """Whole tables balanced by size; in HBM when they fit there, else in UVM. A reason when
    whole tables cannot be placed."""
    hbm = [config.hbm_gb * _GB] * config.gpus
    uvm = [math.inf if config.uvm_gb is None else config.uvm_gb * _GB] * config.gpus
    placed = [0.0] * config.gpus
    placements = []
    for t in sorted(tables, key=lambda t: (-t.rows, t.name)):
        size = float(t.rows * config.row_bytes)
        gpu = min(range(config.gpus), key=lambda g: (placed[g], g))
        if hbm[gpu] >= size:
            hbm[gpu] -= size
            placements.append(_Placement(t, gpu, t.rows))
        elif uvm[gpu] >= size:
            uvm[gpu] -= size
            placements.append(_Placement(t, gpu, 0))
        else:
            return f"table {t.name!r} fits neither HBM nor UVM of GPU {gpu} whole"
        placed[gpu] += size
    return placements


def score(placements: Sequence[_Placement], config: PlanConfig) -> dict[str, Any]:
    """The cost model: per-GPU expected lookups per batch and slow-memory lookups per batch."""
    loads = [0.0] * config.gpus
    hbm_gb = [0.0] * config.gpus
    uvm_gb = [0.0] * config.gpus
    names: list[list[str]] = [[] for _ in range(config.gpus)]
    slow = 0.0
    for p in placements:
        lookups = p.table.lookups_per_sample * config.batch_size
        loads[p.gpu] += lookups
        hbm_gb[p.gpu] += p.hot_rows * config.row_bytes / _GB
        uvm_gb[p.gpu] += (p.table.rows - p.hot_rows) * config.row_bytes / _GB
        names[p.gpu].append(p.table.name)
        hot_share = 1.0 if p.hot_rows >= p.table.rows else p.table.hot_access_share(p.hot_rows)
        slow += lookups * (1.0 - hot_share)
    mean = sum(loads) / len(loads)
    return {
        "max_gpu_lookups_per_batch": max(loads),
        "mean_gpu_lookups_per_batch": mean,
        "imbalance": max(loads) / mean if mean else 1.0,
        "slow_lookups_per_batch": slow,
        "per_gpu": [
            {
                "gpu": g,
                "lookups_per_batch": loads[g],
                "hbm_gb": hbm_gb[g],
                "uvm_gb": uvm_gb[g],
                "tables": sorted(names[g]),
            }
            for g in range(config.gpus)
        ],
    }


def _ratio(baseline: float, plan: float) -> float | None:
    """baseline / plan; None when the plan's figure is 0 (infinitely better, or both 0)."""
    return baseline / plan if plan > 0 else None


def _tables_json(placements: Sequence[_Placement], config: PlanConfig) -> list[dict[str, Any]]:
    return [
        {
            "table": p.table.name,
            "gpu": p.gpu,
            "rows": p.table.rows,
            "hot_rows": p.hot_rows,
            "cold_rows": p.table.rows - p.hot_rows,
            "hot_gb": p.hot_rows * config.row_bytes / _GB,
            "cold_gb": (p.table.rows - p.hot_rows) * config.row_bytes / _GB,
            "lookups_per_batch": p.table.lookups_per_sample * config.batch_size,
            "hot_access_share": 1.0
            if p.hot_rows >= p.table.rows
            else p.table.hot_access_share(p.hot_rows),
        }
        for p in sorted(placements, key=lambda p: p.table.name)
    ]


def _hints(placements: Sequence[_Placement]) -> dict[str, dict[str, Any]]:
    """TorchRec ``ParameterConstraints`` fields per table (plain data, torchrec not needed)."""
    hints = {}
    for p in sorted(placements, key=lambda p: p.table.name):
        cold = p.hot_rows < p.table.rows
        hint: dict[str, Any] = {
            "sharding_types": ["table_wise"],
            "compute_kernels": ["fused_uvm_caching" if cold else "fused"],
            "pooling_factors": [p.table.lookups_per_sample],
        }
        if cold:
            hint["cache_params"] = {"load_factor": max(p.hot_rows / p.table.rows, 1e-6)}
        hints[p.table.name] = hint
    return hints


def build_plan(tables: Sequence[TableStats], config: PlanConfig) -> dict[str, Any]:
    """The RecShard-style plan, the baseline, both scored, and the ratios (the plan JSON).

    Raises:
        CapacityError: a table cannot be placed by the RecShard-style plan; it names the
            table and the shortfall in GB.
    """
    plan = _recshard(tables, config)
    plan_cost = score(plan, config)
    baseline = _baseline(tables, config)
    out: dict[str, Any] = {
        "format": "dpp.shard_plan/1",
        "config": {
            "gpus": config.gpus,
            "hbm_gb": config.hbm_gb,
            "uvm_gb": config.uvm_gb,
            "dim": config.dim,
            "batch_size": config.batch_size,
            "bytes_per_value": config.bytes_per_value,
        },
        "plan": {"tables": _tables_json(plan, config), "cost": plan_cost},
        "torchrec": {
            "constraints": _hints(plan),
            "ranks": {p.table.name: p.gpu for p in plan},
        },
    }
    if isinstance(baseline, str):
        out["baseline"] = {"feasible": False, "reason": baseline}
        out["ratios"] = None
        return out
    base_cost = score(baseline, config)
    out["baseline"] = {
        "feasible": True,
        "tables": _tables_json(baseline, config),
        "cost": base_cost,
    }
    out["ratios"] = {
        "load_balance": _ratio(
            base_cost["max_gpu_lookups_per_batch"], plan_cost["max_gpu_lookups_per_batch"]
        ),
        "slow_lookups": _ratio(
            base_cost["slow_lookups_per_batch"], plan_cost["slow_lookups_per_batch"]
        ),
    }
    return out
