"""Apache Iceberg tables: planning from a pinned snapshot's manifests, columns by field id.

Owns: everything dpp knows about Iceberg (through pyiceberg): what an ``iceberg://`` URI
names, how a catalog is found, which snapshot and schema a session reads, and how the data
files the manifests keep become dpp's ordinary splits (runs of Parquet row groups, as
:mod:`storage.table` plans them; the reader needs nothing Iceberg-specific but the renames
each split carries).

URIs: ``iceberg://<catalog>/<namespace>.<table>`` reads the table's current snapshot, under
its current schema; ``iceberg://<catalog>/<namespace>.<table>@<snapshot_id>`` reads that
snapshot under the schema it was committed with (as Spark's and pyiceberg's time travel do).
A nested namespace is dotted too (``iceberg://prod/a.b.events``: namespace ``a.b``).

Catalogs are pyiceberg's own configuration, read afresh on every open: ``.pyiceberg.yaml``
(in ``$PYICEBERG_HOME`` or the home folder) or ``PYICEBERG_CATALOG__<NAME>__<KEY>``
environment variables (``__URI``, ``__TYPE``: ``rest``, ``sql``, ``glue``, ...). The master
plans with it; workers ask it only for the table's location, to pick the file system.

Planning, worked example (``row_filter="ds = '2026-01-02' AND price > 10"``, the table
partitioned by ``ds``, snapshot 42 holding 30 data files over three days):

1. :meth:`IcebergTable.open` loads the table from its catalog and pins the snapshot (the
   current one: 42) and the schema (the current one).
2. The row filter is translated into a pyiceberg expression (:func:`iceberg_filter`; only
   the parts it can translate soundly, the rest is left to the exact filter) and handed to
   ``scan(snapshot_id=42).plan_files()``: pyiceberg reads the manifest list and the
   manifests and drops the 20 files of other days (partition values) and those whose column
   bounds rule out ``price > 10`` (column statistics), without opening a data file.
3. The 10 surviving files' footers are read concurrently: each file's columns are matched
   to the table's by field id (a column renamed after the file was written keeps its old
   name in the file: the split records it, :class:`~storage.table.RenamedColumn`), and its
   row groups pruned by statistics as for a Hive table, with the filter's columns under the
   file's names.
4. Row groups are packed into splits exactly as for a Hive table
   (:func:`storage.table.splits_of_file`). The session journals the splits and the snapshot
   id: every epoch and every resume reads those files, whatever is committed later.

Refused at planning, naming the file: delete files (v2 position or equality deletes: rows
would come back that the table deleted; compact the table first) and data files that are not
Parquet. A ``partition_filter`` is refused too: Iceberg partitions are hidden, and the row
filter prunes them.

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import sqlglot
from pyiceberg import expressions as ice
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.manifest import FileFormat
from pyiceberg.schema import Schema
from pyiceberg.table import Table as PyIcebergTable
from pyiceberg.utils.config import Config
from sqlglot import exp

from storage.errors import (
    CorruptFileError,
    FilterError,
    StorageError,
    TableLayoutError,
    TableNotFoundError,
    TableUriError,
)
from storage.filesystem import native_s3, resolve
from storage.filters import Filter, parse_filter, validate_types
from storage.table import (
    ColumnDrift,
    FileInfo,
    Plan,
    RenamedColumn,
    SplitInfo,
    Table,
    splits_of_file,
)

logger = logging.getLogger(__name__)

__all__ = ["IcebergTable", "IcebergUri", "iceberg_filter", "location_of", "parse_uri"]

_URI = re.compile(r"^iceberg://(?P<catalog>[^/@]+)/(?P<name>[^/@]+)(?:@(?P<snapshot>[^/@]*))?$")
_FIELD_ID = b"PARQUET:field_id"
_PARQUET_FORMAT = pads.ParquetFileFormat()
_SHOWN_SNAPSHOTS = 5


@dataclass(frozen=True)
class IcebergUri:
    """What an ``iceberg://`` URI names.

    Attributes:
        catalog: the pyiceberg catalog's name (its configuration key).
        namespace: dotted namespace (``db`` or ``a.b``).
        table: the table's name within the namespace.
        snapshot_id: the pinned snapshot (``@<id>``), or None: the current one.
    """

    catalog: str
    namespace: str
    table: str
    snapshot_id: int | None = None

    @property
    def identifier(self) -> str:
        """``namespace.table``, as pyiceberg's catalogs take it."""
        return f"{self.namespace}.{self.table}"


def parse_uri(uri: str) -> IcebergUri:
    """Parses ``iceberg://<catalog>/<namespace>.<table>[@<snapshot_id>]``.

    Raises:
        TableUriError: the URI does not have that shape, naming what is missing.
    """
    shape = "iceberg://<catalog>/<namespace>.<table>, optionally @<snapshot_id>"
    match = _URI.match(uri)
    if match is None:
        raise TableUriError(
            f"table_uri {uri!r} is not an Iceberg table URI; write it as {shape} "
            "(e.g. iceberg://prod/analytics.clicks)"
        )
    name = match.group("name")
    namespace, dot, table = name.rpartition(".")
    if not dot or not namespace or not table:
        raise TableUriError(
            f"table_uri {uri!r}: {name!r} names no namespace; write <namespace>.<table> ({shape})"
        )
    snapshot: int | None = None
    if match.group("snapshot") is not None:
        text = match.group("snapshot")
        if not text.isdigit():
            raise TableUriError(
                f"table_uri {uri!r}: snapshot {text!r} is not a snapshot id (a positive "
                "integer); drop the @... to read the current snapshot"
            )
        snapshot = int(text)
    return IcebergUri(match.group("catalog"), namespace, table, snapshot)


def _catalog(name: str) -> Catalog:
    """Loads the catalog ``name`` from pyiceberg's configuration, read now (not at import:
    a process may be configured after pyiceberg was first imported).

    Raises:
        TableNotFoundError: no catalog of that name is configured.
        StorageError: the configuration is there but the catalog cannot be loaded.
    """
    conf = dict(Config().get_catalog_config(name) or {})
    if not conf:
        upper = name.upper()
        raise TableNotFoundError(
            f"Iceberg catalog {name!r} is not configured on this process; set "
            f"PYICEBERG_CATALOG__{upper}__URI (and PYICEBERG_CATALOG__{upper}__TYPE, e.g. "
            "rest or sql) in the master's and workers' environment, or add catalog "
            f"{name!r} to .pyiceberg.yaml (in $PYICEBERG_HOME or the home folder)"
        )
    try:
        # Values as configured (a .pyiceberg.yaml may nest them); pyiceberg reads them itself.
        properties: dict[str, Any] = {str(k): v for k, v in conf.items()}
        return load_catalog(name, **properties)
    except Exception as exc:  # pyiceberg raises ValueError, ImportError, HTTP and SQL errors
        raise StorageError(
            f"Iceberg catalog {name!r}: loading it failed ({type(exc).__name__}: {exc}); "
            "check its configuration (uri, type, credentials) and that it is reachable"
        ) from exc


def _load(ref: IcebergUri, uri: str) -> PyIcebergTable:
    """Loads the table ``ref`` names from its catalog.

    Raises:
        TableNotFoundError: unknown catalog, namespace or table, naming it.
        StorageError: the catalog failed.
    """
    catalog = _catalog(ref.catalog)
    try:
        return catalog.load_table(ref.identifier)
    except (NoSuchTableError, NoSuchNamespaceError) as exc:
        raise TableNotFoundError(
            f"table_uri {uri!r}: catalog {ref.catalog!r} has no table {ref.identifier!r} "
            f"({exc}){_known_tables(catalog, ref.namespace)}; check the namespace and table "
            "name"
        ) from exc
    except Exception as exc:
        raise StorageError(
            f"table_uri {uri!r}: loading {ref.identifier!r} from catalog {ref.catalog!r} "
            f"failed ({type(exc).__name__}: {exc}); check that the catalog is reachable"
        ) from exc


def _known_tables(catalog: Catalog, namespace: str) -> str:
    """``; namespace 'db' holds: a, b`` (best effort: the message must not fail)."""
    try:
        names = sorted(".".join(identifier) for identifier in catalog.list_tables(namespace))
    except Exception:
        return ""
    if not names:
        return f"; namespace {namespace!r} holds no table"
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return f"; namespace {namespace!r} holds: {shown}"


def location_of(uri: str) -> str:
    """The table's location (the URI its data files live under), asked of its catalog.

    Workers call it once per session (through :func:`storage.filesystem.resolve`) to pick
    the file system; the splits they read name the files.
    """
    location: str = _load(parse_uri(uri), uri).location()
    return location


class IcebergTable(Table):
    """An Iceberg table at one pinned snapshot and schema.

    Immutable after :meth:`open` (the pyiceberg table object is only read), so one instance
    may be shared by threads. It is a :class:`~storage.table.Table` to its callers: the
    master checks specs against :attr:`schema` and plans with :meth:`plan_splits` whatever
    the format.

    Attributes:
        snapshot_id: the snapshot every plan of this instance reads.
        schema: the pinned Iceberg schema as Arrow (the types a Parquet reader yields);
            Iceberg partitions are hidden, so no column comes from folder names and
            :attr:`partition_columns` is empty.
    """

    def __init__(
        self,
        uri: str,
        filesystem: pafs.FileSystem,
        root: str,
        table: PyIcebergTable,
        snapshot_id: int,
        iceberg_schema: Schema,
        storage_options: Mapping[str, str],
        footer_filesystem: pafs.FileSystem | None = None,
    ) -> None:
        """Builds the table from a loaded pyiceberg table; use :meth:`open` instead."""
        super().__init__(
            uri, filesystem, root, (), _arrow_schema(iceberg_schema), (), footer_filesystem
        )
        self.snapshot_id = snapshot_id
        self._table = table
        self._iceberg_schema = iceberg_schema
        self._storage_options = dict(storage_options)
        self._location_protocol = _protocol_family(table.location())

    @classmethod
    def open(cls, uri: str, storage_options: Mapping[str, str] | None = None) -> IcebergTable:
        """Loads the table from its catalog and pins the snapshot and the schema.

        Raises:
            TableUriError: the URI is malformed.
            TableNotFoundError: unknown catalog, table or snapshot, or a table without any
                snapshot yet; the message names it and the fix.
            StorageError: the catalog failed.
        """
        ref = parse_uri(uri)
        table = _load(ref, uri)
        if ref.snapshot_id is None:
            snapshot = table.current_snapshot()
            if snapshot is None:
                raise TableNotFoundError(
                    f"table_uri {uri!r}: the table has no snapshot yet (nothing was ever "
                    "committed to it); append data first"
                )
            schema = table.schema()
        else:
            snapshot = table.snapshot_by_id(ref.snapshot_id)
            if snapshot is None:
                raise TableNotFoundError(
                    f"table_uri {uri!r}: the table has no snapshot {ref.snapshot_id} (it may "
                    f"have been expired); {_known_snapshots(table)}; pin one of those, or drop "
                    "the @... to read the current snapshot"
                )
            by_id = {s.schema_id: s for s in table.metadata.schemas}
            schema = by_id.get(snapshot.schema_id, table.schema())  # type: ignore[arg-type]
        options = dict(storage_options or {})
        location = table.location()
        filesystem, root = resolve(location, options)
        logger.info(
            "opened Iceberg table %s: snapshot %d, schema %d, location %s",
            uri,
            snapshot.snapshot_id,
            schema.schema_id,
            location,
        )
        footers = native_s3(location, options)
        return cls(uri, filesystem, root, table, snapshot.snapshot_id, schema, options, footers)

    def files(self, partition_filter: Filter | None = None) -> list[FileInfo]:
        """The snapshot's data files, sorted by path (the manifests are read; no data file).

        Raises:
            FilterError: a partition filter was given (Iceberg partitions are hidden).
            TableLayoutError: the snapshot has delete files or non-Parquet data files.
        """
        if partition_filter is not None:
            raise _partition_filter_error(partition_filter)
        return self._data_files(None)

    def plan_splits(
        self,
        target_split_rows: int,
        partition_filter: Filter | None = None,
        row_filter: Filter | None = None,
        max_concurrency: int = 128,
    ) -> Plan:
        """Plans the pinned snapshot: manifest pruning, then row groups as for a Hive table.

        Arguments and errors are :meth:`storage.table.Table.plan_splits`'; besides:

        Raises:
            FilterError: a partition filter was given.
            TableLayoutError: a planned file has delete files or is not Parquet.
        """
        if target_split_rows < 1:
            raise ValueError(f"target_split_rows must be >= 1, got {target_split_rows}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if partition_filter is not None:
            raise _partition_filter_error(partition_filter)
        started = time.perf_counter()
        if row_filter is not None:
            validate_types(row_filter, self.schema, "row_filter")
        files = self._data_files(row_filter)
        field_ids = {field.name: field.field_id for field in self._iceberg_schema.fields}
        workers = max(1, min(max_concurrency, len(files)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dpp-plan") as pool:
            footers = list(pool.map(lambda f: self._footer(f, field_ids, row_filter), files))
        splits: list[SplitInfo] = []
        for file, footer in zip(files, footers, strict=True):
            for split in splits_of_file(file, footer.row_groups, target_split_rows):
                splits.append(dataclasses.replace(split, renamed=footer.renamed))
        num_row_groups = sum(len(s.row_groups) for s in splits)
        plan = Plan(
            splits=splits,
            num_files=len({s.path for s in splits}),
            num_row_groups=num_row_groups,
            num_rows=sum(s.num_rows for s in splits),
            num_partitions=len({footer.partition for footer in footers}),
            planning_seconds=time.perf_counter() - started,
            drift=self._drift_by_id(files, footers),
            snapshot_id=self.snapshot_id,
        )
        logger.info(
            "planned %s at snapshot %d: %d splits over %d files, %d row groups, %d rows, %.3fs",
            self.uri,
            self.snapshot_id,
            len(splits),
            plan.num_files,
            num_row_groups,
            plan.num_rows,
            plan.planning_seconds,
        )
        return plan

    def _data_files(self, row_filter: Filter | None) -> list[FileInfo]:
        """The snapshot's data files the manifests cannot rule out for ``row_filter``.

        Raises:
            TableLayoutError: a file has delete files, is not Parquet, or lies outside the
                table location's file system.
        """
        expression = (
            iceberg_filter(row_filter, self._iceberg_schema, self._table.schema())
            if row_filter is not None
            else ice.AlwaysTrue()
        )
        try:
            tasks = list(
                self._table.scan(row_filter=expression, snapshot_id=self.snapshot_id).plan_files()
            )
        except Exception as exc:  # manifests unreadable: pyiceberg raises OSError and others
            raise StorageError(
                f"table {self.uri!r}: reading the manifests of snapshot {self.snapshot_id} "
                f"failed ({type(exc).__name__}: {exc}); check the storage options and that "
                "the metadata files exist"
            ) from exc
        files: list[FileInfo] = []
        for task in tasks:
            data = task.file
            if task.delete_files:
                deletes = sorted(d.file_path for d in task.delete_files)
                raise TableLayoutError(
                    f"table {self.uri!r}: snapshot {self.snapshot_id} has {len(deletes)} delete "
                    f"file(s) for {data.file_path!r} (first: {deletes[0]!r}); dpp does not "
                    "apply Iceberg row deletes, and would deliver deleted rows: compact the "
                    "table (rewrite its data files without deletes), or pin a snapshot "
                    "taken before the deletes"
                )
            if data.file_format != FileFormat.PARQUET:
                raise TableLayoutError(
                    f"table {self.uri!r}: data file {data.file_path!r} is "
                    f"{data.file_format.value}; dpp reads Iceberg tables of Parquet files "
                    "only: rewrite the table with write.format.default=parquet"
                )
            files.append(
                FileInfo(
                    path=self._inner_path(data.file_path),
                    size=int(data.file_size_in_bytes),
                    etag="",  # Iceberg data files are immutable, each under a unique name
                    partition={},
                )
            )
        return sorted(files, key=lambda f: f.path)

    def _inner_path(self, file_uri: str) -> str:
        """A data file's path inside the table's file system.

        Raises:
            TableLayoutError: the file lies on another file system than the table's location.
        """
        if _protocol_family(file_uri) != self._location_protocol:
            raise TableLayoutError(
                f"table {self.uri!r}: data file {file_uri!r} is not on the file system of "
                f"the table's location {self._table.location()!r}; dpp reads one file system "
                "per table: move the file under the table's location"
            )
        _, path = resolve(file_uri, self._storage_options)
        return path

    def _footer(
        self, file: FileInfo, field_ids: Mapping[str, int], row_filter: Filter | None
    ) -> _IcebergFooter:
        """One data file's row groups (pruned by statistics where the filter's columns have
        the table's names in the file), its columns matched by field id, and its schema."""
        try:
            fragment = _PARQUET_FORMAT.make_fragment(
                file.path, self._footer_filesystem, file_size=file.size
            )
            fragment.ensure_complete_metadata()
            physical = fragment.physical_schema
            row_groups = fragment.row_groups
        except (OSError, pa.ArrowException) as exc:
            raise CorruptFileError(
                f"table {self.uri!r}: reading the footer of {file.path!r} failed ({exc}); "
                "the file is listed by the snapshot's manifests but is missing or not "
                "Parquet: restore it, or pin another snapshot"
            ) from exc
        by_id = _file_columns_by_id(physical)
        names: dict[str, str | None] = {}
        for column, field_id in field_ids.items():
            if by_id is None:  # written without field ids: matched by name
                names[column] = column if column in physical.names else None
            else:
                names[column] = by_id.get(field_id)
        pruning = _in_file_names(row_filter, names) if row_filter is not None else None
        if pruning is not None:
            try:
                row_groups = [
                    rg
                    for part in fragment.split_by_row_group(filter=pruning, schema=physical)
                    for rg in part.row_groups
                ]
            except pa.ArrowException as exc:
                # Pruning is an optimisation: the worker applies the filter exactly anyway.
                logger.debug("no row-group pruning of %s (%s)", file.path, exc)
        types = {
            column: (physical.field(name).type if name is not None else None)
            for column, name in names.items()
        }
        return _IcebergFooter(
            row_groups=[(rg.id, rg.num_rows) for rg in row_groups if rg.num_rows > 0],
            renamed=tuple(
                # "": the file lacks the column, but holds another (dropped) one of its name,
                # which the reader must not take for it.
                RenamedColumn(column=column, file_column=name or "")
                for column, name in sorted(names.items())
                if name != column and (name is not None or column in physical.names)
            ),
            types=types,
            partition=file.path.rsplit("/", 1)[0],
        )

    def _drift_by_id(
        self, files: Sequence[FileInfo], footers: Sequence[_IcebergFooter]
    ) -> tuple[ColumnDrift, ...]:
        """The table's columns whose type in a planned file differs from the pinned schema's,
        or that a planned file lacks (added after it was written), matched by field id; the
        reference (first entry) is the schema itself."""
        drift: list[ColumnDrift] = []
        reference = f"the table's schema at snapshot {self.snapshot_id}"
        for field in self.schema:
            name = field.name
            seen: dict[pa.DataType | None, str] = {field.type: reference}
            for file, footer in zip(files, footers, strict=True):
                seen.setdefault(footer.types.get(name), file.path)
            if len(seen) > 1:
                drift.append(ColumnDrift(column=name, types=tuple((p, t) for t, p in seen.items())))
        return tuple(drift)


@dataclass(frozen=True)
class _IcebergFooter:
    """What planning keeps of one data file's footer.

    Attributes:
        row_groups: ``(index, rows)`` of the row groups kept.
        renamed: the table's columns the file stores under another name.
        types: each table column's type in the file (None: the file lacks it).
        partition: the file's folder, counted as its partition in the plan's figures.
    """

    row_groups: list[tuple[int, int]]
    renamed: tuple[RenamedColumn, ...]
    types: dict[str, pa.DataType | None]
    partition: str


def _in_file_names(row_filter: Filter, names: Mapping[str, str | None]) -> pc.Expression | None:
    """``row_filter`` over one file's column names (its renamed columns under their old
    names), to prune that file's row groups by statistics; None when a column it reads is
    missing from the file or the renamed text does not parse (no pruning: the worker still
    filters exactly)."""
    mapping: dict[str, str] = {}
    for column in row_filter.columns:
        name = names.get(column)
        if name is None:
            return None
        mapping[column] = name
    if all(name == column for column, name in mapping.items()):
        return row_filter.expression

    def rename(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and not node.table and node.name in mapping:
            return exp.column(mapping[node.name], quoted=True)
        return node

    try:
        text = sqlglot.parse_one(row_filter.text).transform(rename).sql()
        return parse_filter(text, row_filter.field).expression
    except (sqlglot.errors.SqlglotError, FilterError) as exc:
        logger.debug("no row-group pruning under renamed columns (%s)", exc)
        return None


def _file_columns_by_id(physical: pa.Schema) -> dict[int, str] | None:
    """``{field id: file column name}`` of a Parquet file's top-level columns, or None when
    the file carries no field ids (written outside Iceberg and added as is)."""
    by_id: dict[int, str] = {}
    for field in physical:
        raw = (field.metadata or {}).get(_FIELD_ID)
        if raw is not None:
            by_id[int(raw)] = field.name
    return by_id or None


def _arrow_schema(schema: Schema) -> pa.Schema:
    """The Iceberg schema as the Arrow types a Parquet reader yields for its files: pyiceberg
    maps strings, binaries and lists to their ``large_`` forms, the files hold the plain
    ones."""
    converted = schema_to_pyarrow(schema, include_field_ids=False)
    return pa.schema([field.with_type(_plain(field.type)) for field in converted])


def _plain(dtype: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(dtype):
        return pa.string()
    if pa.types.is_large_binary(dtype):
        return pa.binary()
    if pa.types.is_large_list(dtype):
        return pa.list_(dtype.value_field.with_type(_plain(dtype.value_type)))
    return dtype


def _protocol_family(uri: str) -> str:
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else ""
    return {"": "file", "local": "file", "s3a": "s3"}.get(protocol, protocol)


def _known_snapshots(table: PyIcebergTable) -> str:
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
    if not snapshots:
        return "it has no snapshot"
    latest = [str(s.snapshot_id) for s in snapshots[-_SHOWN_SNAPSHOTS:]]
    return f"its latest snapshot(s), oldest first: {', '.join(latest)}"


def _partition_filter_error(partition_filter: Filter) -> FilterError:
    return FilterError(
        partition_filter.field,
        f"{partition_filter.text!r}: Iceberg tables have hidden partitions, so dpp takes no "
        "partition_filter for them; move the condition to row_filter, which prunes the "
        "table's partitions and files through its manifests before any file is opened",
    )


# -- the row filter as a pyiceberg expression, for manifest pruning ---------------------------

_ICE_COMPARISONS: dict[type[exp.Expr], Any] = {
    exp.EQ: ice.EqualTo,
    exp.NEQ: ice.NotEqualTo,
    exp.LT: ice.LessThan,
    exp.LTE: ice.LessThanOrEqual,
    exp.GT: ice.GreaterThan,
    exp.GTE: ice.GreaterThanOrEqual,
}
# ``3 < x`` is ``x > 3``.
_FLIPPED: dict[type[exp.Expr], type[exp.Expr]] = {
    exp.EQ: exp.EQ,
    exp.NEQ: exp.NEQ,
    exp.LT: exp.GT,
    exp.LTE: exp.GTE,
    exp.GT: exp.LT,
    exp.GTE: exp.LTE,
}


def iceberg_filter(row_filter: Filter, pinned: Schema, current: Schema) -> ice.BooleanExpression:
    """The part of ``row_filter`` pyiceberg can prune manifests with, as its expression.

    Sound, never exact: a row the filter keeps is never in a file the result rules out. Only
    comparisons, ``IN``, ``BETWEEN`` and ``IS [NOT] NULL`` of a column with literals of its
    own kind (numbers with numeric columns, strings with string columns, booleans with
    boolean ones) translate; anything else becomes "true" (an ``AND`` keeps its translated
    side, an ``OR`` or ``NOT`` over an untranslated part becomes "true" whole). The worker
    applies the filter exactly. Columns are named as the *current* schema names them (the
    one pyiceberg binds with), matched to the pinned schema's names by field id.
    """
    try:
        tree = sqlglot.parse_one(row_filter.text)
    except sqlglot.errors.SqlglotError:
        return ice.AlwaysTrue()
    kinds = {field.name: _kind(field.type) for field in _arrow_schema(pinned)}
    names: dict[str, str] = {}
    for field in pinned.fields:
        try:
            names[field.name] = current.find_field(field.field_id).name
        except ValueError:
            continue  # dropped since: nothing to prune on
    result = _translate(tree, kinds, names)
    return result if result is not None else ice.AlwaysTrue()


def _kind(dtype: pa.DataType) -> str:
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype):
        return "float"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_boolean(dtype):
        return "bool"
    return "other"


def _literal(node: exp.Expr, kind: str) -> object | None:
    """The Python value of a literal node when it may be compared with a ``kind`` column
    without a conversion pyiceberg could do differently from Arrow; else None."""
    negative = False
    if isinstance(node, exp.Neg):
        node, negative = node.this, True
    if isinstance(node, exp.Paren):
        return _literal(node.this, kind) if not negative else None
    if isinstance(node, exp.Boolean) and not negative:
        return bool(node.this) if kind == "bool" else None
    if not isinstance(node, exp.Literal):
        return None
    if node.is_string:
        return str(node.this) if kind == "string" and not negative else None
    text = str(node.this)
    try:
        number: int | float = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return None
        if kind != "float":  # 1.5 against an int column: pyiceberg would round it
            return None
    if kind not in ("int", "float"):
        return None
    return -number if negative else number


def _column(node: exp.Expr, names: Mapping[str, str]) -> str | None:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column) and not node.table:
        return names.get(node.name)
    return None


def _translate(
    node: exp.Expr, kinds: Mapping[str, str], names: Mapping[str, str]
) -> ice.BooleanExpression | None:
    """One filter node as a pyiceberg expression, or None where it cannot be translated
    soundly (see :func:`iceberg_filter`)."""
    if isinstance(node, exp.Paren):
        return _translate(node.this, kinds, names)
    if isinstance(node, exp.And):
        left = _translate(node.left, kinds, names)
        right = _translate(node.right, kinds, names)
        if left is None or right is None:
            return left if right is None else right
        return ice.And(left, right)
    if isinstance(node, exp.Or):
        left = _translate(node.left, kinds, names)
        right = _translate(node.right, kinds, names)
        return None if left is None or right is None else ice.Or(left, right)
    if isinstance(node, exp.Not):
        inner = _translate(node.this, kinds, names)
        return None if inner is None else ice.Not(inner)
    if type(node) in _ICE_COMPARISONS:
        op: type[exp.Expr] = type(node)
        left_node, right_node = node.this, node.expression
        if _column(left_node, names) is None:
            left_node, right_node, op = right_node, left_node, _FLIPPED[op]
        return _comparison(op, left_node, right_node, kinds, names)
    if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
        column = _column(node.this, names)
        return ice.IsNull(column) if column is not None else None  # type: ignore[call-arg, arg-type]
    if isinstance(node, exp.In) and not node.args.get("query"):
        column = _column(node.this, names)
        kind = _kind_of(node.this, kinds)
        values = [_literal(v, kind) for v in node.expressions]
        if column is None or not values or any(v is None for v in values):
            return None
        return ice.In(column, tuple(values))  # type: ignore[call-arg, arg-type]
    if isinstance(node, exp.Between):
        low = _comparison(exp.GTE, node.this, node.args["low"], kinds, names)
        high = _comparison(exp.LTE, node.this, node.args["high"], kinds, names)
        return None if low is None or high is None else ice.And(low, high)
    return None


def _kind_of(node: exp.Expr, kinds: Mapping[str, str]) -> str:
    while isinstance(node, exp.Paren):
        node = node.this
    return kinds.get(node.name, "other") if isinstance(node, exp.Column) else "other"


def _comparison(
    op: type[exp.Expr],
    column_node: exp.Expr,
    value_node: exp.Expr,
    kinds: Mapping[str, str],
    names: Mapping[str, str],
) -> ice.BooleanExpression | None:
    column = _column(column_node, names)
    if column is None:
        return None
    value = _literal(value_node, _kind_of(column_node, kinds))
    if value is None:
        return None
    result: ice.BooleanExpression = _ICE_COMPARISONS[op](column, value)
    return result
