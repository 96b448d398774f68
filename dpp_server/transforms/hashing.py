"""Stable 64-bit hashes of ids, id tuples and strings: the exact definitions every hashing op
uses, vectorised over numpy arrays.

Owns: fmix64 and the three hashes below. Must never import grpc, storage or do I/O. Every
function works on whole arrays with a Python loop per block of ids or per 8-byte word of the
longest string, never per row. All arithmetic is on uint64 modulo 2**64; ``uint64(v)`` is the
two's-complement bit pattern of the int64 ``v`` (``-1`` is ``2**64 - 1``)::

    fmix64(k):                       # MurmurHash3's 64-bit finaliser
        k ^= k >> 33
        k *= 0xff51afd7ed558ccd
        k ^= k >> 33
        k *= 0xc4ceb9fe1a85ec53
        k ^= k >> 33
        return k

    hash_ids(v_1, ..., v_n; salt):   # an ordered tuple of 64-bit values
        h = fmix64(uint64(salt))
        for v in v_1 .. v_n: h = fmix64(h XOR uint64(v))
        return h

    sigrid_hash(id; salt, m)        = hash_ids(id; salt) mod m
    ngram / cross of (a, b, ...)    = hash_ids(a, b, ...; salt) mod m
    hash_string(s; salt)            = hash_ids(len(b), w_1, ..., w_k; salt)
        where b is s encoded as UTF-8 and w_i its 8-byte little-endian words, the last one
        zero-padded (k = ceil(len(b) / 8); the empty string hashes only its length 0)

Changing any of these changes every hashed id of every model trained on dpp output: the unit
tests pin golden values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = [
    "fmix64_scalar",
    "hash_ids_values",
    "reduce_mod",
    "sigrid_hash_values",
    "string_hash_values",
    "unit_interval",
]

_MASK64 = 0xFFFFFFFFFFFFFFFF
_SHIFT = np.uint64(33)
_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
#: ids per block: two uint64 blocks (128 KiB each) fit in L2, so the nine passes of fmix64 run
#: on cached data instead of streaming the whole column through memory nine times.
_BLOCK = 1 << 14

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


def fmix64_scalar(k: int) -> int:
    """MurmurHash3's fmix64 on one Python int (taken modulo 2**64); used for salts only."""
    k &= _MASK64
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK64
    k ^= k >> 33
    return k


def _fmix64_xor(src: U64, key: U64 | np.uint64, out: U64, max_value: int = 0) -> None:
    """``out = fmix64(src XOR key)``, blockwise; ``out`` may be ``src``. With ``max_value``
    (>= 1), ``out`` is that reduced modulo ``max_value`` in the same block, while it is in
    cache."""
    scratch = np.empty(min(_BLOCK, len(src)), dtype=np.uint64)
    m = np.uint64(max_value)
    for start in range(0, len(src), _BLOCK):
        stop = min(start + _BLOCK, len(src))
        k, tmp = out[start:stop], scratch[: stop - start]
        part = key if isinstance(key, np.uint64) else key[start:stop]
        np.bitwise_xor(src[start:stop], part, out=k)
        np.right_shift(k, _SHIFT, out=tmp)
        np.bitwise_xor(k, tmp, out=k)
        np.multiply(k, _C1, out=k)
        np.right_shift(k, _SHIFT, out=tmp)
        np.bitwise_xor(k, tmp, out=k)
        np.multiply(k, _C2, out=k)
        np.right_shift(k, _SHIFT, out=tmp)
        np.bitwise_xor(k, tmp, out=k)
        if max_value:  # k - (k // m) * m: numpy divides by a scalar (libdivide) 3x faster
            np.floor_divide(k, m, out=tmp)  # than it takes a remainder by one
            np.multiply(tmp, m, out=tmp)
            np.subtract(k, tmp, out=k)


def reduce_mod(hashed: U64, max_value: int) -> I64:
    """``hashed mod max_value`` as int64, in place. ``k - (k // m) * m``: numpy divides by a
    scalar much faster than it takes a remainder by one."""
    m = np.uint64(max_value)
    tmp = np.floor_divide(hashed, m)
    np.multiply(tmp, m, out=tmp)
    np.subtract(hashed, tmp, out=hashed)
    return hashed.view(np.int64)


def sigrid_hash_values(ids: I64, salt: int, max_value: int) -> I64:
    """``hash_ids(id; salt) mod max_value`` of each id; the vectorised core of ``sigrid_hash``.

    Args:
        ids: int64 ids (their bits reinterpreted as uint64, never converted).
        salt: any int (taken modulo 2**64).
        max_value: number of buckets, >= 1.

    Returns:
        A new int64 array of the same length, values in ``[0, max_value)``.
    """
    src = np.ascontiguousarray(ids).view(np.uint64)
    out = np.empty_like(src)
    _fmix64_xor(src, np.uint64(fmix64_scalar(salt)), out, max_value)
    return out.view(np.int64)


def hash_ids_values(columns: Sequence[I64 | U64], salt: int) -> U64:
    """``hash_ids(c_1[i], ..., c_n[i]; salt)`` for every i (unreduced 64-bit hashes).

    Args:
        columns: n equally long arrays of int64 or uint64 values (bits reinterpreted).
        salt: any int (taken modulo 2**64).
    """
    length = len(columns[0]) if columns else 0
    h = np.full(length, fmix64_scalar(salt), dtype=np.uint64)
    for column in columns:
        _fmix64_xor(h, np.ascontiguousarray(column).view(np.uint64), h)
    return h


def string_hash_values(array: pa.Array, salt: int) -> U64:
    """``hash_string`` (unreduced) of each string of a ``string``/``large_string`` array.

    Null strings hash like empty ones; callers keep the validity. The loop runs once per
    8-byte word of the longest string, over the strings that still have words left.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string())
    n = len(array)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    offsets_buf, data_buf = array.buffers()[1], array.buffers()[2]
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset : array.offset + n + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    )
    lengths = np.diff(offsets)
    if array.null_count:
        lengths = np.where(np.asarray(array.is_valid()), lengths, 0)
    # Pad so that every 8-byte gather stays inside the buffer.
    padded = np.zeros(int(offsets[-1]) + 8 if n else 8, dtype=np.uint8)
    upto = min(len(data), len(padded))
    padded[:upto] = data[:upto]
    h = hash_ids_values([lengths.astype(np.int64)], salt)
    words = (lengths + 7) // 8
    active = np.nonzero(words > 0)[0]
    lane = np.arange(8, dtype=np.int64)
    k = 0
    while len(active):
        starts = offsets[active] + 8 * k
        left = lengths[active] - 8 * k
        chunk = padded[starts[:, None] + lane]
        chunk[lane[None, :] >= left[:, None]] = 0
        word = np.ascontiguousarray(chunk).view("<u8").reshape(-1).astype(np.uint64)
        sub = h[active]
        _fmix64_xor(sub, word, sub)
        h[active] = sub
        k += 1
        active = active[words[active] > k]
    return h


def unit_interval(hashed: U64) -> npt.NDArray[np.float64]:
    """Maps 64-bit hashes to ``[0, 1)``: the top 53 bits over ``2**53`` (exact doubles)."""
    return np.right_shift(hashed, np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
