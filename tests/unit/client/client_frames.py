"""Test-only builders of "rows" record batches and StreamBatches frames.

Frames are encoded by the contract's own :class:`dpp_proto.wire.FrameEncoder` (which the
client may import), so the client is tested without a server.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from dpp_proto import worker_pb2
from dpp_proto.wire import FrameEncoder


def make_rows(
    num_rows: int,
    dense_dim: int = 3,
    sparse_names: tuple[str, ...] = ("s0", "s1"),
    mean_len: int = 3,
    label: bool = True,
    weight: bool = False,
    row_id_start: int = 0,
    seed: int = 0,
) -> pa.RecordBatch:
    """Builds a record batch with the wire schema; values are deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    arrays: list[pa.Array] = []
    names: list[str] = []
    if dense_dim:
        flat = pa.array(
            np.arange(num_rows * dense_dim, dtype=np.float32) + row_id_start * dense_dim
        )
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, dense_dim))
        names.append("dense")
    for i, name in enumerate(sparse_names):
        lengths = rng.integers(0, 2 * mean_len + 1, size=num_rows)
        offsets = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = rng.integers(0, 1000, size=int(offsets[-1]), dtype=np.int64) + 1000 * i
        arrays.append(pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values)))
        names.append(f"sparse.{name}")
    if label:
        arrays.append(pa.array(rng.random(num_rows, dtype=np.float32)))
        names.append("label")
    if weight:
        arrays.append(pa.array(np.full(num_rows, 2.0, dtype=np.float32)))
        names.append("weight")
    arrays.append(pa.array(np.arange(row_id_start, row_id_start + num_rows, dtype=np.int64)))
    names.append("extra.row_id")
    metadata = {
        "dpp.dense": json.dumps([f"dense_{i}" for i in range(dense_dim)]),
        "dpp.sparse": json.dumps(list(sparse_names)),
    }
    fields = [pa.field(n, a.type) for n, a in zip(names, arrays, strict=True)]
    if dense_dim:
        fields[0] = pa.field(
            "dense", pa.list_(pa.field("item", pa.float32(), nullable=False), dense_dim)
        )
        arrays[0] = arrays[0].cast(fields[0].type)
    schema = pa.schema(fields, metadata=metadata)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def encode_frame(header: worker_pb2.FrameHeader, rb: pa.RecordBatch | None) -> bytes:
    """Encodes a frame as the worker does; sets ``num_rows`` from ``rb`` on a copy of
    ``header``."""
    header = worker_pb2.FrameHeader.FromString(header.SerializeToString())
    if rb is None:
        return FrameEncoder.encode_empty(header)
    header.num_rows = rb.num_rows
    return FrameEncoder().encode(header, rb)


def header(
    split_id: str,
    seq: int,
    epoch: int = 0,
    last: bool = False,
    rank: int = 0,
    session_id: str = "s1",
    error: str = "",
    num_rows: int = 0,
) -> worker_pb2.FrameHeader:
    """Shorthand for a FrameHeader."""
    return worker_pb2.FrameHeader(
        session_id=session_id,
        epoch=epoch,
        rank=rank,
        split_id=split_id,
        batch_seq=seq,
        num_rows=num_rows,
        last_in_split=last,
        error=error,
    )
