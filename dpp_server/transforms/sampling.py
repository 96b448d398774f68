"""Row sampling: which rows of a batch a session keeps, decided per row by a stable hash.

Owns :func:`keep_mask` and :func:`negative_mask`. Must never import grpc, storage or do I/O.

A row's fate depends only on its ``sample_key`` value, the spec's ``seed`` and the rates, never
on its position, batch or worker, so a split produced again (after a worker failure) keeps
exactly the same rows. With ``key64`` the key's 64-bit value (an integer's two's-complement
bits; a string's ``hash_string(s; salt=0)``; 0 for a null key)::

    u(key; salt)   = (hash_ids(key64; salt) >> 11) / 2**53        # uniform in [0, 1)
    uniform:       keep iff u(key; seed)     < sample_rate
    negatives:     keep iff label != 0  or  u(key; seed + 1) < negative_downsample_rate

The two decisions use different salts, so they are independent. Kept negatives get weight
``1 / negative_downsample_rate`` (the pipeline multiplies it into ``weight``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from dpp_server.transforms.hashing import hash_ids_values, string_hash_values, unit_interval

__all__ = ["keep_mask", "key_values", "negative_mask", "uniform"]

_MASK64 = (1 << 64) - 1
Mask = npt.NDArray[np.bool_]


def key_values(key: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.uint64]:
    """Each row's 64-bit sampling key (see the module docstring)."""
    if isinstance(key, pa.ChunkedArray):
        key = key.combine_chunks()
    if pa.types.is_integer(key.type):
        if pa.types.is_uint64(key.type):
            bits = key.fill_null(0).to_numpy().astype(np.uint64, copy=False)
        else:
            bits = key.cast(pa.int64()).fill_null(0).to_numpy().view(np.uint64)
        return np.ascontiguousarray(bits)
    hashed = string_hash_values(key, 0)
    if key.null_count:
        hashed[~np.asarray(key.is_valid(), dtype=np.bool_)] = 0
    return hashed


def uniform(keys: npt.NDArray[np.uint64], salt: int) -> npt.NDArray[np.float64]:
    """``u(key; salt)`` of each key: a deterministic uniform draw in ``[0, 1)``."""
    return unit_interval(hash_ids_values([keys], salt & _MASK64))


def negative_mask(label: pa.Array | pa.ChunkedArray) -> Mask:
    """Rows whose label is 0 as float32 (a null label counts as 0, NaN does not)."""
    as_float = pc.fill_null(pc.cast(label, pa.float32()), 0.0)
    return np.asarray(pc.equal(as_float, 0.0).to_numpy(zero_copy_only=False), dtype=np.bool_)


def keep_mask(
    keys: npt.NDArray[np.uint64],
    negatives: Mask | None,
    *,
    seed: int,
    sample_rate: float,
    negative_rate: float,
) -> Mask:
    """Which rows to keep (see the module docstring).

    Args:
        keys: :func:`key_values` of the batch.
        negatives: :func:`negative_mask` of the batch, or None without negative downsampling.
        seed: the spec's seed.
        sample_rate: share of all rows kept, in (0, 1].
        negative_rate: share of negatives kept, in (0, 1].
    """
    keep = np.ones(len(keys), dtype=np.bool_)
    if sample_rate < 1.0:
        keep &= uniform(keys, seed) < sample_rate
    if negatives is not None and negative_rate < 1.0:
        keep &= ~negatives | (uniform(keys, seed + 1) < negative_rate)
    return keep
