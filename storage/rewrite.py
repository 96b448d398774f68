"""Rewrites a table so that the rows sharing a key sit together (``dpp cluster``).

Owns: session clustering of an existing table. Recommendation logs arrive in time order, so
one user session's rows are scattered among other sessions' rows; Parquet then stores the
session's repeated user-side features many times in many pages. Clustering each partition by
a session key puts those rows next to each other, so the codec stores a repeated list about
once per session (the storage half of RecD), and a worker's batches hold whole sessions,
which is what per-batch deduplication needs.

How (one partition at a time, so memory holds one partition, never the table):

1. :meth:`storage.table.Table.open` lists the source; files are grouped by partition folder.
2. A partition's files are read whole and concatenated (in path order).
3. Rows are grouped by key in order of first occurrence, stably (rows of one key keep their
   order; keys keep the order in which they first appear, so time order is roughly kept):
   ``argsort(dictionary_encode(key).indices, stable)``. Null keys go last.
4. The clustered rows are written back as the same files (same relative paths, same row
   counts per file) with the source's row group size and compression codec, and list columns
   without dictionaries unless asked (see :func:`dictionary_columns` for why).

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.errors import StorageError
from storage.filesystem import is_iceberg_uri, resolve
from storage.synthetic import refuse_existing
from storage.table import FileInfo, Table

logger = logging.getLogger(__name__)

__all__ = ["ClusterSummary", "cluster_order", "cluster_table"]


@dataclass(frozen=True)
class ClusterSummary:
    """What :func:`cluster_table` did.

    Attributes:
        rows: rows rewritten.
        files: files written (as many as read).
        partitions: partitions rewritten.
        source_bytes: total size of the source files.
        bytes: total size of the written files.
        seconds: wall time.
    """

    rows: int
    files: int
    partitions: int
    source_bytes: int
    bytes: int
    seconds: float


def dictionary_columns(schema: pa.Schema, dictionary_lists: bool) -> bool | list[str]:
    """Which columns a clustered file dictionary-encodes (the writer's ``use_dictionary``).

    By default all but the list columns: a session's repeated list is then a byte-identical
    run of plain ids that zstd stores about once, while dictionary indices are bit-packed at
    widths that shift each repeat off byte boundaries, so zstd finds few of them. Measured on
    a 131k-row file (10 rows per session, half the sparse features user-side with lists of up
    to 100 ids, zstd level 1): 74 MB with list dictionaries, 56 MB without (interleaved, as
    logged: 123 MB). The price is decode time where lists are short: plain ids are 8 bytes
    each before zstd, dictionary indices about 2, so the same file with lists of up to 30 ids
    reads 1.3x slower without dictionaries (equal for the 100-id histories). Hence
    ``dictionary_lists=True`` (``dpp cluster --dictionary-lists``) for tables read far more
    often than stored.
    """
    if dictionary_lists:
        return True
    return [
        field.name
        for field in schema
        if not (pa.types.is_list(field.type) or pa.types.is_large_list(field.type))
    ]


def cluster_order(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The row order that groups equal keys, keys in order of first occurrence, stably.

    Args:
        keys: one value per row, of any type ``dictionary_encode`` takes (integers, strings,
            ...); nulls go last, in their order.

    Returns:
        int64 row indices for ``take``.
    """
    encoded = pc.dictionary_encode(keys)
    chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    parts = []
    for chunk in chunks:
        indices = chunk.indices.fill_null(np.iinfo(np.int32).max)
        parts.append(indices.to_numpy().astype(np.int64))
    codes = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    return pa.array(np.argsort(codes, kind="stable"))


def cluster_table(
    source_uri: str,
    dest_uri: str,
    by: str,
    storage_options: Mapping[str, str] | None = None,
    dictionary_lists: bool = False,
) -> ClusterSummary:
    """Writes ``source_uri``'s rows to ``dest_uri`` with each partition clustered by ``by``.

    Args:
        source_uri: the table to read (any URI :func:`resolve` takes).
        dest_uri: where to write; must be empty or absent.
        by: the key column (e.g. ``session_id``); rows with equal keys become adjacent.
        storage_options: file system options for both URIs.
        dictionary_lists: dictionary-encode list columns too (see :func:`dictionary_columns`).

    Raises:
        StorageError: ``by`` is not a column of the files, ``dest_uri`` holds files, or a
            read or write failed.
        TableNotFoundError: nothing to read at ``source_uri``.
    """
    started = time.perf_counter()
    if is_iceberg_uri(source_uri):
        raise StorageError(
            f"{source_uri!r} is an Iceberg table; dpp cluster rewrites Hive-partitioned tables "
            "only: sort an Iceberg table with its own engine (a sort order and "
            "rewrite_data_files), then read it with an iceberg:// table_uri"
        )
    table = Table.open(source_uri, storage_options)
    file_columns = [n for n in table.schema.names if n not in table.partition_columns]
    if by not in file_columns:
        raise StorageError(
            f"clustering {source_uri!r} by {by!r}: no such column in its files; columns: "
            f"{', '.join(file_columns)}"
        )
    dest_fs, dest_root = resolve(dest_uri, storage_options)
    dest_root = dest_root.rstrip("/") or "/"
    refuse_existing(dest_fs, dest_root, dest_uri)
    partitions: dict[str, list[FileInfo]] = {}
    for info in table.files():
        partitions.setdefault(info.path.rsplit("/", 1)[0], []).append(info)
    rows = written = source_bytes = files = 0
    for folder, infos in partitions.items():
        parts = [_read_file(table.filesystem, info) for info in infos]
        data = pa.concat_tables([p for p, _ in parts]).combine_chunks()
        clustered = data.take(cluster_order(data.column(by)))
        offset = 0
        for info, (part, metadata) in zip(infos, parts, strict=True):
            relative = info.path[len(table.root) :].lstrip("/")
            target = f"{dest_root}/{relative}"
            chunk = clustered.slice(offset, part.num_rows)
            offset += part.num_rows
            written += _write_file(dest_fs, target, chunk, metadata, dictionary_lists)
            source_bytes += info.size
            files += 1
        rows += data.num_rows
        logger.info("clustered %s: %d rows in %d files", folder, data.num_rows, len(infos))
    summary = ClusterSummary(
        rows=rows,
        files=files,
        partitions=len(partitions),
        source_bytes=source_bytes,
        bytes=written,
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "clustered %s into %s by %s: %d rows, %.1f MB -> %.1f MB in %.1fs",
        source_uri,
        dest_uri,
        by,
        rows,
        source_bytes / 1e6,
        written / 1e6,
        summary.seconds,
    )
    return summary


def _read_file(filesystem: pafs.FileSystem, info: FileInfo) -> tuple[pa.Table, pq.FileMetaData]:
    try:
        with filesystem.open_input_file(info.path) as source:
            parquet = pq.ParquetFile(source)
            return parquet.read(), parquet.metadata
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"reading {info.path!r} failed: {exc}") from exc


def _write_file(
    filesystem: pafs.FileSystem,
    path: str,
    data: pa.Table,
    source: pq.FileMetaData,
    dictionary_lists: bool,
) -> int:
    """Writes ``data`` with ``source``'s row group size and codec; returns the bytes written."""
    row_group_rows = source.row_group(0).num_rows if source.num_row_groups else data.num_rows
    codec = "zstd"
    if source.num_row_groups and source.num_columns:
        codec = source.row_group(0).column(0).compression.lower()
    try:
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as sink:
            with pq.ParquetWriter(
                sink,
                data.schema,
                compression=codec,
                use_dictionary=dictionary_columns(data.schema, dictionary_lists),
            ) as writer:
                writer.write_table(data, row_group_size=max(1, row_group_rows))
            return int(sink.tell())
    except OSError as exc:
        raise StorageError(
            f"writing {path!r} failed ({exc}); check the URI is writable and has space"
        ) from exc
