"""String ops: categorical strings and string lists become hashed id lists.

Owns ``hash_string``. Must never import grpc, storage or do I/O. Strings are hashed from
their UTF-8 bytes, eight bytes at a time over the whole column (see
:mod:`dpp_server.transforms.hashing` for the exact definition), never one Python call per row.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from dpp_server.transforms.hashing import reduce_mod, string_hash_values
from dpp_server.transforms.registry import (
    ExprFn,
    OpDef,
    Param,
    Params,
    VType,
    below_max_value,
    register,
)

_STRINGS: frozenset[VType] = frozenset({"string", "strings"})
_IDS = pl.List(pl.Int64)


def _flat_strings(arr: pa.Array, salt: int, max_value: int) -> pa.Array:
    return pa.array(reduce_mod(string_hash_values(arr, salt), max_value), type=pa.int64())


def hash_strings_series(series: pl.Series, salt: int, max_value: int, listed: bool) -> pl.Series:
    """Hashes a ``String`` series into one-id lists, or a ``List(String)`` into id lists."""
    arr = series.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    mask = arr.is_null() if arr.null_count else None
    if listed:
        offsets = arr.offsets
        values = _flat_strings(arr.values, salt, max_value)
    else:
        offsets = pa.array(np.arange(len(arr) + 1, dtype=np.int64))
        values = _flat_strings(arr, salt, max_value)
    if not pa.types.is_int64(offsets.type):
        offsets = offsets.cast(pa.int64())
    rebuilt = pa.LargeListArray.from_arrays(offsets, values, mask=mask)
    return pl.Series(series.name, rebuilt, dtype=_IDS)


def _compile_hash_string(params: Params, vtype: VType) -> ExprFn:
    """``hash_string(max_value, salt=0)``: strings become hashed ids (a sparse value).

    Semantics: a string ``s`` gives ``[hash_string(s; salt) mod max_value]``; a list of
    strings gives ``[hash_string(s; salt) mod max_value for s in strings]`` (null strings were
    dropped, order kept). Criteo-style hex categories are hashed as text (``"05db9164"``).
    A null string or list gives null (delivered empty); an empty string hashes like any other.
    Params: ``max_value`` (int >= 1, required), ``salt`` (int, default 0).
    """
    salt, max_value = int(params["salt"]), int(params["max_value"])
    listed = vtype == "strings"
    return lambda expr: expr.map_batches(
        lambda s: hash_strings_series(s, salt, max_value, listed),
        return_dtype=_IDS,
        is_elementwise=True,
    )


register(
    OpDef(
        name="hash_string",
        kinds=_STRINGS,
        params=(
            Param(
                "max_value",
                "int",
                required=True,
                minimum=1,
                doc="number of hash buckets, an integer >= 1",
            ),
            Param("salt", "int", default=0, doc="salt, an integer (default 0)"),
        ),
        compile=_compile_hash_string,
        output="sparse",
        summary="hash UTF-8 strings (or each string of a list) to ids",
        ids_range=below_max_value,
    )
)
