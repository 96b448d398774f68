"""Sparse ops: a variable-length list of int64 ids per row in, an id list (or a dense value) out.

Owns the ops on ``sparse`` values: ``sigrid_hash``, ``first_x``, ``map_id``, ``clamp_list``,
``dedup``, ``ngram``, ``cross``, ``keep_ids``, ``drop_ids`` and ``list_length``. Must never
import grpc or storage; the only I/O is ``map_id`` reading its vocabulary file, once per
session per worker, when it is compiled (and when the master checks the spec).

Every op maps a ``List(Int64)`` expression whose ids are never null to another such expression
(``list_length`` to ``Float32``). A null list stays null through every op (the wire turns it
into an empty list); an empty list stays empty. Work happens on the flattened ids of the whole
column, never per row: polars' list kernels where they exist, else numpy passes over the values
buffer with the offsets computed by ``cumsum``. Hashes are defined in
:mod:`dpp_server.transforms.hashing` (``sigrid_hash`` is ``hash_ids(id; salt) mod max_value``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from dpp_server.errors import SpecError
from dpp_server.transforms.hashing import (
    fmix64_scalar,
    hash_ids_values,
    reduce_mod,
    sigrid_hash_values,
)
from dpp_server.transforms.registry import (
    ExprFn,
    IdRange,
    OpDef,
    Param,
    Params,
    VType,
    below_max_value,
    input_name,
    keeps_range,
    register,
)

__all__ = [
    "fmix64_scalar",
    "list_arrays",
    "load_vocabulary",
    "sigrid_hash_values",
]

_SPARSE: frozenset[VType] = frozenset({"sparse"})
_LISTS: frozenset[VType] = frozenset({"sparse", "scores", "strings"})
_SPARSE_DTYPE = pl.List(pl.Int64)
I64 = npt.NDArray[np.int64]


def list_arrays(series: pl.Series) -> tuple[I64, I64, npt.NDArray[np.bool_]]:
    """A ``List(Int64)`` series as numpy ``(offsets, values, valid)``.

    ``offsets`` index ``values`` (the whole child buffer, so a sliced series needs no copy);
    null rows are reported in ``valid`` and may have any offsets.
    """
    arr = series.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    values = arr.values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if arr.null_count:
        valid = np.asarray(arr.is_valid(), dtype=np.bool_)
    else:
        valid = np.ones(len(arr), dtype=np.bool_)
    return offsets, values, valid


def build_lists(name: str, counts: I64, values: I64, valid: npt.NDArray[np.bool_]) -> pl.Series:
    """A ``List(Int64)`` series from per-row counts (0 for null rows), flat values, validity."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    mask = None if valid.all() else pa.array(~valid)
    arr = pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(values, type=pa.int64()), mask=mask
    )
    return pl.Series(name, arr, dtype=_SPARSE_DTYPE)


def _map_values(series: pl.Series, fn: object) -> pl.Series:
    """Applies a numpy function to the flat ids of a ``List(Int64)`` series at once.

    Offsets and validity are reused, so list lengths and null lists are preserved by
    construction. Ids outside the series' slice window are mapped too: cheaper than
    compacting them first.
    """
    arr = series.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    values = arr.values.to_numpy(zero_copy_only=False)
    mapped = pa.array(fn(values), type=pa.int64())  # type: ignore[operator]
    mask = arr.is_null() if arr.null_count else None
    rebuilt = pa.LargeListArray.from_arrays(arr.offsets, mapped, mask=mask)
    return pl.Series(series.name, rebuilt, dtype=_SPARSE_DTYPE)


def _map_ids(expr: pl.Expr, fn: object) -> pl.Expr:
    return expr.map_batches(
        lambda s: _map_values(s, fn), return_dtype=_SPARSE_DTYPE, is_elementwise=True
    )


# --- sigrid_hash, first_x ----------------------------------------------------------------


def _compile_sigrid_hash(params: Params, vtype: VType) -> ExprFn:
    """``sigrid_hash(salt=0, max_value)``: buckets each id with a salted, stable 64-bit hash.

    Semantics: each id becomes ``fmix64(uint64(id) XOR fmix64(uint64(salt))) mod max_value``
    (see :mod:`dpp_server.transforms.hashing`). List lengths and order are kept; collisions
    are not merged. Empty lists stay empty, null lists stay null.
    Params: ``salt`` (int, default 0), ``max_value`` (int >= 1, required).
    """
    del vtype
    salt, max_value = int(params["salt"]), int(params["max_value"])
    return lambda expr: _map_ids(expr, lambda v: sigrid_hash_values(v, salt, max_value))


def _compile_first_x(params: Params, vtype: VType) -> ExprFn:
    """``first_x(x)``: keeps the first ``x`` ids of each list (truncation, order kept).

    Semantics: ``y = ids[:x]``; shorter lists are unchanged, empty lists stay empty, null
    lists stay null. Params: ``x`` (int >= 1, required).
    """
    del vtype
    x = int(params["x"])
    return lambda expr: expr.list.head(x)


# --- map_id ------------------------------------------------------------------------------


#: A vocabulary whose ids span at most this many values (and not much more than its size)
#: is looked up through a direct table, one gather per id, instead of a binary search.
_MAX_TABLE_SPAN = 1 << 24


@dataclass(frozen=True)
class Vocabulary:
    """A loaded ``map_id`` vocabulary: ids sorted, with the line each came from.

    Attributes:
        sorted_ids: the ids in ascending order.
        index_of_sorted: the line (from 0) of each of ``sorted_ids``.
        table: when the ids are dense enough, ``table[id - base]`` is the id's line or -1.
        base: the smallest id (``table``'s origin).
    """

    sorted_ids: I64
    index_of_sorted: I64
    table: I64 | None = None
    base: int = 0

    @classmethod
    def build(cls, sorted_ids: I64, index_of_sorted: I64) -> Vocabulary:
        if not len(sorted_ids):
            return cls(sorted_ids, index_of_sorted)
        base, span = int(sorted_ids[0]), int(sorted_ids[-1]) - int(sorted_ids[0]) + 1
        if span > min(max(8 * len(sorted_ids), 1 << 20), _MAX_TABLE_SPAN):
            return cls(sorted_ids, index_of_sorted)
        table = np.full(span, -1, dtype=np.int64)
        table[sorted_ids - base] = index_of_sorted
        return cls(sorted_ids, index_of_sorted, table, base)

    def __len__(self) -> int:
        return len(self.sorted_ids)

    def lookup(self, ids: I64, oov_id: int) -> I64:
        """The vocabulary index of each id, ``oov_id`` where an id is not in it."""
        if not len(self.sorted_ids):
            return np.full(len(ids), oov_id, dtype=np.int64)
        if self.table is not None:
            # Wrapping subtraction: ``rel`` (as uint64) is below the span iff id is in range.
            with np.errstate(over="ignore"):
                rel = ids - np.int64(self.base)
            inside = rel.view(np.uint64) < np.uint64(len(self.table))
            out = self.table[np.where(inside, rel, 0)]
            out[~inside | (out < 0)] = oov_id
            return out
        pos = np.searchsorted(self.sorted_ids, ids)
        np.minimum(pos, len(self.sorted_ids) - 1, out=pos)
        found = self.sorted_ids[pos] == ids
        return np.where(found, self.index_of_sorted[pos], np.int64(oov_id))


_VOCAB_CACHE: OrderedDict[tuple[str, int, int], Vocabulary] = OrderedDict()
_VOCAB_CACHE_SIZE = 4
_VOCAB_LOCK = threading.Lock()


def _open_file(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, str(inner)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def load_vocabulary(path: str, field: str) -> Vocabulary:
    """Reads a vocabulary file: one integer id per line; line ``i`` (from 0) maps to ``i``.

    Cached by (path, size, modification time), so the master's check and every session's
    compile on a worker read a file once until it changes. Thread-safe (``_VOCAB_LOCK``
    guards the cache).

    Raises:
        SpecError: naming ``field`` when the file is missing, unreadable, holds a line that
            is not an int64, or repeats an id.
    """
    fix = "give a readable text file with one int64 id per line and no repeats"
    try:
        fs, fspath = _open_file(path)
        info = fs.get_file_info(fspath)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SpecError(field, f"cannot open vocabulary {path!r}: {exc}", fix) from exc
    if info.type != pafs.FileType.File:
        raise SpecError(field, f"vocabulary file {path!r} does not exist", fix)
    key = (path, int(info.size or 0), int(info.mtime_ns or 0))
    with _VOCAB_LOCK:
        cached = _VOCAB_CACHE.get(key)
        if cached is not None:
            _VOCAB_CACHE.move_to_end(key)
            return cached
    if not info.size:  # an empty vocabulary: every id is out of vocabulary
        empty = np.empty(0, dtype=np.int64)
        return Vocabulary.build(empty, empty)
    try:
        with fs.open_input_stream(fspath) as stream:
            table = pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(column_names=["id"]),
                parse_options=pacsv.ParseOptions(delimiter="\t"),
                convert_options=pacsv.ConvertOptions(column_types={"id": pa.int64()}),
            )
    except (OSError, pa.ArrowInvalid) as exc:
        # Never echo the parser's message: it quotes the offending line, i.e. the content of
        # whatever file the path names (a key file, /etc/shadow). Say only what is expected.
        raise SpecError(
            field, f"cannot read vocabulary {path!r}: it is not one int64 id per line", fix
        ) from exc
    column = table.column("id")
    if column.null_count:
        raise SpecError(field, f"vocabulary {path!r} has an empty line", fix)
    ids = column.to_numpy().astype(np.int64, copy=False)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    repeats = np.nonzero(sorted_ids[1:] == sorted_ids[:-1])[0]
    if len(repeats):
        dup = int(sorted_ids[repeats[0]])
        lines = sorted(int(i) + 1 for i in np.nonzero(ids == dup)[0][:2])
        # Line numbers only: the repeated id itself is file content.
        raise SpecError(
            field, f"vocabulary {path!r} repeats an id (lines {lines[0]} and {lines[1]})", fix
        )
    vocab = Vocabulary.build(sorted_ids, order.astype(np.int64))
    with _VOCAB_LOCK:
        _VOCAB_CACHE[key] = vocab
        while len(_VOCAB_CACHE) > _VOCAB_CACHE_SIZE:
            _VOCAB_CACHE.popitem(last=False)
    return vocab


def _compile_map_id(params: Params, vtype: VType) -> ExprFn:
    """``map_id(path, oov_id=null)``: replaces each id by its line number in a vocabulary.

    Semantics: with the file's ids ``v_0, v_1, ...`` (one per line), ``y = i`` where
    ``id == v_i``, else ``oov_id`` (default: the vocabulary's size, one past the last index).
    List lengths and order are kept; empty lists stay empty, null lists stay null. The file is
    read once per session per worker, here, never per batch.
    Params: ``path`` (local path or URI, required), ``oov_id`` (int or null).
    """
    del vtype
    vocab = load_vocabulary(params["path"], "map_id.path")
    if len(vocab) > _MAP_ID_MAX_INDEX:
        raise SpecError(
            "map_id.path",
            f"{params['path']} holds {len(vocab)} ids; at most {_MAP_ID_MAX_INDEX + 1} fit "
            "the int32 ids map_id promises (split the vocabulary)",
        )
    oov = len(vocab) if params["oov_id"] is None else int(params["oov_id"])
    return lambda expr: _map_ids(expr, lambda v: vocab.lookup(v, oov))


#: map_id's line numbers stay below this, so its ids (but an oov_id) fit int32 on the wire.
_MAP_ID_MAX_INDEX = 2**31 - 2


def _map_id_range(params: Params, given: IdRange | None) -> IdRange | None:
    del given
    oov = params["oov_id"]
    if oov is None:
        return (0, _MAP_ID_MAX_INDEX + 1)
    return (min(0, int(oov)), max(_MAP_ID_MAX_INDEX, int(oov)))


def _clamp_range(params: Params, given: IdRange | None) -> IdRange | None:
    lo, hi = params["min"], params["max"]
    if given is None:
        return None if lo is None or hi is None else (int(lo), int(hi))
    low = given[0] if lo is None else max(given[0], int(lo))
    high = given[1] if hi is None else min(given[1], int(hi))
    return (low, high)


def _keep_ids_range(params: Params, given: IdRange | None) -> IdRange | None:
    ids = [int(i) for i in params["ids"]]
    if not ids:
        return given if given is not None else (0, 0)
    lo, hi = min(ids), max(ids)
    return (lo, hi) if given is None else (max(lo, given[0]), min(hi, given[1]))


def _prepare_map_id(params: Params, path: str) -> None:
    load_vocabulary(params["path"], f"{path}.path")


# --- clamp_list, dedup, keep_ids, drop_ids -------------------------------------------------


def _compile_clamp_list(params: Params, vtype: VType) -> ExprFn:
    """``clamp_list(min=null, max=null)``: limits every id of a list to ``[min, max]``.

    Semantics: ``y = [min(max(id, min), max) for id in ids]``; a missing bound is unbounded.
    Lengths and order are kept; empty lists stay empty, null lists stay null.
    Params: ``min``, ``max`` (int or null; at least one; ``min <= max``).
    """
    del vtype
    lo = None if params["min"] is None else pl.lit(params["min"], dtype=pl.Int64)
    hi = None if params["max"] is None else pl.lit(params["max"], dtype=pl.Int64)
    return lambda expr: expr.list.eval(pl.element().clip(lo, hi))


def _check_bounds(params: Params, path: str) -> None:
    lo, hi = params["min"], params["max"]
    if lo is None and hi is None:
        raise SpecError(f"{path}.min", "needs min, max or both", "set at least one bound")
    if lo is not None and hi is not None and lo > hi:
        raise SpecError(f"{path}.min", f"min {lo!r} is greater than max {hi!r}", "set min <= max")


def _compile_dedup(params: Params, vtype: VType) -> ExprFn:
    """``dedup()``: drops repeated ids within each list, keeping first occurrences in order.

    Semantics: ``y = [id for k, id in enumerate(ids) if id not in ids[:k]]``. Empty lists
    stay empty, null lists stay null. Params: none.
    """
    del params, vtype
    return lambda expr: expr.list.unique(maintain_order=True)


def filter_ids(series: pl.Series, ids: I64, keep_members: bool) -> pl.Series:
    """Keeps (or drops) the ids of each list that are in ``ids``, order and repeats kept."""
    offsets, values, valid = list_arrays(series)
    lengths = np.diff(offsets)
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    flat = values[offsets[0] : offsets[-1]]
    keep = np.isin(flat, ids, invert=not keep_members) & valid[rows]
    counts = np.bincount(rows[keep], minlength=len(lengths)).astype(np.int64)
    return build_lists(series.name, counts, flat[keep], valid)


def _filter_expr(params: Params, keep_members: bool) -> ExprFn:
    ids = np.unique(np.array(params["ids"], dtype=np.int64))
    return lambda expr: expr.map_batches(
        lambda s: filter_ids(s, ids, keep_members),
        return_dtype=_SPARSE_DTYPE,
        is_elementwise=True,
    )


def _compile_keep_ids(params: Params, vtype: VType) -> ExprFn:
    """``keep_ids(ids)``: keeps only the ids in a given set, in order (repeats kept).

    Semantics: ``y = [id for id in ids if id in set]``. Empty lists stay empty, null lists
    stay null. Params: ``ids`` (list of ints within ±2**53, required, may be empty).
    """
    del vtype
    return _filter_expr(params, keep_members=True)


def _compile_drop_ids(params: Params, vtype: VType) -> ExprFn:
    """``drop_ids(ids)``: removes every id in a given set, keeping the others in order.

    Semantics: ``y = [id for id in ids if id not in set]``. Empty lists stay empty, null lists
    stay null. Params: ``ids`` (list of ints within ±2**53, required, may be empty).
    """
    del vtype
    return _filter_expr(params, keep_members=False)


# --- ngram, cross ------------------------------------------------------------------------


def ngram_series(series: pl.Series, n: int, salt: int, max_value: int) -> pl.Series:
    """``hash_ids(ids[k], ..., ids[k+n-1]; salt) mod max_value`` for every window k."""
    offsets, values, valid = list_arrays(series)
    lengths = np.diff(offsets)
    counts = np.where(valid, np.maximum(lengths - (n - 1), 0), 0)
    total = int(counts.sum())
    out_starts = np.cumsum(counts) - counts
    starts = np.repeat(offsets[:-1] - out_starts, counts) + np.arange(total, dtype=np.int64)
    hashed = hash_ids_values([values[starts + k] for k in range(n)], salt)
    return build_lists(series.name, counts, reduce_mod(hashed, max_value), valid)


def cross_series(
    left: pl.Series, right: pl.Series, salt: int, max_value: int, max_pairs: int
) -> pl.Series:
    """The hashed pairs ``(a, b)`` of two id lists, row-major (a outer), capped per row."""
    a_off, a_val, a_ok = list_arrays(left)
    b_off, b_val, b_ok = list_arrays(right)
    valid = a_ok & b_ok
    la, lb = np.diff(a_off), np.diff(b_off)
    counts = np.where(valid, np.minimum(la * lb, max_pairs), 0)
    total = int(counts.sum())
    row = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    q = np.arange(total, dtype=np.int64) - (np.cumsum(counts) - counts)[row]
    width = lb[row]
    a = a_val[a_off[:-1][row] + q // np.maximum(width, 1)]
    b = b_val[b_off[:-1][row] + q % np.maximum(width, 1)]
    hashed = hash_ids_values([a, b], salt)
    return build_lists(left.name, counts, reduce_mod(hashed, max_value), valid)


def _compile_ngram(params: Params, vtype: VType) -> ExprFn:
    """``ngram(n, max_value, salt=0)``: each run of ``n`` consecutive ids becomes one hashed id.

    Semantics: ``y = [hash_ids(ids[k:k+n]; salt) mod max_value for k in range(len - n + 1)]``;
    a list shorter than ``n`` gives an empty list; null lists stay null.
    Params: ``n`` (2..=8), ``max_value`` (int >= 1), ``salt`` (int, default 0).
    """
    del vtype
    n, salt, m = int(params["n"]), int(params["salt"]), int(params["max_value"])
    return lambda expr: expr.map_batches(
        lambda s: ngram_series(s, n, salt, m), return_dtype=_SPARSE_DTYPE, is_elementwise=True
    )


def _compile_cross(params: Params, vtype: VType) -> ExprFn:
    """``cross(other, max_value, salt=0, max_pairs=1024)``: hashed pairs of two id lists.

    Semantics: ``y = [hash_ids(a, b; salt) mod max_value for a in ids for b in other]``
    (row-major, ``a`` outer), truncated to the first ``max_pairs``. An empty list on either
    side gives an empty list; a null list on either side gives null.
    Params: ``other`` (a sparse column), ``max_value`` (int >= 1), ``salt`` (int),
    ``max_pairs`` (int >= 1).
    """
    del vtype
    other = pl.col(input_name(params["other"], "sparse"))
    salt, m, cap = int(params["salt"]), int(params["max_value"]), int(params["max_pairs"])
    return lambda expr: pl.map_batches(
        [expr, other],
        lambda ss: cross_series(ss[0], ss[1], salt, m, cap),
        return_dtype=_SPARSE_DTYPE,
        is_elementwise=True,
    )


# --- list_length -------------------------------------------------------------------------


def _compile_list_length(params: Params, vtype: VType) -> ExprFn:
    """``list_length()``: the number of items in each list, as a dense value.

    Semantics: ``y = float(len(ids))``; an empty list gives 0.0; a null list gives null
    (delivered as 0.0 unless a later ``fill_null`` says otherwise). Applies to id lists,
    score lists and string lists (after null items were dropped). Params: none.
    """
    del params, vtype
    return lambda expr: expr.list.len().cast(pl.Float32)


_SALT = Param("salt", "int", default=0, doc="salt, an integer (default 0)")
_MAX_VALUE = Param(
    "max_value", "int", required=True, minimum=1, doc="number of hash buckets, an integer >= 1"
)
_IDS = Param(
    "ids",
    "int_list",
    required=True,
    doc="the id set, a list of integers within ±2**53",
)

register(
    OpDef(
        name="sigrid_hash",
        kinds=_SPARSE,
        params=(_SALT, _MAX_VALUE),
        compile=_compile_sigrid_hash,
        summary="fmix64(id XOR fmix64(salt)) mod max_value",
        ids_range=below_max_value,
    )
)

register(
    OpDef(
        name="first_x",
        kinds=_SPARSE,
        params=(Param("x", "int", required=True, minimum=1, doc="ids to keep, an integer >= 1"),),
        compile=_compile_first_x,
        summary="keep the first x ids of each list",
        ids_range=keeps_range,
    )
)

register(
    OpDef(
        name="map_id",
        kinds=_SPARSE,
        params=(
            Param(
                "path",
                "str",
                required=True,
                doc="vocabulary file (local path or URI): one int64 id per line",
            ),
            Param("oov_id", "optional_int", doc="id for ids not in the vocabulary (default: size)"),
        ),
        compile=_compile_map_id,
        prepare=_prepare_map_id,
        summary="id -> its line number in a vocabulary file, else oov_id",
        ids_range=_map_id_range,
    )
)

register(
    OpDef(
        name="clamp_list",
        kinds=_SPARSE,
        params=(
            Param("min", "optional_int", doc="lowest id kept as is (an integer) or null"),
            Param("max", "optional_int", doc="highest id kept as is (an integer) or null"),
        ),
        compile=_compile_clamp_list,
        check=_check_bounds,
        summary="limit every id to [min, max]",
        ids_range=_clamp_range,
    )
)

register(
    OpDef(
        name="dedup",
        kinds=_SPARSE,
        params=(),
        compile=_compile_dedup,
        summary="drop repeated ids within a list, first occurrences kept",
        ids_range=keeps_range,
    )
)

register(
    OpDef(
        name="keep_ids",
        kinds=_SPARSE,
        params=(_IDS,),
        compile=_compile_keep_ids,
        summary="keep only ids in a set",
        ids_range=_keep_ids_range,
    )
)

register(
    OpDef(
        name="drop_ids",
        kinds=_SPARSE,
        params=(_IDS,),
        compile=_compile_drop_ids,
        summary="drop ids in a set",
        ids_range=keeps_range,
    )
)

register(
    OpDef(
        name="ngram",
        kinds=_SPARSE,
        params=(
            Param("n", "int", required=True, minimum=2, maximum=8, doc="window length, 2..=8"),
            _MAX_VALUE,
            _SALT,
        ),
        compile=_compile_ngram,
        summary="hash each run of n consecutive ids into one id",
        ids_range=below_max_value,
    )
)

register(
    OpDef(
        name="cross",
        kinds=_SPARSE,
        params=(
            Param(
                "other",
                "column",
                required=True,
                vtype="sparse",
                doc="the other id-list column (list of integers, or one integer)",
            ),
            _MAX_VALUE,
            _SALT,
            Param(
                "max_pairs",
                "int",
                default=1024,
                minimum=1,
                doc="pairs kept per row, an integer >= 1 (default 1024)",
            ),
        ),
        compile=_compile_cross,
        summary="hashed cartesian product of two id lists, capped",
        ids_range=below_max_value,
    )
)

register(
    OpDef(
        name="list_length",
        kinds=_LISTS,
        params=(),
        compile=_compile_list_length,
        output="dense",
        summary="number of items in the list, as a dense value",
    )
)
