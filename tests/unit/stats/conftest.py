"""Generated tables with known distributions for the stats tests (numpy, seeded, in memory).

Three days of rows. ``skewed``: Zipf(1.15) raw ids (a different hot set each day: drift) hashed
with ``sigrid_hash`` into 200k rows, Poisson(8) lists with 20% empty; ``uniform``: uniform ids
in [0, 50k), 0-3 per row; ``price``: a lognormal dense feature with 5% nulls and a few NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

from dpp_server.stats import SketchConfig, SparseFeature, SplitStats
from dpp_server.transforms.hashing import sigrid_hash_values

ROWS_PER_DAY = 30_000
DAYS = 3
HASH_ROWS = 200_000
SPARSE = (SparseFeature("skewed", HASH_ROWS), SparseFeature("uniform"))
DENSE = ("price",)


def _list(lengths: np.ndarray, values: np.ndarray) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64()))


@dataclass(frozen=True)
class Day:
    """One partition's rows: the feature batch and the raw ids of the hashed feature."""

    partition: str
    batch: pa.RecordBatch
    raw: pa.RecordBatch


@dataclass(frozen=True)
class ZipfTable:
    days: tuple[Day, ...]

    def flat(self, name: str, raw: bool = False) -> np.ndarray:
        """Every id of a feature (raw: before hashing), all days."""
        parts = []
        for day in self.days:
            column = (day.raw if raw else day.batch).column(name)
            parts.append(column.flatten().to_numpy())
        return np.concatenate(parts)

    def payloads(self, cuts: int, config: SketchConfig | None = None) -> list[bytes]:
        """Each day cut into ``cuts`` splits (contiguous row ranges), serialized."""
        out = []
        for day in self.days:
            bounds = np.linspace(0, day.batch.num_rows, cuts + 1).astype(int)
            for i in range(cuts):
                start, stop = int(bounds[i]), int(bounds[i + 1])
                stats = SplitStats(f"{day.partition}/{i:03d}", day.partition, SPARSE, DENSE, config)
                stats.update(
                    day.batch.slice(start, stop - start), day.raw.slice(start, stop - start)
                )
                out.append(stats.serialize())
        return out


def build_zipf_table(seed: int = 7) -> ZipfTable:
    rng = np.random.default_rng(seed)
    days = []
    for d in range(DAYS):
        rows = ROWS_PER_DAY
        lengths = rng.poisson(8, rows) * (rng.random(rows) >= 0.2)
        ranks = rng.zipf(1.15, int(lengths.sum()))
        raw = (ranks * 7919 + d * 104_729 * (ranks > 50)) % 5_000_000
        hashed = sigrid_hash_values(raw.astype(np.int64), 3, HASH_ROWS)
        u_lengths = rng.integers(0, 4, rows)
        uniform = rng.integers(0, 50_000, int(u_lengths.sum()))
        price = rng.lognormal(3.0, 1.0, rows).astype(np.float32)
        price[rng.random(rows) < 0.002] = np.nan
        nulls = rng.random(rows) < 0.05
        batch = pa.record_batch(
            {
                "skewed": _list(lengths, hashed),
                "uniform": _list(u_lengths, uniform),
                "price": pa.array(price, mask=nulls),
            }
        )
        days.append(
            Day(f"ds=2026-01-0{d + 1}", batch, pa.record_batch({"skewed": _list(lengths, raw)}))
        )
    return ZipfTable(tuple(days))


@pytest.fixture(scope="session")
def zipf_table() -> ZipfTable:
    return build_zipf_table()


@pytest.fixture(scope="session")
def payloads_by_cuts(zipf_table: ZipfTable) -> Callable[[int], list[bytes]]:
    cache: dict[int, list[bytes]] = {}

    def get(cuts: int) -> list[bytes]:
        if cuts not in cache:
            cache[cuts] = zipf_table.payloads(cuts)
        return cache[cuts]

    return get
