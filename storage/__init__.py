"""dpp's storage layer: tables, file systems, filters, split planning and split reading.

Owns everything that touches table bytes: resolving URIs to file systems, listing and pruning
Hive-partitioned Parquet tables, planning splits, reading splits as Arrow record batches, and
writing synthetic tables. The master plans with :class:`Table`; workers read with
:func:`read_split`.

Must never import: grpc, torch, ``dpp_server``, ``dpp_client`` (they import this, not the
other way round).
"""

from storage.errors import FilterError, SplitChangedError, StorageError, TableNotFoundError
from storage.filesystem import resolve
from storage.filters import Filter, check_columns, parse_filter
from storage.reader import read_split
from storage.synthetic import GenConfig, GenSummary, generate_table
from storage.table import FileInfo, Plan, SplitInfo, Table

__all__ = [
    "FileInfo",
    "Filter",
    "FilterError",
    "GenConfig",
    "GenSummary",
    "Plan",
    "SplitChangedError",
    "SplitInfo",
    "StorageError",
    "Table",
    "TableNotFoundError",
    "check_columns",
    "generate_table",
    "parse_filter",
    "read_split",
    "resolve",
]
