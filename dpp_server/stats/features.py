"""What a stats session measures for a spec, and how a worker gets it from its pipeline.

Owns the mapping from a :class:`~dpp_server.spec.Spec` to the features a
:class:`~dpp_server.stats.sketches.SplitStats` measures, the spec whose pipeline yields the raw
ids of hashed features (the ids entering their last ``sigrid_hash``), and the unpacking of a
wire batch into one column per feature. Must never import grpc, storage or torch.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa

from dpp_proto import wire
from dpp_server.errors import StatsError
from dpp_server.spec import Feature, Spec
from dpp_server.stats.sketches import SparseFeature

__all__ = ["features_from_wire", "measured_features", "raw_id_spec"]

#: Ops that hash one id to ``[0, max_value)``: their input is the feature's raw id.
_HASH_TO_RANGE = "sigrid_hash"


def _last_hash(feature: Feature) -> int | None:
    """Index of the feature's last ``sigrid_hash`` op, or None."""
    for index in range(len(feature.ops) - 1, -1, -1):
        if feature.ops[index].op == _HASH_TO_RANGE:
            return index
    return None


def measured_features(spec: Spec) -> tuple[tuple[SparseFeature, ...], tuple[str, ...]]:
    """The sparse features (with their hash range) and dense feature names a spec measures."""
    sparse = []
    for f in spec.sparse_features:
        index = _last_hash(f)
        rows = None if index is None else int(f.ops[index].params["max_value"])
        sparse.append(SparseFeature(f.name, rows))
    return tuple(sparse), tuple(f.name for f in spec.dense_features)


def raw_id_spec(spec: Spec) -> Spec | None:
    """A spec whose pipeline yields, per hashed sparse feature, the ids its last hash takes in.

    Its features are the hashed sparse features with their ops cut before the last
    ``sigrid_hash`` (so ``first_x``, ``map_id`` ... still apply), with no dense features, no
    label, weight, passthrough or deduplication, and with the same sampling (so the same rows
    are kept). None when no feature is hashed to a range.

    Running it costs the cut op chains a second time (the hash itself is not run again).
    """
    features = []
    for f in spec.sparse_features:
        index = _last_hash(f)
        if index is not None:
            features.append(dataclasses.replace(f, ops=f.ops[:index], dedup_group=""))
    if not features:
        return None
    return dataclasses.replace(
        spec,
        features=tuple(features),
        label="" if spec.negative_downsample_rate == 1.0 else spec.label,
        weight="",
        passthrough=(),
    )


def features_from_wire(batch: pa.RecordBatch) -> pa.RecordBatch:
    """One column per feature (named as the feature) from a wire batch without dedup sections.

    Dense values come out of the wire's ``[B, D]`` block, where nulls are already 0.0: fed
    this way a stats session reports a null share of 0 for every dense feature.

    Raises:
        StatsError: the batch is deduplicated (a stats spec must not name dedup groups).
    """
    metadata = batch.schema.metadata or {}
    if wire.METADATA_DEDUP in metadata:
        raise StatsError(
            "the wire batch is deduplicated; build the stats pipeline from a spec without "
            "dedup groups (raw_id_spec and the stats session drop them)"
        )
    dense_names = json.loads(metadata.get(wire.METADATA_DENSE, b"[]"))
    sparse_names = json.loads(metadata.get(wire.METADATA_SPARSE, b"[]"))
    columns: dict[str, pa.Array] = {}
    if dense_names:
        block = batch.column(wire.DENSE_COLUMN).flatten().to_numpy(zero_copy_only=False)
        matrix = np.asarray(block, dtype=np.float32).reshape(batch.num_rows, len(dense_names))
        for i, name in enumerate(dense_names):
            columns[name] = pa.array(np.ascontiguousarray(matrix[:, i]))
    for name in sparse_names:
        columns[name] = batch.column(wire.SPARSE_PREFIX + name)
    return pa.record_batch(columns)
