"""The test oracle: float32 rounding and the id hashes, from their definitions.

One copy for every test (unit, integration, chaos) that checks a dense value or a hashed id.
Written from docs/ops.md and MurmurHash3's definition with explicit 64-bit masks, in pure
Python per value; shares no code with ``dpp_server.transforms`` (that is what it checks).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

M64 = 0xFFFFFFFFFFFFFFFF
FLT_MAX = 3.4028234663852886e38
# Half a float32 ulp above FLT_MAX: from here on, round-to-nearest-even gives infinity.
FLT_OVERFLOW = 3.4028235677973366e38
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def f32(x: float) -> float:
    """Rounds a Python float to the nearest float32, as a C cast (and numpy's astype) does:
    values past FLT_MAX but below :data:`FLT_OVERFLOW` round to FLT_MAX, not to infinity."""
    if math.isnan(x) or math.isinf(x):
        return x
    if abs(x) >= FLT_OVERFLOW:
        return math.copysign(math.inf, x)
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def fmix64(k: int) -> int:
    """MurmurHash3's 64-bit finalizer; ``k`` is taken modulo 2**64 (negative ids wrap)."""
    k &= M64
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    k ^= k >> 33
    return k


def hash_ids(values: Sequence[int], salt: int) -> int:
    """The hash of a tuple of ids: fmix64 chained from the salt (a 1-tuple is sigrid_hash)."""
    h = fmix64(salt & M64)
    for v in values:
        h = fmix64(h ^ (v & M64))
    return h


def sigrid_hash(id_: int, salt: int, max_value: int) -> int:
    """``sigrid_hash``'s id: ``fmix64(id ^ fmix64(salt)) % max_value``."""
    return hash_ids([id_], salt) % max_value


def string_hash(s: str, salt: int) -> int:
    """A string's hash: its UTF-8 length, then its bytes as little-endian 8-byte words."""
    data = s.encode("utf-8")
    words = [
        int.from_bytes(data[i : i + 8].ljust(8, b"\0"), "little") for i in range(0, len(data), 8)
    ]
    return hash_ids([len(data), *words], salt)


def unit(h: int) -> float:
    """A hash as a uniform float in [0, 1): its top 53 bits."""
    return (h >> 11) / 2.0**53
