"""Mergeable feature statistics of one split: the accumulator a worker feeds, its bytes, the merge.

Owns :class:`SplitStats` (one split's sketches, fed with batches of feature values), the byte
format those sketches travel in, and :func:`merge` (every split's bytes into one
:class:`MergedStats`, deterministically). Must never import grpc, storage or torch, nor do I/O:
the worker decides what to feed, the master what to merge, :mod:`dpp_server.stats.report` what
to conclude.

What is kept, per feature and per partition (a split lies in one partition, so a split's
sketches are keyed by its partition and the totals are merged across partitions):

* sparse (an id list per row, after the spec's ops): exact counts (rows, non-empty rows, ids
  accessed, the histogram of list lengths: pooling factors are exact); the distinct ids in a
  theta sketch; the heavy hitters in a frequent-items sketch; and for a hash-to-range feature
  the distinct *raw* ids (before hashing) in a second theta sketch, for collisions.
* dense (one float per row): exact counts (rows, nulls, NaN, infinities), exact min, max and
  sum (the sum as an integer multiple of 2**-173, so the mean does not depend on how rows were
  cut into splits), and a KLL sketch of the finite values for quantiles.

Speed (no Python loop per row or per id). DataSketches' Python bindings take theta, HLL and
frequent-items updates one scalar at a time (~120-350 ns each), so:

* theta sketches are built here in numpy: the library's exact hash (MurmurHash3_x64_128 of
  the 8-byte id, seed 9001, ``h1 >> 1``), the K smallest distinct hashes kept, and the
  library's compact serial form (version 3) written out, so ``compact_theta_sketch`` reads
  them and ``theta_union`` merges them. A unit test pins the hashes and bytes to the
  library's own ``update_theta_sketch``.
* the frequent-items sketch gets one *weighted* update per distinct id of a batch, and only
  for the ``top_ids_per_batch`` most frequent ones. The dropped ids each had at most the
  count of the most frequent dropped id; those counts are summed into
  ``truncation_error_total``, which :mod:`~dpp_server.stats.report` adds to the sketch's own
  error bound. On a Zipf table it is orders of magnitude below the sketch's bound.
* KLL takes a float32 numpy array in one call.

Determinism. Every figure computed from exact counts is identical however the table was cut
into splits and whichever workers produced them. Sketches: :func:`merge` folds split payloads
in split-id order, so the same splits give the same theta and frequent-items sketches
whatever the number of workers. KLL compacts with random coin flips (seeded by the library
from the OS, not settable from Python), so quantiles are equal only within KLL's normalized
rank error; theta and frequent-items estimates of a table cut into *different* splits are
equal within their bounds (see ``docs/stats.md``).

Worked example (the stats session the master will run):

1. The master plans splits as for a training session and leases them to workers.
2. Worker A, given split ``s1`` of partition ``ds=2026-01-01``, builds
   ``SplitStats("s1", "ds=2026-01-01", sparse, dense)`` and calls :meth:`SplitStats.update`
   with each batch of feature values (and the raw ids of hashed features).
3. At the end of the split, A sends ``stats.serialize()`` (a few hundred KB at most) instead of
   wire batches, and acks the split.
4. A dies before the ack: the lease expires and worker B produces ``s1`` again; the master
   keeps one payload per split id (exactly-once), so ``s1`` counts once.
5. When every split is acked, the master calls ``merge(payloads)``; :func:`merge` refuses two
   payloads of one split, which would double count.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import datasketches as ds
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from dpp_server.errors import StatsError

__all__ = [
    "DenseSketches",
    "MergedStats",
    "SketchConfig",
    "SparseFeature",
    "SparseSketches",
    "SplitStats",
    "merge",
    "partition_key",
    "theta_hashes",
]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

#: DataSketches' default hash seed: sketches built here and by the library must agree on it.
_SEED = 9001
#: Theta's largest hash value (``theta64`` of a sketch that saw few ids).
_THETA_MAX = (1 << 63) - 1
_MAGIC = b"DPPSTAT1"
_HEADER_LEN = struct.Struct("<I")
#: A float32 ``m * 2**e`` (``m`` in [0.5, 1)) is ``(m * 2**24) * 2**(e - 24)`` with ``e`` >= -148:
#: scaling every sum by ``2**_SUM_SHIFT`` makes it an integer.
_SUM_SHIFT = 173
#: ids in [0, this) are counted with ``np.bincount`` (O(n), ~4 MB of counts) instead of a sort.
_BINCOUNT_MAX_ID = 1 << 22


def _empty_theta_image() -> bytes:
    return bytes(ds.update_theta_sketch(12, 1.0, _SEED).compact().serialize())


_EMPTY_THETA = _empty_theta_image()
#: bytes 6-7 of a compact image: a 16-bit hash of the seed, checked by the library on read.
_SEED_HASH = _EMPTY_THETA[6:8]


@dataclass(frozen=True)
class SketchConfig:
    """Sketch sizes; every split of one stats session must use the same config.

    Attributes:
        theta_lg_k: log2 of the theta sketch's K (retained hashes). The relative standard error
            of a distinct count is about ``1/sqrt(K)`` (1.6% at 12, 0.8% at 14); a split's
            sketch costs up to ``8 * K`` bytes per feature and partition.
        heavy_lg_max_map_size: log2 of the frequent-items map. Its error bound is
            ``epsilon * accesses`` with ``epsilon = 3.5 / 2**lg`` (0.085% at 12); it tracks up to
            ``0.75 * 2**lg`` ids (the head of the access CDF). Bytes grow linearly.
        top_ids_per_batch: distinct ids of a batch fed to the frequent-items sketch (the most
            accessed ones). Each update costs ~0.25 us of Python; fewer ids add to
            ``truncation_error_total`` (the count of the most frequent id left out).
        kll_k: KLL's k for dense quantiles. Normalized rank error ~1.65% at 200 (99% bound),
            ~0.7% at 500; bytes grow linearly.
    """

    theta_lg_k: int = 12
    heavy_lg_max_map_size: int = 12
    top_ids_per_batch: int = 1024
    kll_k: int = 200

    def __post_init__(self) -> None:
        """Rejects sizes the library refuses, naming the field."""
        checks = [
            (5 <= self.theta_lg_k <= 26, "theta_lg_k must be in [5, 26]"),
            (3 <= self.heavy_lg_max_map_size <= 24, "heavy_lg_max_map_size must be in [3, 24]"),
            (self.top_ids_per_batch >= 1, "top_ids_per_batch must be >= 1"),
            (8 <= self.kll_k <= 65535, "kll_k must be in [8, 65535]"),
        ]
        for ok, message in checks:
            if not ok:
                raise StatsError(f"SketchConfig: {message}; got {self}")


@dataclass(frozen=True)
class SparseFeature:
    """A sparse feature the stats session measures.

    Attributes:
        name: the feature's name in the spec (and its column in the batches fed).
        hash_rows: ``max_value`` of the feature's last hash-to-range op (``sigrid_hash``): the
            rows of its embedding table. None when its ids are not hashed to a range.
    """

    name: str
    hash_rows: int | None = None


def partition_key(partition: Mapping[str, str]) -> str:
    """The Hive path of a split's partition, e.g. ``ds=2026-01-01``; ``""`` when unpartitioned."""
    return "/".join(f"{key}={value}" for key, value in partition.items())


# -- hashing and theta ----------------------------------------------------------------------

_C1 = np.uint64(0x87C37B91114253D5)
_C2 = np.uint64(0x4CF5AD432745937F)
_F1 = np.uint64(0xFF51AFD7ED558CCD)
_F2 = np.uint64(0xC4CEB9FE1A85EC53)


def _fmix64(k: U64) -> U64:
    k ^= k >> np.uint64(33)
    k *= _F1
    k ^= k >> np.uint64(33)
    k *= _F2
    k ^= k >> np.uint64(33)
    return k


def theta_hashes(ids: I64) -> U64:
    """The theta hash DataSketches gives each int64 id: ``MurmurHash3_x64_128(id, 9001).h1 >> 1``.

    Vectorised over the ids (the library's Python binding hashes one id per call). An 8-byte key
    has no full 16-byte block, so only the tail step and the finalisation run.
    """
    with np.errstate(over="ignore"):
        k1 = ids.astype(np.int64, copy=False).view(np.uint64) * _C1
        k1 = (k1 << np.uint64(31)) | (k1 >> np.uint64(33))
        k1 *= _C2
        seed = np.uint64(_SEED)
        h1 = k1 ^ seed
        h1 ^= np.uint64(8)
        h2 = np.full_like(h1, seed ^ np.uint64(8))
        h1 += h2
        h2 += h1
        h1 = _fmix64(h1)
        h2 = _fmix64(h2)
        h1 += h2
    return h1 >> np.uint64(1)


def _sorted_distinct(a: U64, b: U64) -> U64:
    """The distinct values of ``a`` and ``b``, ascending (a sort and a neighbour compare:
    several times faster than ``np.union1d`` on the few thousand values cut here)."""
    values = np.concatenate([a, b])
    if len(values) > 8 * 4096:  # numpy's hash-based unique sorts only the distinct values
        return np.unique(values)
    values.sort()
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=np.bool_)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


class _ThetaBuilder:
    """The K smallest distinct theta hashes seen (a KMV sketch), in numpy.

    Not thread-safe: one per feature of one split, fed by the thread producing that split.
    """

    def __init__(self, lg_k: int) -> None:
        self._k = 1 << lg_k
        self._theta = _THETA_MAX
        self._retained: U64 = np.empty(0, dtype=np.uint64)

    def update(self, ids: I64, distinct_hint: int = 0) -> None:
        """Adds ids (repeats are fine: a set is kept).

        Args:
            ids: the ids.
            distinct_hint: a lower bound on the distinct ids among ``ids`` when known (0: not
                known). It sizes the first cut, saving passes when ids repeat a lot.
        """
        if len(ids) == 0:
            return
        hashes = theta_hashes(ids)
        candidates = hashes[(hashes < np.uint64(self._theta)) & (hashes != 0)]
        if len(candidates) == 0:
            return
        k = self._k
        # Only the K+1 smallest distinct hashes matter. Hashes are uniform below theta, so a
        # cut at theta * 1.5K / n keeps ~1.5K of the n candidates (more than K+1 but for a
        # 13-sigma fluke when they are distinct): one compare pass, then a sort of the few
        # below it. Repeated ids leave fewer distinct ones below the cut: it doubles twice,
        # then all candidates are deduplicated by numpy's hash-based unique (which sorts only
        # the distinct values: 2-3x cheaper than sorting all when ids repeat a lot).
        expected = min(len(candidates), distinct_hint) if distinct_hint else len(candidates)
        cut = self._theta * 3 * k // (2 * expected)
        for _ in range(3):
            if cut >= self._theta:
                break
            below = _sorted_distinct(
                self._retained[self._retained < np.uint64(cut)],
                candidates[candidates < np.uint64(cut)],
            )
            if len(below) > k:
                self._keep(below)
                return
            cut *= 2
        self._keep(_sorted_distinct(self._retained, np.unique(candidates)))

    def _keep(self, distinct_sorted: U64) -> None:
        if len(distinct_sorted) > self._k:
            self._theta = int(distinct_sorted[self._k])
            distinct_sorted = distinct_sorted[: self._k]
        self._retained = distinct_sorted

    def to_bytes(self) -> bytes:
        """The library's compact, ordered theta image (serial version 3)."""
        count = len(self._retained)
        if count == 0 and self._theta == _THETA_MAX:
            return _EMPTY_THETA
        flags = 0x1A  # read-only | compact | ordered
        if self._theta == _THETA_MAX:
            head = bytes([2, 3, 3, 0, 0, flags]) + _SEED_HASH + struct.pack("<II", count, 0)
        else:
            head = bytes([3, 3, 3, 0, 0, flags]) + _SEED_HASH
            head += struct.pack("<IIQ", count, 0, self._theta)
        return head + self._retained.astype("<u8").tobytes()


# -- the sketches of one feature in one partition --------------------------------------------


@dataclass
class SparseSketches:
    """One sparse feature's figures over some splits of one partition (or over all of them).

    Exact fields add up across splits; sketches merge. Not thread-safe.

    Attributes:
        rows: rows seen.
        nonempty_rows: rows whose list held at least one id.
        accesses: ids seen (embedding lookups), repeats counted.
        lengths: rows per list length (the exact pooling-factor distribution).
        distinct: theta sketch of the ids.
        raw_distinct: theta sketch of the raw ids before hashing, for hashed features fed them.
        heavy: frequent-items sketch of the ids (int items).
        truncation_error_total: the most any id's count can exceed what ``heavy`` was fed,
            summed over updates (see ``SketchConfig.top_ids_per_batch``).
        hash_rows: see :class:`SparseFeature`.
    """

    rows: int
    nonempty_rows: int
    accesses: int
    lengths: dict[int, int]
    distinct: Any
    raw_distinct: Any | None
    heavy: Any
    truncation_error_total: int
    hash_rows: int | None


@dataclass
class DenseSketches:
    """One dense feature's figures over some splits of one partition (or all). Not thread-safe.

    Attributes:
        rows: rows seen.
        nulls: null values.
        nans: NaN values.
        infs: +inf or -inf values.
        finite: finite values (what min, max, sum and quantiles describe).
        min_value: smallest finite value, None when none.
        max_value: largest finite value, None when none.
        sum_scaled: exact sum of the finite values times ``2**173`` (an integer).
        quantiles: KLL floats sketch of the finite values.
    """

    rows: int
    nulls: int
    nans: int
    infs: int
    finite: int
    min_value: float | None
    max_value: float | None
    sum_scaled: int
    quantiles: Any

    @property
    def mean(self) -> float | None:
        """The finite values' mean, correctly rounded from their exact sum."""
        if self.finite == 0:
            return None
        return float(Fraction(self.sum_scaled, self.finite << _SUM_SHIFT))


def _exact_sum_scaled(values: npt.NDArray[np.float32]) -> int:
    """``sum(values) * 2**173`` exactly, for finite float32 values (grouped by exponent)."""
    if len(values) == 0:
        return 0
    mantissas, exponents = np.frexp(values.astype(np.float64))
    ints = mantissas * float(1 << 24)  # exact: a float32 has a 24-bit significand
    low = int(exponents.min())
    # Per exponent, the significands' sum stays below 2**53 (exact in float64) up to 2**29 values.
    total = 0
    for start in range(0, len(ints), 1 << 28):
        part_e = exponents[start : start + (1 << 28)] - low
        sums = np.bincount(part_e, weights=ints[start : start + (1 << 28)])
        for offset in np.flatnonzero(sums).tolist():
            total += int(sums[offset]) << (offset + low - 24 + _SUM_SHIFT)
    return total


def _list_parts(column: pa.Array | pa.ChunkedArray) -> tuple[I64, I64]:
    """(lengths per row, flat non-null ids) of a list column; a null list has length 0."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise StatsError(f"expected a list of ids, got a {column.type} column")
    values = pc.list_flatten(column)
    lengths = pc.fill_null(pc.list_value_length(column), 0)
    ids = values.drop_null() if values.null_count else values
    return (
        np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64),
        np.asarray(ids.to_numpy(zero_copy_only=False), dtype=np.int64),
    )


def _count_ids(ids: I64) -> tuple[I64, I64]:
    """(distinct ids ascending, their counts): a bincount for small ids (hashed), else a sort."""
    if len(ids) and int(ids.min()) >= 0 and int(ids.max()) < _BINCOUNT_MAX_ID:
        counts = np.bincount(ids)
        distinct = np.flatnonzero(counts)
        return distinct.astype(np.int64), counts[distinct].astype(np.int64)
    distinct, counts = np.unique(ids, return_counts=True)
    return distinct.astype(np.int64), counts.astype(np.int64)


class _SparseAccumulator:
    """One sparse feature of one split, being fed. Not thread-safe."""

    def __init__(self, feature: SparseFeature, config: SketchConfig) -> None:
        self.feature = feature
        self.config = config
        self.rows = self.nonempty_rows = self.accesses = 0
        self.lengths: dict[int, int] = {}
        self.distinct = _ThetaBuilder(config.theta_lg_k)
        self.raw_distinct = _ThetaBuilder(config.theta_lg_k) if feature.hash_rows else None
        self.heavy = ds.frequent_items_sketch(config.heavy_lg_max_map_size)
        self.truncation_error_total = 0

    def update(self, column: pa.Array | pa.ChunkedArray, raw: pa.Array | None) -> None:
        lengths, ids = _list_parts(column)
        self.rows += len(lengths)
        self.nonempty_rows += int(np.count_nonzero(lengths))
        self.accesses += len(ids)
        by_length = np.bincount(lengths) if len(lengths) else np.empty(0, dtype=np.int64)
        for length in np.flatnonzero(by_length).tolist():
            self.lengths[length] = self.lengths.get(length, 0) + int(by_length[length])
        distinct, counts = _count_ids(ids)
        distinct_all = distinct
        self.distinct.update(distinct)
        top = self.config.top_ids_per_batch
        if len(distinct) > top:
            order = np.argpartition(counts, len(counts) - top)
            self.truncation_error_total += int(counts[order[: len(counts) - top]].max())
            keep = np.sort(order[len(counts) - top :])
            distinct, counts = distinct[keep], counts[keep]
        for item, count in zip(distinct.tolist(), counts.tolist(), strict=True):
            self.heavy.update(item, count)
        if raw is not None and self.raw_distinct is not None:
            # Hashing merges raw ids, never splits them: the distinct hashed ids of this batch
            # are a lower bound on its distinct raw ids.
            self.raw_distinct.update(_list_parts(raw)[1], distinct_hint=len(distinct_all))


class _DenseAccumulator:
    """One dense feature of one split, being fed. Not thread-safe."""

    def __init__(self, config: SketchConfig) -> None:
        self.rows = self.nulls = self.nans = self.infs = self.finite = 0
        self.min_value: float | None = None
        self.max_value: float | None = None
        self.sum_scaled = 0
        self.quantiles = ds.kll_floats_sketch(config.kll_k)

    def update(self, column: pa.Array | pa.ChunkedArray) -> None:
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            raise StatsError(f"expected a numeric dense column, got {column.type}")
        self.rows += len(column)
        self.nulls += column.null_count
        present = column.drop_null() if column.null_count else column
        if isinstance(present, pa.ChunkedArray):
            present = present.combine_chunks()
        values = np.asarray(present.to_numpy(zero_copy_only=False), dtype=np.float32)
        nan = np.isnan(values)
        finite_mask = np.isfinite(values)
        self.nans += int(np.count_nonzero(nan))
        self.infs += len(values) - int(np.count_nonzero(finite_mask)) - int(np.count_nonzero(nan))
        finite = np.ascontiguousarray(values[finite_mask])
        if len(finite) == 0:
            return
        self.finite += len(finite)
        low, high = float(finite.min()), float(finite.max())
        self.min_value = low if self.min_value is None else min(self.min_value, low)
        self.max_value = high if self.max_value is None else max(self.max_value, high)
        self.sum_scaled += _exact_sum_scaled(finite)
        self.quantiles.update(finite)


class SplitStats:
    """The sketches of one split, fed batch by batch on the worker producing the split.

    Not thread-safe: one instance per split, fed by the thread that produces that split.

    Attributes:
        split_id: the split's id (the master's ledger key); payloads merge in this order.
        partition: the split's :func:`partition_key`.
    """

    def __init__(
        self,
        split_id: str,
        partition: str,
        sparse: Sequence[SparseFeature],
        dense: Sequence[str],
        config: SketchConfig | None = None,
    ) -> None:
        """Prepares empty sketches for the features.

        Args:
            split_id: the split's id.
            partition: the split's partition key (see :func:`partition_key`).
            sparse: the sparse features measured.
            dense: the dense features measured, by name.
            config: sketch sizes; the same for every split of a session.
        """
        self.split_id = split_id
        self.partition = partition
        self.config = config or SketchConfig()
        self._sparse = {f.name: _SparseAccumulator(f, self.config) for f in sparse}
        self._dense = {name: _DenseAccumulator(self.config) for name in dense}

    def update(
        self,
        batch: pa.RecordBatch | pa.Table,
        raw_ids: pa.RecordBatch | pa.Table | None = None,
    ) -> None:
        """Adds one batch of feature values.

        Args:
            batch: a column per feature, named as the feature: sparse ones a list of integer
                ids (after the spec's ops: the ids the model looks up), dense ones a float
                (nulls counted as nulls: feed values before the wire fills them with 0.0).
            raw_ids: for hashed features, a column per feature (same name, same rows) with the
                ids entering the feature's last hash-to-range op. Optional: without it no
                collision figures are measured.

        Raises:
            StatsError: a feature's column is missing or of the wrong type, or the raw ids
                have other rows than the batch.
        """
        names = set(batch.schema.names)
        for name in [*self._sparse, *self._dense]:
            if name not in names:
                raise StatsError(
                    f"split {self.split_id}: the batch has no column {name!r} (it has "
                    f"{sorted(names)}); feed a column per feature, named as the feature"
                )
        if raw_ids is not None and raw_ids.num_rows != batch.num_rows:
            raise StatsError(
                f"split {self.split_id}: raw_ids has {raw_ids.num_rows} rows, the batch "
                f"{batch.num_rows}; feed the raw ids of the same rows"
            )
        raw_names = set(raw_ids.schema.names) if raw_ids is not None else set()
        for name, acc in self._sparse.items():
            raw = None
            if raw_ids is not None and name in raw_names:
                column = raw_ids.column(name)
                raw = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            acc.update(batch.column(name), raw)
        for name, dense_acc in self._dense.items():
            dense_acc.update(batch.column(name))

    def serialize(self) -> bytes:
        """The split's payload: ``DPPSTAT1``, a little-endian u32 header length, a JSON header
        (exact fields and where each sketch lies), then the sketches' own serial forms."""
        blobs: list[bytes] = []

        def blob(data: bytes) -> list[int]:
            start = sum(len(b) for b in blobs)
            blobs.append(data)
            return [start, len(data)]

        sparse: dict[str, Any] = {}
        for name, acc in self._sparse.items():
            sparse[name] = {
                "rows": acc.rows,
                "nonempty_rows": acc.nonempty_rows,
                "accesses": acc.accesses,
                "lengths": [[k, v] for k, v in sorted(acc.lengths.items())],
                "hash_rows": acc.feature.hash_rows,
                "truncation_error_total": acc.truncation_error_total,
                "distinct": blob(acc.distinct.to_bytes()),
                "raw_distinct": None
                if acc.raw_distinct is None
                else blob(acc.raw_distinct.to_bytes()),
                "heavy": blob(bytes(acc.heavy.serialize(ds.PyLongsSerDe()))),
            }
        dense: dict[str, Any] = {}
        for name, dacc in self._dense.items():
            dense[name] = {
                "rows": dacc.rows,
                "nulls": dacc.nulls,
                "nans": dacc.nans,
                "infs": dacc.infs,
                "finite": dacc.finite,
                "min": dacc.min_value,
                "max": dacc.max_value,
                "sum_scaled": str(dacc.sum_scaled),
                "quantiles": blob(bytes(dacc.quantiles.serialize())),
            }
        header = {
            "split_id": self.split_id,
            "partition": self.partition,
            "config": asdict(self.config),
            "sparse": sparse,
            "dense": dense,
        }
        head = json.dumps(header, sort_keys=True).encode("utf-8")
        return _MAGIC + _HEADER_LEN.pack(len(head)) + head + b"".join(blobs)


# -- merging ----------------------------------------------------------------------------------


@dataclass
class MergedStats:
    """Every split's sketches merged: per feature, per partition, and over all partitions.

    Attributes:
        config: the sketch sizes every split used.
        split_ids: the splits merged, in merge order (ascending).
        partitions: partition keys seen, ascending.
        sparse: per sparse feature (in first-payload order), per partition.
        dense: per dense feature, per partition.
        sparse_total: per sparse feature, merged over partitions (in partition order).
        dense_total: per dense feature, merged over partitions.
    """

    config: SketchConfig
    split_ids: tuple[str, ...]
    partitions: tuple[str, ...]
    sparse: dict[str, dict[str, SparseSketches]] = field(default_factory=dict)
    dense: dict[str, dict[str, DenseSketches]] = field(default_factory=dict)
    sparse_total: dict[str, SparseSketches] = field(default_factory=dict)
    dense_total: dict[str, DenseSketches] = field(default_factory=dict)


def _decode(payload: bytes) -> tuple[dict[str, Any], memoryview]:
    if not payload.startswith(_MAGIC):
        raise StatsError(
            "a stats payload does not start with DPPSTAT1: not a split's stats, or from a "
            "newer dpp; merge payloads from SplitStats.serialize of the same version"
        )
    (length,) = _HEADER_LEN.unpack_from(payload, len(_MAGIC))
    start = len(_MAGIC) + _HEADER_LEN.size
    header = json.loads(payload[start : start + length].decode("utf-8"))
    return header, memoryview(payload)[start + length :]


def _sparse_from(entry: Mapping[str, Any], body: memoryview) -> SparseSketches:
    def part(ref: list[int]) -> bytes:
        return bytes(body[ref[0] : ref[0] + ref[1]])

    raw = entry["raw_distinct"]
    return SparseSketches(
        rows=entry["rows"],
        nonempty_rows=entry["nonempty_rows"],
        accesses=entry["accesses"],
        lengths={int(k): int(v) for k, v in entry["lengths"]},
        distinct=ds.compact_theta_sketch.deserialize(part(entry["distinct"]), _SEED),
        raw_distinct=None if raw is None else ds.compact_theta_sketch.deserialize(part(raw), _SEED),
        heavy=ds.frequent_items_sketch.deserialize(part(entry["heavy"]), ds.PyLongsSerDe()),
        truncation_error_total=entry["truncation_error_total"],
        hash_rows=entry["hash_rows"],
    )


def _dense_from(entry: Mapping[str, Any], body: memoryview) -> DenseSketches:
    ref = entry["quantiles"]
    return DenseSketches(
        rows=entry["rows"],
        nulls=entry["nulls"],
        nans=entry["nans"],
        infs=entry["infs"],
        finite=entry["finite"],
        min_value=entry["min"],
        max_value=entry["max"],
        sum_scaled=int(entry["sum_scaled"]),
        quantiles=ds.kll_floats_sketch.deserialize(bytes(body[ref[0] : ref[0] + ref[1]])),
    )


def _union_theta(sketches: Sequence[Any], lg_k: int) -> Any:
    union = ds.theta_union(lg_k, 1.0, _SEED)
    for sketch in sketches:
        union.update(sketch)
    return union.get_result()


def _merge_sparse(parts: Sequence[SparseSketches], config: SketchConfig) -> SparseSketches:
    """Folds ``parts`` in the order given (frequent items depend on it; the rest do not)."""
    lengths: dict[int, int] = {}
    for p in parts:
        for length, rows in p.lengths.items():
            lengths[length] = lengths.get(length, 0) + rows
    heavy = ds.frequent_items_sketch(config.heavy_lg_max_map_size)
    for p in parts:
        heavy.merge(p.heavy)
    raws = [p.raw_distinct for p in parts if p.raw_distinct is not None]
    return SparseSketches(
        rows=sum(p.rows for p in parts),
        nonempty_rows=sum(p.nonempty_rows for p in parts),
        accesses=sum(p.accesses for p in parts),
        lengths=dict(sorted(lengths.items())),
        distinct=_union_theta([p.distinct for p in parts], config.theta_lg_k),
        raw_distinct=_union_theta(raws, config.theta_lg_k) if raws else None,
        heavy=heavy,
        truncation_error_total=sum(p.truncation_error_total for p in parts),
        hash_rows=parts[0].hash_rows,
    )


def _merge_dense(parts: Sequence[DenseSketches], config: SketchConfig) -> DenseSketches:
    quantiles = ds.kll_floats_sketch(config.kll_k)
    for p in parts:
        quantiles.merge(p.quantiles)
    lows = [p.min_value for p in parts if p.min_value is not None]
    highs = [p.max_value for p in parts if p.max_value is not None]
    return DenseSketches(
        rows=sum(p.rows for p in parts),
        nulls=sum(p.nulls for p in parts),
        nans=sum(p.nans for p in parts),
        infs=sum(p.infs for p in parts),
        finite=sum(p.finite for p in parts),
        min_value=min(lows) if lows else None,
        max_value=max(highs) if highs else None,
        sum_scaled=sum(p.sum_scaled for p in parts),
        quantiles=quantiles,
    )


def merge(payloads: Iterable[bytes]) -> MergedStats:
    """Merges split payloads into one result, in split-id order whatever order they came in.

    Args:
        payloads: :meth:`SplitStats.serialize` outputs, one per split.

    Returns:
        The merged statistics.

    Raises:
        StatsError: no payloads, a malformed one, two payloads of one split (a split counted
            twice), different sketch configs, or different feature sets.
    """
    decoded = sorted((_decode(p) for p in payloads), key=lambda hb: str(hb[0]["split_id"]))
    if not decoded:
        raise StatsError("no split payloads to merge; the stats session produced no splits")
    first = decoded[0][0]
    config = SketchConfig(**first["config"])
    sparse_names, dense_names = list(first["sparse"]), list(first["dense"])
    split_ids: list[str] = []
    by_partition: dict[str, list[tuple[dict[str, Any], memoryview]]] = {}
    for header, body in decoded:
        split_id = str(header["split_id"])
        if split_ids and split_ids[-1] == split_id:
            raise StatsError(
                f"split {split_id} has two stats payloads; the master must keep one per split "
                "(a split produced again after a worker failure counts once)"
            )
        if header["config"] != first["config"]:
            raise StatsError(
                f"split {split_id} used sketch config {header['config']}, split "
                f"{first['split_id']} {first['config']}; one session uses one config"
            )
        if list(header["sparse"]) != sparse_names or list(header["dense"]) != dense_names:
            raise StatsError(
                f"split {split_id} measured other features than split {first['split_id']}; "
                "one session measures one feature set"
            )
        split_ids.append(split_id)
        by_partition.setdefault(str(header["partition"]), []).append((header, body))
    partitions = tuple(sorted(by_partition))
    merged = MergedStats(config=config, split_ids=tuple(split_ids), partitions=partitions)
    for name in sparse_names:
        per = {
            p: _merge_sparse(
                [_sparse_from(h["sparse"][name], b) for h, b in by_partition[p]], config
            )
            for p in partitions
        }
        merged.sparse[name] = per
        merged.sparse_total[name] = _merge_sparse([per[p] for p in partitions], config)
    for name in dense_names:
        dper = {
            p: _merge_dense([_dense_from(h["dense"][name], b) for h, b in by_partition[p]], config)
            for p in partitions
        }
        merged.dense[name] = dper
        merged.dense_total[name] = _merge_dense([dper[p] for p in partitions], config)
    return merged
