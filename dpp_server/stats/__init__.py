"""Feature statistics from the worker pool and the embedding shard plan built on them (RecShard).

Pure cores only: :mod:`.sketches` (a split's mergeable sketches, their bytes, the merge),
:mod:`.features` (which features a spec measures, the raw ids of hashed ones),
:mod:`.report` (merged sketches to the JSON report, bucketize boundaries, the PNG) and
:mod:`.shard_plan` (stats to a placement plan and its baseline, one cost model).
Must never import grpc services, storage or torch.
"""

from __future__ import annotations

from dpp_server.errors import CapacityError, StatsError
from dpp_server.stats.sketches import (
    MergedStats,
    SketchConfig,
    SparseFeature,
    SplitStats,
    merge,
    partition_key,
)

__all__ = [
    "CapacityError",
    "MergedStats",
    "SketchConfig",
    "SparseFeature",
    "SplitStats",
    "StatsError",
    "merge",
    "partition_key",
]
