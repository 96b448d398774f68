"""Reads one split as a stream of bounded Arrow record batches.

Owns: turning a :class:`~storage.table.SplitInfo` into record batches: exactly the split's row
groups, only the requested columns (partition columns materialized from the split's partition
values), the row filter applied exactly. Workers call this; it keeps no state between calls.

Two steps, so a caller can time them apart (the worker reports ``read_s`` and ``filter_s``):
:func:`scan_split` decodes the row groups (projection plus the filter's own columns) and
:func:`filter_rows` applies the row filter exactly and drops the filter-only columns;
:func:`read_split` is both. Row groups whose statistics rule the filter out were already
dropped at planning (:meth:`storage.table.Table.plan_splits`), so the scan needs no filter.

Memory stays bounded whatever the split size: the scan holds one row group's column chunks
plus a couple of decoded batches of at most ``batch_rows`` rows; the split is never
materialized whole.

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from storage import orc
from storage.errors import SplitChangedError, StorageError
from storage.filters import Filter, validate_types
from storage.remote import ReadOptions, Source, column_chunk_ranges, open_source
from storage.table import SplitInfo, partition_expression

logger = logging.getLogger(__name__)

__all__ = ["filter_rows", "read_split", "scan_split"]

# Batches decoded ahead of the consumer: enough to overlap decode with the caller's transform,
# small enough that a wide table's batches do not pile up.
_BATCH_READAHEAD = 2

_PARQUET_FORMAT = pads.ParquetFileFormat()
_DEFAULT_READ = ReadOptions()


def read_split(
    split: SplitInfo,
    *,
    filesystem: pafs.FileSystem,
    columns: Sequence[str],
    row_filter: Filter | None,
    batch_rows: int,
    read_options: ReadOptions | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yields the split's rows that pass ``row_filter``, ``columns`` only, in file order.

    Args:
        split: what to read, as planned by :meth:`storage.table.Table.plan_splits`.
        filesystem: the table's file system (:func:`storage.filesystem.resolve`).
        columns: columns to yield, in this order; may include partition columns.
        row_filter: applied exactly; may use columns that are not yielded.
        batch_rows: the most rows a yielded batch holds (at least 1). Empty batches are
            never yielded.
        read_options: how the file is fetched (coalesced ranges, fsspec cache); the
            defaults of :class:`storage.remote.ReadOptions` when None.

    Raises:
        SplitChangedError: the file is gone or its size differs from planning time.
        StorageError: a column is unknown, or the file cannot be read.
        FilterError: the row filter names a column the file lacks.
        ValueError: ``batch_rows`` is below 1.
    """
    scan = scan_split(
        split,
        filesystem=filesystem,
        columns=columns,
        row_filter=row_filter,
        batch_rows=batch_rows,
        read_options=read_options,
    )
    for batch in scan:
        kept = filter_rows(batch, row_filter, columns)
        if kept.num_rows:
            yield kept


def scan_split(
    split: SplitInfo,
    *,
    filesystem: pafs.FileSystem,
    columns: Sequence[str],
    row_filter: Filter | None,
    batch_rows: int,
    read_options: ReadOptions | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yields the split's rows before the row filter: ``columns``, then the columns only
    ``row_filter`` reads, in file order; pass each batch to :func:`filter_rows`.

    Arguments, limits and errors are :func:`read_split`'s; the filter's column types are
    checked here, before the first batch, so a type error never looks like an I/O failure.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    options = read_options or _DEFAULT_READ
    source = Source(split.path)
    if not split.path.lower().endswith(orc.ORC_SUFFIXES):
        try:
            # Before the size check: a remote footer fetch starts now, and overlaps it.
            source = open_source(filesystem, split.path, split.file_size, options)
        except OSError as exc:
            raise StorageError(
                f"split {split.split_id}: opening {split.path!r} failed ({exc}); check the "
                "storage options and that the file still exists, or replan the table"
            ) from exc
    try:
        _check_unchanged(split, filesystem)
        yield from _scan(split, filesystem, source, columns, row_filter, batch_rows, options)
    finally:
        source.close()


def _scan(
    split: SplitInfo,
    filesystem: pafs.FileSystem,
    source: Source,
    columns: Sequence[str],
    row_filter: Filter | None,
    batch_rows: int,
    options: ReadOptions,
) -> Iterator[pa.RecordBatch]:
    """:func:`scan_split` once the file is open."""
    fragment = None
    if split.path.lower().endswith(orc.ORC_SUFFIXES):
        schema = orc.read_schema(filesystem, split.path)
    else:
        try:
            whole_file = _PARQUET_FORMAT.make_fragment(
                source.file,
                None if source.remote else filesystem,
                partition_expression=partition_expression(split.partition),
                file_size=None if source.remote else split.file_size,
            )
            schema = whole_file.physical_schema
            # Not make_fragment(row_groups=...): pyarrow passes those through set(), which
            # loses their order (row groups [7, 8] come back as [8, 7]); subset() keeps it.
            fragment = whole_file.subset(row_group_ids=list(split.row_groups))
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(
                f"split {split.split_id}: reading the footer of {split.path!r} or selecting "
                f"row groups {list(split.row_groups)} failed ({exc}); the file may be corrupt "
                "or rewritten: replan the table"
            ) from exc
    # Partition columns come from the folder name, always as strings, even when the writer
    # also stored them in the file (polars does; planning checked that the copy agrees).
    file_schema = schema
    for name in split.partition:
        index = file_schema.get_field_index(name)
        if index >= 0:
            file_schema = file_schema.remove(index)
    schema = file_schema
    for name in split.partition:
        schema = schema.append(pa.field(name, pa.string()))
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise StorageError(
            f"split {split.split_id} ({split.path!r}): unknown column(s) {missing}; the file "
            f"has {schema.names}: fix the projection"
        )
    scanned = list(columns)
    if row_filter is not None:
        validate_types(row_filter, schema, "row_filter")
        scanned += sorted(c for c in row_filter.columns if c not in scanned)
    from_file = [c for c in scanned if c not in split.partition]
    if fragment is None:  # ORC: row_groups are stripes
        batches = orc.scan_stripes(filesystem, split.path, split.row_groups, from_file, batch_rows)
    else:
        if source.ranges is not None:
            source.ranges.prefetch(
                column_chunk_ranges(fragment.metadata, split.row_groups, from_file)
            )
        batches = fragment.to_batches(
            schema=file_schema,
            columns=from_file,
            batch_size=batch_rows,
            batch_readahead=_BATCH_READAHEAD,
            fragment_readahead=1,
            use_threads=True,
            fragment_scan_options=options.scan_options(source.remote),
        )
    bounded = _bounded(batches, batch_rows, split)
    if len(from_file) == len(scanned):
        yield from bounded
        return
    output = pa.schema([schema.field(c) for c in scanned])
    values = {name: pa.scalar(value, pa.string()) for name, value in split.partition.items()}
    for batch in bounded:
        arrays = [
            pa.repeat(values[c], batch.num_rows) if c in values else batch.column(c)
            for c in scanned
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=output)


def filter_rows(
    batch: pa.RecordBatch, row_filter: Filter | None, columns: Sequence[str]
) -> pa.RecordBatch:
    """The rows of a :func:`scan_split` batch that pass ``row_filter`` (a null result drops
    the row, as SQL's WHERE does), ``columns`` only; the batch itself when there is no filter."""
    if row_filter is None:
        return batch
    kept = batch.filter(row_filter.expression)
    return kept if kept.num_columns == len(columns) else kept.select(list(columns))


def _check_unchanged(split: SplitInfo, filesystem: pafs.FileSystem) -> None:
    """Refuses a file rewritten since planning: its row groups would no longer be the split."""
    info = filesystem.get_file_info(split.path)
    if info.type != pafs.FileType.File:
        raise SplitChangedError(
            f"split {split.split_id}: file {split.path!r} no longer exists; the table changed "
            "since planning: start a new session (or replan) over the current files"
        )
    if info.size != split.file_size:
        raise SplitChangedError(
            f"split {split.split_id}: file {split.path!r} is {info.size} bytes but was "
            f"{split.file_size} when planned; it was rewritten: start a new session (or replan)"
        )


def _bounded(
    batches: Iterator[pa.RecordBatch], batch_rows: int, split: SplitInfo
) -> Iterator[pa.RecordBatch]:
    """Skips empty batches and slices (zero-copy) any batch above ``batch_rows``."""
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if batch.num_rows <= batch_rows:
                yield batch
                continue
            for offset in range(0, batch.num_rows, batch_rows):
                yield batch.slice(offset, batch_rows)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(
            f"split {split.split_id}: reading row groups {list(split.row_groups)} of "
            f"{split.path!r} failed ({exc}); the file may be corrupt or rewritten: replan"
        ) from exc
