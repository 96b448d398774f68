"""Tables: listing a Hive-partitioned Parquet or ORC table, pruning it, and planning its splits.

Owns: what a table is (the files under one URI, their partitions and schema) and how it is cut
into splits. A split is a run of whole, contiguous row groups of ONE file (for ORC, a run of
stripes: :mod:`storage.orc`); it is the unit the master leases to workers, so its id must be
stable: the same bytes planned twice give the same splits with the same ids, in the same order.

Planning, worked example (``target_split_rows=100_000``, ``row_filter="price > 10"``):

1. :meth:`Table.open` lists the URI once (one recursive listing, never one call per folder)
   and reads the first file's footer for the schema.
2. :meth:`Table.files` drops files whose Hive partition values fail ``partition_filter``; it
   evaluates the filter on a small Arrow table with one row per file, so no file is opened.
3. :meth:`Table.plan_splits` reads the surviving files' footers on a thread pool (object stores
   have ~50 ms first-byte latency; 10k footers one after another would take minutes).
4. For each file, row groups whose min/max statistics prove ``price > 10`` false are pruned.
   Say a file has row groups 0..4 with 40k rows each and group 2 is pruned.
5. Surviving groups are packed greedily into contiguous runs of at most 100k rows; a pruned
   group ends a run. Here: [0, 1] (80k) and [3, 4] (80k). A row group bigger than the target
   is a split of its own; a split never crosses files.

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dpp_proto import limits
from storage import orc
from storage.errors import CorruptFileError, StorageError, TableLayoutError, TableNotFoundError
from storage.filesystem import (
    NATIVE_S3_CONNECTIONS,
    fsspec_filesystem_of,
    is_iceberg_uri,
    native_s3,
    native_s3_pool,
    resolve,
)
from storage.filters import Filter, validate_types
from storage.object_store import S3Objects, s3_objects
from storage.orc import ORC_SUFFIXES

logger = logging.getLogger(__name__)

__all__ = [
    "ColumnDrift",
    "FileInfo",
    "Plan",
    "RenamedColumn",
    "SplitInfo",
    "Table",
    "check_partition_values",
    "partition_expression",
    "split_id_of",
    "splits_of_file",
]

# Files with these suffixes are table data; everything else (README, _SUCCESS, .crc) is not.
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
# Path segments starting with these are writer bookkeeping (Spark/Hive), as in pyarrow.dataset.
_HIDDEN_PREFIXES = (".", "_")

_PARQUET_FORMAT = pads.ParquetFileFormat()
# The folder value Hive, Spark and polars write for a null partition value.
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


@dataclass(frozen=True)
class FileInfo:
    """One data file of a table.

    Attributes:
        path: path inside the table's file system (as returned by :func:`resolve`).
        size: bytes; part of every split id, and checked again before a split is read.
        etag: the object store's ETag, or ``""`` where the file system reports none (local
            and memory file systems). Local mtimes are deliberately not used: copying the
            same bytes elsewhere, or touching a file, must not change split ids.
        partition: Hive partition values of the file's folders, e.g. ``{"ds": "2026-01-01"}``,
            URL-decoded and always strings.
    """

    path: str
    size: int
    etag: str
    partition: Mapping[str, str]


@dataclass(frozen=True)
class RenamedColumn:
    """A column one file stores under another name than the table's.

    Iceberg matches columns by field id, so a column renamed after a file was written keeps
    its old name in that file; planning (:mod:`storage.iceberg`) records the pair per split,
    and the reader reads ``file_column`` and hands it on as ``column``.

    Attributes:
        column: the table's name (what specs and filters say).
        file_column: the name inside the file; "" when the file lacks the column but holds
            another one (a dropped column, matched by field id) under the same name.
    """

    column: str
    file_column: str


@dataclass(frozen=True)
class SplitInfo:
    """A run of whole, contiguous row groups of one file: the unit a worker reads.

    Attributes:
        split_id: 16 hex chars of sha1 over (path, file size, etag, first and last row
            group); stable across plans of the same bytes, different for any other range.
        path: path inside the file system returned by :func:`resolve`.
        file_size: the file's size when planned; a reader refuses a file that changed.
        row_groups: contiguous row-group indices, ascending.
        num_rows: rows in those row groups, before any row filter (of a piece: its rows).
        partition: Hive partition values of the file, e.g. ``{"ds": "2026-01-01"}``.
        row_offset: a *piece* of a split (``row_limit`` > 0) holds rows
            ``[row_offset, row_offset + row_limit)`` of the split's row groups, counted before
            the row filter. The master cuts the splits at the tail of an epoch into pieces so
            that ranks get equal rows (``dpp_server.state.rank_units``); planning never does.
        row_limit: rows of a piece; 0: the whole split (``row_offset`` is then 0).
        renamed: columns the file stores under another name (Iceberg renames, matched by
            field id at planning); empty for a Hive table.
    """

    split_id: str
    path: str
    file_size: int
    row_groups: tuple[int, ...]
    num_rows: int
    partition: Mapping[str, str]
    row_offset: int = 0
    row_limit: int = 0
    renamed: tuple[RenamedColumn, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The splits of one table under one set of filters, and what planning cost.

    Attributes:
        splits: in deterministic order: files by path, then by first row group.
        num_files: files holding at least one split.
        num_row_groups: row groups in the splits (after statistics pruning).
        num_rows: rows in the splits, before the row filter (it is exact only when read).
        num_partitions: distinct partitions holding at least one split.
        planning_seconds: wall time of :meth:`Table.plan_splits`.
        drift: the table's columns whose type differs between the planned files (or that a
            planned file lacks); the caller decides which ones matter (the master checks the
            columns a session reads, at session creation).
        snapshot_id: the Iceberg snapshot planned (:mod:`storage.iceberg`); 0 for a Hive
            table.
    """

    splits: list[SplitInfo]
    num_files: int
    num_row_groups: int
    num_rows: int
    num_partitions: int
    planning_seconds: float
    drift: tuple[ColumnDrift, ...] = ()
    snapshot_id: int = 0


@dataclass(frozen=True)
class ColumnDrift:
    """A column whose type is not the same in every file of a plan.

    Attributes:
        column: the column's name.
        types: ``(path, type)`` for each distinct type, each with the first file holding it;
            the first entry is the table's reference file (the one :meth:`Table.open` read
            the schema from). A type of None means the file lacks the column.
    """

    column: str
    types: tuple[tuple[str, pa.DataType | None], ...]


def split_id_of(path: str, file_size: int, etag: str, first_rg: int, last_rg: int) -> str:
    """Returns the stable id of a split; the master's ledger keys on it across restarts."""
    key = f"{path}\x00{file_size}\x00{etag}\x00{first_rg}\x00{last_rg}"
    return hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).hexdigest()[:16]


def partition_expression(partition: Mapping[str, str]) -> pc.Expression:
    """Returns ``k1 == 'v1' AND ...`` for a file's partition values.

    pyarrow uses it to simplify filters that mention partition columns (they are not stored in
    the file) and to materialize those columns when they are projected.
    """
    expression = pc.scalar(True)
    for name, value in partition.items():
        expression = expression & (pc.field(name) == pc.scalar(value))
    return expression


class Table:
    """A Hive-partitioned Parquet table under one URI, listed once when opened.

    Immutable after :meth:`open`, so one instance may be shared by any number of threads.
    The listing is a snapshot: files added later are seen only by a new :meth:`open`.

    Attributes:
        uri: the URI the table was opened with.
        schema: the first file's schema, then the partition columns, always ``pa.string()``
            (dpp's rule: partition values are strings, so ``ds >= '2026-01-02'`` compares ISO
            dates lexicographically).
        partition_columns: Hive partition keys, in folder order.
        filesystem: the file system holding the files (from :func:`resolve`).
        root: the table's root path inside ``filesystem``.
    """

    def __init__(
        self,
        uri: str,
        filesystem: pafs.FileSystem,
        root: str,
        files: Sequence[FileInfo],
        schema: pa.Schema,
        partition_columns: Sequence[str],
        footer_filesystem: pafs.FileSystem | None = None,
        storage_options: Mapping[str, str] | None = None,
    ) -> None:
        """Builds a table from an existing listing; use :meth:`open` instead.

        ``footer_filesystem`` reads Parquet footers at planning (the same files under the
        same paths as ``filesystem``; pyarrow's native S3 client for ``s3://``, see
        :func:`storage.filesystem.native_s3`); planning opens more such clients from
        ``uri`` and ``storage_options`` when it reads more footers at once than one client
        has connections (:func:`storage.filesystem.native_s3_pool`).
        """
        self.uri = uri
        self.filesystem = filesystem
        self._footer_filesystem = footer_filesystem or filesystem
        self._storage_options = dict(storage_options or {})
        # Set by :meth:`open` for plain ``s3://`` tables: footers are then read through
        # obstore, many in flight on one event loop (:mod:`storage.object_store`).
        self._objects: S3Objects | None = None
        self.root = root
        self.schema = schema
        self.partition_columns = list(partition_columns)
        self._files = tuple(sorted(files, key=lambda f: f.path))

    @classmethod
    def open(cls, uri: str, storage_options: Mapping[str, str] | None = None) -> Table:
        """Lists ``uri`` once and reads the first file's footer for the schema.

        Args:
            uri: a folder of Hive-partitioned Parquet files (``.../ds=2026-01-01/x.parquet``),
                or one Parquet file; any URI :func:`resolve` accepts.
            storage_options: file system options (see :func:`resolve`).

        Raises:
            TableNotFoundError: nothing exists at ``uri``, or it holds no Parquet file.
            StorageError: the listing failed, the partition folders are inconsistent, or the
                first file is not readable Parquet.
        """
        if is_iceberg_uri(uri):
            # Imported here: storage.iceberg builds on this module (and imports pyiceberg).
            from storage.iceberg import IcebergTable

            return IcebergTable.open(uri, storage_options)
        filesystem, root = resolve(uri, storage_options)
        if len(root) > 1:
            root = root.rstrip("/")
        footers = native_s3(uri, storage_options)
        objects = s3_objects(uri, storage_options)
        listed = _list_files(filesystem, root, uri, objects)
        files = [f for f in listed if _is_data_file(f.path, root)]
        if not files:
            raise TableNotFoundError(
                # No count of what is there: the message must not describe other files.
                f"table {uri!r}: holds no file ending in "
                f"{'/'.join(PARQUET_SUFFIXES + ORC_SUFFIXES)} outside hidden (_ or .) folders; "
                "check the URI points at the table's root folder (the one holding ds=... folders)"
                if listed
                else f"table {uri!r}: nothing exists there; check the URI and storage options"
            )
        files = sorted(files, key=lambda f: f.path)
        formats = {_is_orc(f.path) for f in files}
        if len(formats) > 1:
            first_orc = next(f.path for f in files if _is_orc(f.path))
            first_parquet = next(f.path for f in files if not _is_orc(f.path))
            raise StorageError(
                f"table {uri!r} mixes ORC ({first_orc!r}) and Parquet ({first_parquet!r}) "
                "files; a table has one format: move one kind elsewhere"
            )
        partition_columns = list(files[0].partition)
        for f in files:
            if list(f.partition) != partition_columns:
                raise TableLayoutError(
                    f"table {uri!r}: inconsistent partition folders: {files[0].path!r} has "
                    f"keys {partition_columns} but {f.path!r} has {list(f.partition)}; every "
                    "file must sit under the same key=value folder levels"
                )
        try:
            file_schema = _read_schema(footers or filesystem, files[0])
        except CorruptFileError:
            if footers is None:
                raise
            # As for footers (:meth:`_footer_of`): retry once through fsspec.
            file_schema = _read_schema(filesystem, files[0])
        # Writers such as polars (and duckdb or Spark on request) also store the partition
        # column inside each file. dpp reads it from the folder name, always as a string, and
        # checks at planning that the file's copy agrees (:func:`check_partition_values`).
        schema = _without(file_schema, partition_columns)
        for column in partition_columns:
            schema = schema.append(pa.field(column, pa.string()))
        logger.info(
            "opened table %s: %d files, partition columns %s", uri, len(files), partition_columns
        )
        table = cls(
            uri, filesystem, root, files, schema, partition_columns, footers, storage_options
        )
        table._objects = objects
        return table

    def files(self, partition_filter: Filter | None = None) -> list[FileInfo]:
        """Returns the files (sorted by path) whose partition values pass ``partition_filter``.

        The filter is evaluated on an Arrow table with one row per file and one string column
        per partition key, so pruning costs no I/O.

        Raises:
            FilterError: the filter names a non-partition column or does not type-check.
        """
        if partition_filter is None:
            return list(self._files)
        partition_schema = pa.schema([pa.field(c, pa.string()) for c in self.partition_columns])
        validate_types(partition_filter, partition_schema, "partition_filter")
        values = pa.table(
            {
                column: pa.array([f.partition[column] for f in self._files], pa.string())
                for column in self.partition_columns
            },
            schema=partition_schema,
        ).append_column("__file_index", pa.array(range(len(self._files)), pa.int64()))
        kept = values.filter(partition_filter.expression).column("__file_index").to_pylist()
        return [self._files[i] for i in kept]

    def plan_splits(
        self,
        target_split_rows: int,
        partition_filter: Filter | None = None,
        row_filter: Filter | None = None,
        max_concurrency: int = 128,
    ) -> Plan:
        """Cuts the table into splits of whole row groups sized toward ``target_split_rows``.

        Args:
            target_split_rows: the most rows a split holds, unless one row group alone is
                bigger. Larger splits mean fewer leases; smaller ones balance better across
                workers and lose less work when a worker dies.
            partition_filter: prunes whole files by partition values.
            row_filter: prunes row groups whose statistics cannot match; rows are filtered
                exactly only when read (:func:`storage.reader.read_split`).
            max_concurrency: footers read at once. Higher hides object-store latency; each
                in-flight footer holds one connection and its bytes.

        Raises:
            ValueError: ``target_split_rows`` or ``max_concurrency`` is below 1.
            FilterError: a filter names an unknown column or does not type-check.
            StorageError: a footer could not be read.
        """
        if target_split_rows < 1:
            raise ValueError(f"target_split_rows must be >= 1, got {target_split_rows}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        started = time.perf_counter()
        files = self.files(partition_filter)
        pruning: pc.Expression | None = None
        if row_filter is not None:
            validate_types(row_filter, self.schema, "row_filter")
            if row_filter.columns:
                pruning = row_filter.expression
        footers = self._footers(files, pruning, max_concurrency)
        splits: list[SplitInfo] = []
        for file, footer in zip(files, footers, strict=True):
            splits.extend(splits_of_file(file, footer.row_groups, target_split_rows))
        drift = self._drift(
            [(f.path, footer.schema) for f, footer in zip(files, footers, strict=True)]
        )
        num_row_groups = sum(len(s.row_groups) for s in splits)
        plan = Plan(
            splits=splits,
            num_files=len({s.path for s in splits}),
            num_row_groups=num_row_groups,
            num_rows=sum(s.num_rows for s in splits),
            num_partitions=len({tuple(s.partition.items()) for s in splits}),
            planning_seconds=time.perf_counter() - started,
            drift=drift,
        )
        logger.info(
            "planned %s: %d splits over %d/%d files, %d row groups kept, %d rows, %.3fs",
            self.uri,
            len(splits),
            plan.num_files,
            len(self._files),
            num_row_groups,
            plan.num_rows,
            plan.planning_seconds,
        )
        return plan

    def _footers(
        self, files: Sequence[FileInfo], pruning: pc.Expression | None, max_concurrency: int
    ) -> list[_Footer]:
        """Every file's footer, ``max_concurrency`` reads in flight, in ``files``' order.

        Plain ``s3://`` tables read Parquet footers through obstore on one event loop
        (:mod:`storage.object_store`); everything else, and any file obstore fails on, on a
        pool of ``max_concurrency`` threads through :meth:`_footer_of`.
        """
        workers = max(1, min(max_concurrency, len(files)))
        clients = self._footer_clients(workers)

        def slow(index: int, _error: BaseException | None = None) -> _Footer:
            return self._footer_of(files[index], pruning, clients[index % len(clients)])

        if self._objects is not None and not any(_is_orc(f.path) for f in files):
            return self._objects.map_tails(
                [(f.path, f.size) for f in files],
                lambda index, tail: self._footer_from_bytes(files[index], pruning, tail),
                slow,
                max_concurrency,
            )
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dpp-plan") as pool:
            return list(pool.map(slow, range(len(files))))

    def _footer_from_bytes(
        self, file: FileInfo, pruning: pc.Expression | None, footer: bytes
    ) -> _Footer:
        """:meth:`_parquet_footer_of` from the file's footer bytes (the last bytes of the
        file, from the start of the footer at least), already read."""
        fragment = _PARQUET_FORMAT.make_fragment(
            pa.BufferReader(footer),
            partition_expression=(
                partition_expression(file.partition) if pruning is not None else None
            ),
        )
        return self._footer_from_fragment(fragment, file, pruning, self.filesystem)

    def _footer_clients(self, concurrency: int) -> list[pafs.FileSystem]:
        """The file systems footers are read through, one per ``NATIVE_S3_CONNECTIONS``
        footers in flight: the native S3 client :meth:`open` made, plus as many more as
        ``concurrency`` needs; ``[filesystem]`` for everything that is not native S3."""
        if self._footer_filesystem is self.filesystem:
            return [self.filesystem]
        more = native_s3_pool(
            self.uri, self._storage_options, concurrency - NATIVE_S3_CONNECTIONS
        ) if concurrency > NATIVE_S3_CONNECTIONS else []  # fmt: skip
        return [self._footer_filesystem, *more]

    def _footer_of(
        self, file: FileInfo, pruning: pc.Expression | None, footers: pafs.FileSystem
    ) -> _Footer:
        """Reads one footer (through ``footers``, see :meth:`_footer_clients`): the row
        groups that may match, and the file's own schema.

        Raises:
            StorageError: the footer is unreadable, or a partition column stored in the file
                disagrees with the folder name (see :func:`check_partition_values`).
        """
        if _is_orc(file.path):
            return self._orc_footer_of(file)
        if footers is not self.filesystem:
            try:
                return self._parquet_footer_of(file, pruning, footers)
            except StorageError as exc:
                # The native client may lack what s3fs has (a profile, a region): retry once
                # through fsspec, whose error (if any) is the one raised.
                logger.debug("native footer read of %s failed (%s); using fsspec", file.path, exc)
        return self._parquet_footer_of(file, pruning, self.filesystem)

    def _parquet_footer_of(
        self, file: FileInfo, pruning: pc.Expression | None, filesystem: pafs.FileSystem
    ) -> _Footer:
        """:meth:`_footer_of` for a Parquet file read through ``filesystem``."""
        try:
            fragment = _PARQUET_FORMAT.make_fragment(
                file.path,
                filesystem,
                # Only statistics pruning needs it; building it costs ~0.1 ms a file, which
                # is a second of CPU on a 10,000-file table.
                partition_expression=(
                    partition_expression(file.partition) if pruning is not None else None
                ),
                file_size=file.size,
            )
        except (OSError, pa.ArrowException) as exc:
            raise self._unreadable(file, exc) from exc
        return self._footer_from_fragment(fragment, file, pruning, filesystem)

    def _footer_from_fragment(
        self,
        fragment: pads.ParquetFileFragment,
        file: FileInfo,
        pruning: pc.Expression | None,
        filesystem: pafs.FileSystem,
    ) -> _Footer:
        """The row groups that may match and the schema, from a fragment over the file (or
        over its footer's bytes); ``filesystem`` reads a stored partition column whose row
        group has no statistics (:func:`check_partition_values`)."""
        try:
            fragment.ensure_complete_metadata()
            physical = fragment.physical_schema
            stored = [c for c in self.partition_columns if c in physical.names]
            if stored:
                check_partition_values(fragment, file, stored, filesystem)
            if pruning is None:
                row_groups = fragment.row_groups
            else:
                row_groups = [
                    rg
                    for part in fragment.split_by_row_group(filter=pruning, schema=self.schema)
                    for rg in part.row_groups
                ]
        except (OSError, pa.ArrowException) as exc:
            raise self._unreadable(file, exc) from exc
        return _Footer(
            row_groups=[(rg.id, rg.num_rows) for rg in row_groups if rg.num_rows > 0],
            schema=_without(physical, self.partition_columns),
        )

    def _unreadable(self, file: FileInfo, exc: BaseException) -> CorruptFileError:
        return CorruptFileError(
            f"table {self.uri!r}: reading the footer of {file.path!r} failed ({exc}); "
            "the file may have been deleted or rewritten since the table was opened, or "
            "is not Parquet: reopen the table, or remove the file"
        )

    def _orc_footer_of(self, file: FileInfo) -> _Footer:
        """An ORC file's stripes (every one: pyarrow exposes no stripe statistics to prune
        with) and schema; partition columns it stores are checked by reading them."""
        rows = orc.stripe_rows(self.filesystem, file.path, file.size)
        physical = orc.read_schema(self.filesystem, file.path)
        stored = [c for c in self.partition_columns if c in physical.names]
        if stored:
            table = pa.Table.from_batches(
                orc.scan_stripes(self.filesystem, file.path, range(len(rows)), stored, 1 << 20),
                schema=pa.schema([physical.field(c) for c in stored]),
            )
            for name in stored:
                values = table.column(name)
                bounds = pc.min_max(values).as_py()
                _check_stored_value(
                    file,
                    name,
                    values.type,
                    "the file",
                    (bounds["min"], bounds["max"], values.null_count),
                    table.num_rows,
                )
        return _Footer(
            row_groups=[(i, n) for i, n in enumerate(rows) if n > 0],
            schema=_without(physical, self.partition_columns),
        )

    def _drift(self, schemas: Sequence[tuple[str, pa.Schema]]) -> tuple[ColumnDrift, ...]:
        """The table's columns whose type differs between files (or that some file lacks).

        The reference is the schema :meth:`open` read (the table's first file); each other
        distinct type is reported with the first file (in path order) that has it.
        """
        reference = self._files[0].path if self._files else ""
        distinct = _distinct_schemas(schemas)
        drift: list[ColumnDrift] = []
        for field in self.schema:
            if field.name in self.partition_columns:
                continue
            seen: dict[pa.DataType | None, str] = {field.type: reference}
            for path, schema in distinct:
                index = schema.get_field_index(field.name)
                dtype = schema.field(index).type if index >= 0 else None
                if dtype not in seen:
                    seen[dtype] = path
            if len(seen) > 1:
                drift.append(
                    ColumnDrift(column=field.name, types=tuple((p, t) for t, p in seen.items()))
                )
        return tuple(drift)


def _distinct_schemas(schemas: Sequence[tuple[str, pa.Schema]]) -> list[tuple[str, pa.Schema]]:
    """Each distinct schema of ``schemas`` once, with the first path holding it, in order.

    Why: a table's files nearly always share one schema, and comparing 10,000 schemas field
    by field in Python costs a sizeable part of planning's CPU; one C++ ``equals`` per file
    against the few schemas seen so far does not. Equal schemas have equal field types, so
    :meth:`Table._drift` over the distinct ones reports the same columns, types and first
    files as over all of them.
    """
    distinct: list[tuple[str, pa.Schema]] = []
    for path, schema in schemas:
        if not any(schema.equals(known) for _, known in distinct):
            distinct.append((path, schema))
    return distinct


@dataclass(frozen=True)
class _Footer:
    """What planning keeps of one file's footer."""

    row_groups: list[tuple[int, int]]
    schema: pa.Schema


def _without(schema: pa.Schema, names: Sequence[str]) -> pa.Schema:
    """``schema`` minus the fields named ``names`` (partition columns a writer stored)."""
    for name in names:
        index = schema.get_field_index(name)
        if index >= 0:
            schema = schema.remove(index)
    return schema


def check_partition_values(
    fragment: pads.ParquetFileFragment,
    file: FileInfo,
    stored: Sequence[str],
    filesystem: pafs.FileSystem | None = None,
) -> None:
    """Checks that the partition columns a Parquet file also stores hold its folder's values.

    Cheap: every row group's min/max statistics must equal the folder value (converted to
    the column's type: ``ds=2026-01-01`` equals a date32 2026-01-01, ``h=03`` an int 3), and
    hold no null (a ``__HIVE_DEFAULT_PARTITION__`` folder must hold only nulls). A row group
    without statistics has that one column read instead.

    Raises:
        StorageError: the values disagree, naming the file, the column, the folder value and
            what the file holds.
    """
    metadata = fragment.metadata
    physical = fragment.physical_schema
    for name in stored:
        column_index = _leaf_index(metadata, name)
        for rg in range(metadata.num_row_groups):
            group = metadata.row_group(rg)
            if group.num_rows == 0:
                continue
            bounds = _min_max_nulls(fragment, file, filesystem, group, rg, column_index, name)
            _check_stored_value(
                file, name, physical.field(name).type, f"row group {rg}", bounds, group.num_rows
            )


def _check_stored_value(
    file: FileInfo,
    name: str,
    dtype: pa.DataType,
    where: str,
    bounds: tuple[object, object, int],
    rows: int,
) -> None:
    """Refuses a stored partition column whose ``(min, max, nulls)`` over ``rows`` rows is not
    the folder value (see :func:`check_partition_values`)."""
    folder_value = file.partition[name]
    low, high, nulls = bounds
    if folder_value == _HIVE_NULL:
        agrees = nulls == rows
    else:
        try:
            expected = pa.scalar(folder_value).cast(dtype).as_py()
        except (pa.ArrowException, ValueError) as exc:
            raise StorageError(
                f"{file.path!r}: partition column {name!r} is stored in the file as {dtype}, "
                f"but the folder value {folder_value!r} is not a {dtype} ({exc}); the folder "
                "and the file disagree: rewrite the file or rename the folder"
            ) from exc
        agrees = nulls == 0 and low == expected and high == expected
    if not agrees:
        raise StorageError(
            f"{file.path!r}: partition column {name!r} is stored in the file and disagrees "
            f"with its folder {name}={folder_value}: {where} holds min {low!r}, max {high!r}, "
            f"{nulls} null(s) of {rows} rows; dpp would deliver the folder's value, so it "
            "refuses the table: rewrite the file under the right folder, or drop the column "
            "from it"
        )


def _leaf_index(metadata: pq.FileMetaData, name: str) -> int:
    """The Parquet leaf column index of top-level column ``name`` (-1 if not a leaf)."""
    for i in range(metadata.num_columns):
        if metadata.schema.column(i).path == name:
            return i
    return -1


def _min_max_nulls(
    fragment: pads.ParquetFileFragment,
    file: FileInfo,
    filesystem: pafs.FileSystem | None,
    group: pq.RowGroupMetaData,
    rg: int,
    column_index: int,
    name: str,
) -> tuple[object, object, int]:
    """Min, max and null count of one column in one row group: from the statistics, or (when
    the writer wrote none) from reading that one column of that one row group, through
    ``filesystem`` (or the fragment's own, when None: a fragment over footer bytes has
    none)."""
    if column_index >= 0:
        stats = group.column(column_index).statistics
        if stats is not None and stats.has_min_max and stats.has_null_count:
            return stats.min, stats.max, int(stats.null_count)
        if stats is not None and stats.has_null_count and stats.null_count == group.num_rows:
            return None, None, int(stats.null_count)
    # Not through ``fragment``: its partition expression would hand back the folder's value.
    if filesystem is None:
        filesystem, path = fragment.filesystem, fragment.path
    else:
        path = file.path
    with filesystem.open_input_file(path) as source:
        values = pq.ParquetFile(source).read_row_group(rg, columns=[name]).column(0)
    bounds = pc.min_max(values).as_py()
    return bounds["min"], bounds["max"], int(values.null_count)


def splits_of_file(
    file: FileInfo, row_groups: Sequence[tuple[int, int]], target_split_rows: int
) -> list[SplitInfo]:
    """Packs a file's surviving row groups greedily into contiguous runs.

    Loops per row group (tens per file), never per row.
    """
    runs: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    current_rows = 0
    for index, rows in sorted(row_groups):
        contiguous = bool(current) and index == current[-1][0] + 1
        if current and (not contiguous or current_rows + rows > target_split_rows):
            runs.append(current)
            current, current_rows = [], 0
        current.append((index, rows))
        current_rows += rows
    if current:
        runs.append(current)
    return [
        SplitInfo(
            split_id=split_id_of(file.path, file.size, file.etag, run[0][0], run[-1][0]),
            path=file.path,
            file_size=file.size,
            row_groups=tuple(index for index, _ in run),
            num_rows=sum(rows for _, rows in run),
            partition=file.partition,
        )
        for run in runs
    ]


def _walk_local(root: str, uri: str) -> list[tuple[str, int, str]]:
    """Every file under a local ``root``, without following symlinked folders (a link loop
    would make the listing endless) and at most ``MAX_LISTING_DEPTH`` levels deep."""
    entries: list[tuple[str, int, str]] = []
    for folder, subfolders, names in os.walk(root, followlinks=False):
        depth = folder[len(root) :].count(os.sep)
        if depth >= limits.MAX_LISTING_DEPTH and subfolders:
            raise StorageError(
                f"table {uri!r}: {folder!r} is "
                + limits.over_limit("depth", depth + 1, limits.MAX_LISTING_DEPTH, "folder levels")
                + "; a table is partition folders (ds=...) holding Parquet files"
            )
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):  # a link to a file is read; a dangling one is not
                entries.append((path, os.path.getsize(path), ""))
        _check_file_count(len(entries), uri)
    return entries


def _check_file_count(count: int, uri: str) -> None:
    if count > limits.MAX_TABLE_FILES:
        raise StorageError(
            f"table {uri!r}: "
            + limits.over_limit("files", count, limits.MAX_TABLE_FILES, "files")
            + "; compact the table (dpp cluster) or point at a partition folder"
        )


def _list_files(
    filesystem: pafs.FileSystem, root: str, uri: str, objects: S3Objects | None = None
) -> list[FileInfo]:
    """Lists every file under ``root`` (or ``root`` itself if it is a file) in one call,
    within :mod:`dpp_proto.limits`' depth and file count.

    ``objects``: obstore access to the same bucket (:func:`s3_objects`). It lists by prefix
    (ListObjectsV2 without a delimiter, 1,000 keys a page) with ETags and parses in Rust:
    10,000 keys in about 0.4 s behind a 20 ms proxy, where s3fs's Python parsing takes
    2.7-3.8 s (docs/benchmarks.md, "Cold start on many files"). When it fails or finds
    nothing (``root`` may be one file), the listing goes through fsspec as without it.
    """
    inner = fsspec_filesystem_of(filesystem)
    entries: list[tuple[str, int, str]] = []
    if objects is not None:
        try:
            entries = objects.list_files(root)
        except OSError as exc:
            logger.info("obstore listing of %s failed (%s); listing through s3fs", root, exc)
    try:
        if entries:
            pass
        elif inner is not None:
            # fsspec, not pyarrow, so that object-store ETags survive into split ids.
            found = inner.find(root, detail=True)
            if len(found) == 1 and not next(iter(found.values())):
                # fsspec's generic find() returns {path: {}} when the URI is one file.
                found = {path: inner.info(path) for path in found}
            entries = [
                (path, int(info.get("size") or 0), _etag_of(info))
                for path, info in found.items()
                if info.get("type", "file") == "file"
            ]
        else:
            info = filesystem.get_file_info(root)
            if info.type == pafs.FileType.File:
                entries = [(info.path, int(info.size), "")]
            elif isinstance(filesystem, pafs.LocalFileSystem):
                entries = _walk_local(root, uri)
            else:
                selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
                entries = [
                    (i.path, int(i.size), "")
                    for i in filesystem.get_file_info(selector)
                    if i.type == pafs.FileType.File
                ]
    except OSError as exc:
        raise StorageError(
            f"table {uri!r}: listing {root!r} failed ({exc}); check the URI, credentials and "
            "storage options"
        ) from exc
    _check_file_count(len(entries), uri)
    return [
        FileInfo(path=path, size=size, etag=etag, partition=_partition_of(path, root))
        for path, size, etag in entries
    ]


def _etag_of(info: Mapping[str, object]) -> str:
    etag = info.get("ETag") or info.get("etag") or ""
    return str(etag).strip('"')


def _relative_parts(path: str, root: str) -> list[str]:
    if path == root:
        return [path.rsplit("/", 1)[-1]]
    relative = path[len(root) :] if path.startswith(root) else path
    return [p for p in relative.split("/") if p]


def _is_data_file(path: str, root: str) -> bool:
    parts = _relative_parts(path, root)
    if any(p.startswith(_HIDDEN_PREFIXES) for p in parts):
        return False
    return parts[-1].lower().endswith(PARQUET_SUFFIXES + ORC_SUFFIXES)


def _is_orc(path: str) -> bool:
    return path.lower().endswith(ORC_SUFFIXES)


def _partition_of(path: str, root: str) -> dict[str, str]:
    """Returns the ``key=value`` folder segments between ``root`` and the file, decoded."""
    partition: dict[str, str] = {}
    for part in _relative_parts(path, root)[:-1]:
        if "=" in part:
            key, value = part.split("=", 1)
            partition[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    return partition


def _read_schema(filesystem: pafs.FileSystem, file: FileInfo) -> pa.Schema:
    if _is_orc(file.path):
        return orc.read_schema(filesystem, file.path)
    try:
        fragment = _PARQUET_FORMAT.make_fragment(file.path, filesystem, file_size=file.size)
        return fragment.physical_schema
    except (OSError, pa.ArrowException) as exc:
        raise CorruptFileError(
            f"reading the schema from the footer of {file.path!r} failed ({exc}); is it a "
            "complete Parquet file? Remove or rewrite it"
        ) from exc
