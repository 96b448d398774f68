"""The wire batch: the Arrow record batch a worker streams and a client decodes zero-copy.

Owns the wire schema contract and the packing of computed features into it. Must never
import grpc, storage or torch, nor compute features (that is :mod:`dpp_server.transforms`).
``dpp_client`` decodes this layout without importing ``dpp_server``, so any change here is a
protocol change: keep ``docs/ops.md`` ("Wire schema") in step.

Columns, in this order (B rows, D dense features):

* ``dense``: ``fixed_size_list<item: float32 not null>[D]``, not null; row-major [B, D],
  dense features in spec order. Present only when D > 0.
* ``sparse.<name>``: ``large_list<item: int64>``, not null (a null list became empty); one
  column per sparse feature, in spec order.
* ``label``, ``weight``: float32, not null (null became 0.0); only when the spec names them.
* ``extra.<name>``: each passthrough column with its table type unchanged, nullable.

Schema metadata: ``dpp.dense`` and ``dpp.sparse`` hold JSON lists of the feature names.

Deduplicated feature groups (RecD; :mod:`dpp_server.transforms.dedup`): schema metadata
``dpp.dedup`` holds a JSON object ``{group: [feature names]}`` (present only when the spec has
groups; ``dpp.sparse`` still lists every sparse feature in spec order). After the columns above
come, per group in spec order, either ``dedup.<group>.inverse: int32`` (not null, ``[B]``, the
unique row of each row; the unique rows travel in the frame section ``dedup/<group>`` as one
``sparse.<name>`` column per feature of the group) or, when the group is not deduplicated in
this batch, its features' plain ``sparse.<name>`` columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = [
    "DEDUP_SECTION_PREFIX",
    "DENSE_COLUMN",
    "EXTRA_PREFIX",
    "LABEL_COLUMN",
    "METADATA_DEDUP",
    "METADATA_DENSE",
    "METADATA_SPARSE",
    "SPARSE_PREFIX",
    "SPARSE_TYPE",
    "WEIGHT_COLUMN",
    "assemble_wire_batch",
    "dense_type",
    "inverse_column",
    "wire_schema",
]

DENSE_COLUMN = "dense"
SPARSE_PREFIX = "sparse."
EXTRA_PREFIX = "extra."
LABEL_COLUMN = "label"
WEIGHT_COLUMN = "weight"
METADATA_DENSE = b"dpp.dense"
METADATA_SPARSE = b"dpp.sparse"
SPARSE_TYPE = pa.large_list(pa.int64())
METADATA_DEDUP = b"dpp.dedup"
DEDUP_SECTION_PREFIX = "dedup/"
INVERSE_TYPE = pa.int32()


def inverse_column(group: str) -> str:
    """The rows section's column holding a deduplicated group's inverse index."""
    return f"dedup.{group}.inverse"


def dense_type(width: int) -> pa.DataType:
    """The ``dense`` column's type for ``width`` dense features."""
    return pa.list_(pa.field("item", pa.float32(), nullable=False), width)


def wire_schema(
    dense_names: Sequence[str],
    sparse_names: Sequence[str],
    *,
    label: bool,
    weight: bool,
    extra: Mapping[str, pa.DataType],
) -> pa.Schema:
    """Builds the wire schema of a session.

    Args:
        dense_names: dense feature names in spec order.
        sparse_names: sparse feature names in spec order.
        label: whether batches carry a ``label`` column.
        weight: whether batches carry a ``weight`` column.
        extra: passthrough column name to its table type, in spec order.

    Returns:
        The schema every wire batch of the session has, metadata included.
    """
    fields: list[pa.Field] = []
    if dense_names:
        fields.append(pa.field(DENSE_COLUMN, dense_type(len(dense_names)), nullable=False))
    fields.extend(pa.field(SPARSE_PREFIX + n, SPARSE_TYPE, nullable=False) for n in sparse_names)
    if label:
        fields.append(pa.field(LABEL_COLUMN, pa.float32(), nullable=False))
    if weight:
        fields.append(pa.field(WEIGHT_COLUMN, pa.float32(), nullable=False))
    fields.extend(pa.field(EXTRA_PREFIX + n, t) for n, t in extra.items())
    metadata = {
        METADATA_DENSE: json.dumps(list(dense_names)).encode(),
        METADATA_SPARSE: json.dumps(list(sparse_names)).encode(),
    }
    return pa.schema(fields, metadata=metadata)


def assemble_wire_batch(
    schema: pa.Schema,
    dense: npt.NDArray[np.float32] | None,
    columns: Sequence[pa.Array],
) -> pa.RecordBatch:
    """Packs computed columns into one wire batch.

    Args:
        schema: from :func:`wire_schema`.
        dense: a C-contiguous float32 [B, D] array, or None when D == 0. Its buffer becomes
            the ``dense`` column's values without a copy.
        columns: the remaining columns in schema order, already of their wire types, with no
            nulls where the schema says not null.

    Returns:
        The record batch with exactly ``schema``.

    Raises:
        ValueError: ``dense`` is not C-contiguous float32 (a caller bug: the client reads the
            buffer as row-major).
    """
    arrays: list[pa.Array] = []
    if dense is not None:
        if dense.dtype != np.float32 or dense.ndim != 2 or not dense.flags.c_contiguous:
            raise ValueError(
                f"dense block must be C-contiguous float32 [B, D], got {dense.dtype} "
                f"shape {dense.shape}"
            )
        values = pa.array(dense.reshape(-1), type=pa.float32())
        arrays.append(
            pa.FixedSizeListArray.from_arrays(values, type=schema.field(DENSE_COLUMN).type)
        )
    arrays.extend(columns)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
