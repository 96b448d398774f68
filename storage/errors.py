"""Exceptions of the storage layer. Knows nothing of gRPC or torch: the server maps these."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every deliberate storage error."""


class TableNotFoundError(StorageError):
    """The table URI names nothing, or a folder holding no Parquet files."""


class TableUriError(StorageError):
    """A ``table_uri`` is malformed (an ``iceberg://`` URI without a namespace, a snapshot
    that is not a number): the spec is wrong, not the table."""

    field = "table_uri"


class TableLayoutError(StorageError):
    """The table's files do not fit together: partition folders with different keys, or a
    partition column also stored in the files."""


class CorruptFileError(StorageError):
    """A file of the table is not readable Parquet (a truncated file, a corrupt footer)."""


class FilterError(StorageError):
    """A partition or row filter could not be parsed or does not fit the table.

    Attributes:
        field: which spec field held the filter (``row_filter`` or ``partition_filter``).
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class SplitChangedError(StorageError):
    """A split's file changed (size differs, or it is gone) since the split was planned.

    Reading on would return rows of other row groups than the ones leased, so the reader
    refuses; the session must be replanned over the current files.
    """


class RowGroupTooLargeError(StorageError):
    """A row group of a split needs more memory than the reader may hold.

    A row group is the smallest unit a Parquet reader buffers (its column chunks); when one
    alone exceeds the budget, no read unit fits: the operator raises the budget or the
    table's producer writes smaller row groups.
    """
