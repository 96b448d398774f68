"""Writes synthetic recommendation tables shaped like real training logs (``dpp gen``).

Owns: the synthetic table's layout and distributions. A row is one impression: ids, dense
features, sparse id-list features and a click label. Rows come in sessions (adjacent rows
sharing ``user_id`` and the user-side sparse features), which is the duplication RecD-style
deduplication exploits; ``rows_per_session`` sets its degree, and ``clustered`` whether a
session's rows are adjacent (they are by default; ``dpp cluster`` makes any table so).

Layout: ``<uri>/ds=2026-01-01/part-00000.parquet``, ... ``ds`` is a Hive folder, never stored
in the files. ``row_id`` runs 0..rows-1 in path order, so readers can check exactly-once
delivery by row id.

Everything is vectorized numpy and Arrow (list columns are built from offsets and values),
and every file is generated from its own seed ``(seed, file index)``: files can be written in
parallel and the same config always gives byte-identical files.

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress

from storage.errors import StorageError
from storage.filesystem import resolve

logger = logging.getLogger(__name__)

__all__ = [
    "GenConfig",
    "GenSummary",
    "generate_table",
    "refuse_existing",
    "table_schema",
]

FIRST_DAY = dt.date(2026, 1, 1)
# Files generated at once. Each holds ~rows_per_file * sparse * max_list_len/3 ids in memory
# (~300 MB at the defaults), so more would trade memory for little speed on small machines.
_MAX_PARALLEL_FILES = 4
# Each user has about this many sessions, so user_id repeats across sessions as in real logs.
_SESSIONS_PER_USER = 8


@dataclass(frozen=True)
class GenConfig:
    """What to generate. Each field's trade-off is stated beside it.

    Attributes:
        rows: total rows; more gives realistic volumes, costs time and disk linearly.
        days: ``ds`` partitions from 2026-01-01, rows spread evenly; more partitions exercise
            partition pruning, but each adds at least one file.
        dense: float32 feature columns ``dense_*``.
        sparse: ``list<int64>`` id-list columns ``sparse_*``; they dominate the bytes.
        rows_per_session: mean rows sharing one session (geometric lengths). 1 means no
            duplication; higher makes user-side features more redundant (RecD's degree).
        user_sparse_share: share of sparse features that are user-side (identical within a
            session); the rest vary per row.
        id_space: ids fall in ``[0, id_space)``; larger means more distinct embedding rows.
        zipf_a: Zipf exponent (> 1) of id popularity; smaller is heavier-tailed.
        max_list_len: sparse lists hold 0..max_list_len ids (mean about a third of it,
            empty lists included); longer lists cost bytes linearly.
        max_user_list_len: the same for user-side lists; None means ``max_list_len``. Real
            user-side features are mostly histories (ids the user clicked, watched, followed),
            far longer than an impression's item-side lists, so they hold most of a row's bytes
            and most of what deduplication saves; set it to model that.
        null_share: share of null dense values, to exercise null handling in transforms.
        click_rate: mean of ``label``; it rises weakly with ``dense_0`` so a model can learn.
        row_group_rows: rows per Parquet row group; smaller gives finer splits and more
            statistics pruning, but more footer bytes and per-group overhead.
        rows_per_file: rows per file (per day); smaller gives more files and more planning
            work, larger gives fewer, bigger files.
        seed: same seed and config give byte-identical files.
        clustered: a session's rows are adjacent (as after ``dpp cluster``). False shuffles
            each file's rows, as logs interleave many users' sessions in arrival order:
            realistic for measuring what clustering saves, but Parquet stores the repeated
            user-side lists once per row and batches rarely hold a session twice.
    """

    rows: int = 1_000_000
    days: int = 3
    dense: int = 13
    sparse: int = 26
    rows_per_session: float = 4.0
    user_sparse_share: float = 0.5
    id_space: int = 10_000_000
    zipf_a: float = 1.2
    max_list_len: int = 30
    max_user_list_len: int | None = None
    null_share: float = 0.1
    click_rate: float = 0.03
    row_group_rows: int = 32_768
    rows_per_file: int = 131_072
    seed: int = 0
    clustered: bool = True

    def __post_init__(self) -> None:
        """Rejects configs that cannot generate a sensible table, naming the field."""
        checks = [
            (self.rows >= 1, "rows must be >= 1"),
            (self.days >= 1, "days must be >= 1"),
            (self.dense >= 0 and self.sparse >= 0, "dense and sparse must be >= 0"),
            (self.rows_per_session >= 1.0, "rows_per_session must be >= 1 (1 = no sessions)"),
            (0.0 <= self.user_sparse_share <= 1.0, "user_sparse_share must be in [0, 1]"),
            (self.id_space >= 1, "id_space must be >= 1"),
            (self.zipf_a > 1.0, "zipf_a must be > 1 (a Zipf law needs it to normalize)"),
            (self.max_list_len >= 0, "max_list_len must be >= 0"),
            (
                self.max_user_list_len is None or self.max_user_list_len >= 0,
                "max_user_list_len must be >= 0 (or None for max_list_len)",
            ),
            (0.0 <= self.null_share < 1.0, "null_share must be in [0, 1)"),
            (0.0 < self.click_rate < 1.0, "click_rate must be in (0, 1)"),
            (self.row_group_rows >= 1, "row_group_rows must be >= 1"),
            (self.rows_per_file >= 1, "rows_per_file must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"GenConfig: {message}; got {self}")

    @property
    def num_user_sparse(self) -> int:
        """How many leading ``sparse_*`` columns are user-side (identical within a session)."""
        return round(self.sparse * self.user_sparse_share)

    def list_len_cap(self, feature: int) -> int:
        """The most ids a list of ``sparse_<feature>`` holds (user-side or item-side cap)."""
        if feature < self.num_user_sparse and self.max_user_list_len is not None:
            return self.max_user_list_len
        return self.max_list_len


@dataclass(frozen=True)
class GenSummary:
    """What :func:`generate_table` wrote.

    Attributes:
        rows: rows written.
        files: Parquet files written.
        bytes: total size of those files.
        seconds: wall time.
    """

    rows: int
    files: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class _FileTask:
    index: int
    path: str
    first_row: int
    num_rows: int


def table_schema(config: GenConfig) -> pa.Schema:
    """Returns the schema of the files (without the ``ds`` partition column)."""
    fields = [
        pa.field("row_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("session_id", pa.int64(), nullable=False),
    ]
    fields += [pa.field(f"dense_{i}", pa.float32()) for i in range(config.dense)]
    fields += [pa.field(f"sparse_{i}", pa.list_(pa.int64())) for i in range(config.sparse)]
    fields.append(pa.field("label", pa.int8(), nullable=False))
    return pa.schema(fields)


def generate_table(
    uri: str,
    config: GenConfig,
    storage_options: Mapping[str, str] | None = None,
    progress: bool = False,
) -> GenSummary:
    """Writes a synthetic table to ``uri`` (any URI :func:`storage.filesystem.resolve` takes).

    Args:
        uri: the table's root; must be empty or absent, so a table is never a mix of runs.
        config: what to generate.
        storage_options: file system options (see :func:`storage.filesystem.resolve`).
        progress: draw a rich progress bar on stderr.

    Raises:
        StorageError: ``uri`` already holds files, or a write failed.
    """
    started = time.perf_counter()
    filesystem, root = resolve(uri, storage_options)
    root = root.rstrip("/") or "/"
    refuse_existing(filesystem, root, uri)
    tasks = list(_plan_files(root, config))
    schema = table_schema(config)
    workers = max(1, min(_MAX_PARALLEL_FILES, os.cpu_count() or 1, len(tasks)))
    total_bytes = 0
    with _progress_bar(progress, config.rows) as advance, ThreadPoolExecutor(workers) as pool:
        for rows, size in pool.map(
            lambda task: _write_file(filesystem, task, config, schema), tasks
        ):
            total_bytes += size
            advance(rows)
    summary = GenSummary(
        rows=config.rows,
        files=len(tasks),
        bytes=total_bytes,
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "generated %s: %d rows in %d files, %.1f MB, %.1fs",
        uri,
        summary.rows,
        summary.files,
        summary.bytes / 1e6,
        summary.seconds,
    )
    return summary


def refuse_existing(filesystem: pafs.FileSystem, root: str, uri: str) -> None:
    """Raises StorageError unless ``root`` is absent or an empty folder: a table is never a
    mix of two runs (``dpp gen``, ``dpp cluster``)."""
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type == pafs.FileType.File:
        raise StorageError(f"writing a table into {uri!r}: it is a file; pick a folder URI")
    existing = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    if any(i.type == pafs.FileType.File for i in existing):
        raise StorageError(
            f"writing a table into {uri!r}: it already holds files; remove the folder or pick "
            "another URI (mixing two runs would break row_id uniqueness)"
        )


def _plan_files(root: str, config: GenConfig) -> Iterator[_FileTask]:
    """Spreads rows evenly over days, then cuts each day into files of rows_per_file."""
    base, extra = divmod(config.rows, config.days)
    first_row = 0
    index = 0
    for day in range(config.days):
        day_rows = base + (1 if day < extra else 0)
        ds = (FIRST_DAY + dt.timedelta(days=day)).isoformat()
        for part, offset in enumerate(range(0, day_rows, config.rows_per_file)):
            num_rows = min(config.rows_per_file, day_rows - offset)
            path = f"{root}/ds={ds}/part-{part:05d}.parquet"
            yield _FileTask(index=index, path=path, first_row=first_row, num_rows=num_rows)
            first_row += num_rows
            index += 1


def _write_file(
    filesystem: pafs.FileSystem, task: _FileTask, config: GenConfig, schema: pa.Schema
) -> tuple[int, int]:
    """Generates and writes one file; returns ``(rows, bytes)``."""
    table = _generate_rows(task, config, schema)
    folder = task.path.rsplit("/", 1)[0]
    try:
        filesystem.create_dir(folder, recursive=True)
        with filesystem.open_output_stream(task.path) as sink:
            with pq.ParquetWriter(sink, schema, compression="zstd", compression_level=1) as w:
                w.write_table(table, row_group_size=config.row_group_rows)
            size = int(sink.tell())
    except OSError as exc:
        raise StorageError(
            f"writing {task.path!r} failed ({exc}); check the URI is writable and has space"
        ) from exc
    return task.num_rows, size


def _generate_rows(task: _FileTask, config: GenConfig, schema: pa.Schema) -> pa.Table:
    """Builds one file's rows; seeded by (seed, file index) so files are independent."""
    rng = np.random.default_rng([config.seed, task.index])
    n = task.num_rows
    session_of_row, first_rows = _sessions(rng, n, config.rows_per_session)
    num_sessions = len(first_rows)
    num_users = max(1, math.ceil(config.rows / (config.rows_per_session * _SESSIONS_PER_USER)))
    user_of_session = rng.integers(0, num_users, size=num_sessions, dtype=np.int64)

    columns: dict[str, pa.Array] = {
        "row_id": pa.array(np.arange(task.first_row, task.first_row + n, dtype=np.int64)),
        "user_id": pa.array(user_of_session[session_of_row]),
        "session_id": pa.array((task.first_row + first_rows)[session_of_row]),
    }
    dense = _dense(rng, n, config)
    for i in range(config.dense):
        columns[f"dense_{i}"] = dense[i]
    for i in range(config.sparse):
        if i < config.num_user_sparse:
            per_session = _id_lists(rng, num_sessions, i, config)
            columns[f"sparse_{i}"] = pc.take(per_session, pa.array(session_of_row))
        else:
            columns[f"sparse_{i}"] = _id_lists(rng, n, i, config)
    columns["label"] = pa.array(_labels(rng, dense[0] if config.dense else None, n, config))
    table = pa.Table.from_pydict(columns, schema=schema)
    if not config.clustered:
        # Interleave sessions; row_id still runs in file order (exactly-once checks use it).
        table = table.take(pa.array(rng.permutation(n)))
        table = table.set_column(0, schema.field(0), columns["row_id"])
    return table


def _sessions(
    rng: np.random.Generator, n: int, rows_per_session: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Returns each row's session index and each session's first row (file-relative).

    Session lengths are geometric with the configured mean; sessions never cross files, so a
    session's rows are always adjacent in one file.
    """
    if rows_per_session <= 1.0:
        rows = np.arange(n, dtype=np.int64)
        return rows, rows
    lengths = rng.geometric(1.0 / rows_per_session, size=int(n / rows_per_session * 1.5) + 16)
    while lengths.sum() < n:  # rare: only when the first draw ran short
        lengths = np.concatenate([lengths, rng.geometric(1.0 / rows_per_session, size=n)])
    starts = np.concatenate([[0], np.cumsum(lengths)])
    first_rows = starts[starts < n].astype(np.int64)
    is_first = np.zeros(n, dtype=np.int64)
    is_first[first_rows] = 1
    return np.cumsum(is_first) - 1, first_rows


def _dense(rng: np.random.Generator, n: int, config: GenConfig) -> list[pa.Array]:
    """Dense features: mostly lognormal (skewed, positive), every fourth normal with negatives."""
    values = rng.standard_normal((config.dense, n), dtype=np.float32)
    nulls = rng.random((config.dense, n), dtype=np.float32) < config.null_share
    arrays = []
    for i in range(config.dense):
        if i % 4 == 3:
            column = values[i] + np.float32(2.0)  # ~2% below zero
        else:
            column = np.exp(values[i]) * np.float32(10.0 ** (i % 3))
        arrays.append(pa.array(column, type=pa.float32(), mask=nulls[i]))
    return arrays


def _id_lists(rng: np.random.Generator, count: int, feature: int, config: GenConfig) -> pa.Array:
    """``count`` lists of Zipf-distributed ids built from offsets and values, never per row.

    Lengths are floor(exponential) clipped to the feature's cap (``max_list_len``, or
    ``max_user_list_len`` for user-side features): mean about a third of the cap, with roughly
    1 in 10 lists empty at the defaults.
    """
    cap = config.list_len_cap(feature)
    scale = cap / 3.0 + 0.5
    lengths = np.minimum(np.floor(rng.exponential(scale, size=count)), cap).astype(np.int32)
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    # Inverse-CDF of a Pareto tail: P(rank >= k) ~ k^-(a-1), i.e. Zipf ranks with exponent a,
    # at a fraction of numpy's rejection sampler's cost.
    uniform = rng.random(total)
    uniform = np.maximum(uniform, np.finfo(np.float64).tiny)
    ranks = np.minimum(np.floor(uniform ** (-1.0 / (config.zipf_a - 1.0))), 2.0**62)
    # A per-feature offset makes each feature's hot ids differ, as with real hashed features.
    salt = (feature * 2_654_435_761) % config.id_space
    ids = (ranks.astype(np.int64) - 1 + salt) % config.id_space
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))


def _labels(
    rng: np.random.Generator, signal: pa.Array | None, n: int, config: GenConfig
) -> NDArray[np.int8]:
    """Clicks with mean ``click_rate`` whose odds rise with log1p(dense_0)."""
    if signal is None:
        probability = np.full(n, config.click_rate)
    else:
        x = np.log1p(np.nan_to_num(signal.to_numpy(zero_copy_only=False), nan=0.0)).astype(
            np.float64
        )
        z = (x - x.mean()) / (x.std() + 1e-9)
        probability = 1.0 / (1.0 + np.exp(-(0.8 * z)))
        probability *= config.click_rate / probability.mean()
    labels: NDArray[np.int8] = (rng.random(n) < np.minimum(probability, 1.0)).astype(np.int8)
    return labels


@contextmanager
def _progress_bar(enabled: bool, total_rows: int) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(rows)``; draws a rich bar on stderr only when enabled."""
    if not enabled:
        yield lambda rows: None
        return
    with Progress(console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("generating rows", total=total_rows)
        yield lambda rows: bar.advance(task, rows)
