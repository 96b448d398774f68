"""Turns a table URI into a pyarrow file system and the table's root path inside it.

Owns: the one place where URIs, protocols and storage options become file systems. Every
other storage module (planning, reading, the synthetic generator) goes through
:func:`resolve`, so ``memory://``, ``s3://`` and local paths behave the same everywhere.

Local paths get pyarrow's native ``LocalFileSystem``: it is the fastest (no Python in the I/O
path). Every other protocol goes through fsspec wrapped in ``pyarrow.fs.PyFileSystem``, so any
fsspec implementation works without dpp knowing it.

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import fsspec
import pyarrow.fs as pafs

from storage.errors import StorageError

logger = logging.getLogger(__name__)

__all__ = [
    "NATIVE_S3_CONNECTIONS",
    "fsspec_filesystem_of",
    "is_iceberg_uri",
    "native_s3",
    "native_s3_pool",
    "resolve",
]

# Storage options pyarrow's native S3 client understands, and its argument for each; a spec
# with any other option keeps to fsspec everywhere.
_NATIVE_S3_OPTIONS = {
    "key": "access_key",
    "secret": "secret_key",
    "token": "session_token",
    "region": "region",
    "anon": "anonymous",
    "endpoint_url": "endpoint_override",
}

_LOCAL_PROTOCOLS = ("", "file", "local")

# Connections one native S3 client opens at most: the AWS SDK's ``maxConnections`` default,
# which pyarrow does not expose. More requests in flight than this queue inside the client,
# so at 20 ms round trips one client reads at most ~1,250 footers a second.
NATIVE_S3_CONNECTIONS = 25

# s3fs options that are booleans; storage options arrive as strings (from a spec or a CLI flag).
_S3_BOOL_OPTIONS = frozenset({"anon", "use_ssl", "requester_pays", "version_aware"})
# s3fs takes these inside ``client_kwargs`` (they go to the botocore client), not at top level.
_S3_CLIENT_OPTIONS = {"endpoint_url": "endpoint_url", "region": "region_name"}


def _split_protocol(uri: str) -> tuple[str, str]:
    """Splits ``proto://rest`` into ``(proto, rest)``; a plain path has protocol ``""``."""
    if "://" not in uri:
        return "", uri
    protocol, rest = uri.split("://", 1)
    return protocol.lower(), rest


def is_iceberg_uri(uri: str) -> bool:
    """Whether ``uri`` names an Iceberg table through a catalog (``iceberg://...``)."""
    return _split_protocol(uri)[0] == "iceberg"


def _parse_bool(name: str, value: str) -> bool:
    """Parses a string storage option that s3fs wants as a bool."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise StorageError(f"storage option {name}={value!r} is not a boolean; use 'true' or 'false'")


def _s3_options(options: Mapping[str, str]) -> dict[str, Any]:
    """Maps flat string options onto the nested keyword arguments s3fs expects.

    Specs carry storage options as a flat ``str -> str`` map; s3fs wants ``endpoint_url`` and
    ``region_name`` inside ``client_kwargs`` and booleans as bools.
    """
    kwargs: dict[str, Any] = {}
    client_kwargs: dict[str, Any] = {}
    for name, value in options.items():
        if name in _S3_CLIENT_OPTIONS:
            client_kwargs[_S3_CLIENT_OPTIONS[name]] = value
        elif name in _S3_BOOL_OPTIONS and isinstance(value, str):
            kwargs[name] = _parse_bool(name, value)
        else:
            kwargs[name] = value
    if client_kwargs:
        kwargs["client_kwargs"] = client_kwargs
    return kwargs


def resolve(
    uri: str, storage_options: Mapping[str, str] | None = None
) -> tuple[pafs.FileSystem, str]:
    """Returns the file system that holds ``uri`` and the path of ``uri`` inside it.

    fsspec caches file system instances per (protocol, options) itself, so calling this for
    every split does not open a new S3 client each time.

    Args:
        uri: a plain path, ``file://`` URI, or any fsspec URI (``memory://t``, ``s3://b/k``);
            ``iceberg://catalog/namespace.table`` gives the file system of the table's
            location, asked of its catalog (:func:`storage.iceberg.location_of`).
        storage_options: fsspec options as strings. For ``s3`` these are s3fs options
            (``key``, ``secret``, ``token``, ``anon``, ``endpoint_url``, ``region``, ...);
            ignored for local paths.

    Returns:
        ``(filesystem, path)``: a pyarrow file system and the root path to hand it.

    Raises:
        StorageError: the protocol is unknown, its fsspec package is not installed, or an
            option is malformed.
    """
    protocol, rest = _split_protocol(uri)
    options = dict(storage_options or {})
    if protocol == "iceberg":
        # Imported here: storage.iceberg imports pyiceberg, which only Iceberg tables need.
        from storage.iceberg import location_of

        return resolve(location_of(uri), options)
    if protocol in _LOCAL_PROTOCOLS:
        if options:
            logger.debug("ignoring storage options %s for local uri %s", sorted(options), uri)
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(rest))
    kwargs: dict[str, Any] = _s3_options(options) if protocol in ("s3", "s3a") else dict(options)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **kwargs)
    except ImportError as exc:
        raise StorageError(
            f"opening {uri!r}: the fsspec implementation for protocol {protocol!r} is not "
            f"installed ({exc}); install it (e.g. `pip install s3fs` for s3://)"
        ) from exc
    except ValueError as exc:
        raise StorageError(
            f"opening {uri!r}: protocol {protocol!r} is not known to fsspec ({exc}); use a "
            "local path, file://, memory://, s3:// or another fsspec protocol"
        ) from exc
    except TypeError as exc:
        raise StorageError(
            f"opening {uri!r}: storage options {sorted(options)} were rejected by the "
            f"{protocol!r} file system ({exc}); check the option names"
        ) from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), str(path)


def fsspec_filesystem_of(filesystem: pafs.FileSystem) -> fsspec.AbstractFileSystem | None:
    """Returns the fsspec file system behind ``filesystem``, or None if it is native pyarrow.

    Listing needs it: fsspec reports object etags (S3 ``ETag``) that pyarrow's ``FileInfo``
    drops.
    """
    if isinstance(filesystem, pafs.PyFileSystem):
        handler = filesystem.handler
        if isinstance(handler, pafs.FSSpecHandler):
            inner: fsspec.AbstractFileSystem = handler.fs
            return inner
    return None


def native_s3(uri: str, storage_options: Mapping[str, str] | None = None) -> pafs.FileSystem | None:
    """pyarrow's native (C++) S3 file system for an ``s3://`` URI, or None when the URI is not
    S3 or its options need s3fs (anything beyond key, secret, token, region, anon and
    endpoint_url).

    Why: planning reads one footer per file, and a table may have 10,000 files. Through s3fs
    each request costs about a millisecond of Python CPU (signing, parsing) under the GIL;
    the native client signs and parses in C++ without the GIL, so footer reads overlap fully
    (docs/tables.md, "Cold start"). Paths are the same (``bucket/key``) as fsspec's.
    """
    protocol, _ = _split_protocol(uri)
    options = dict(storage_options or {})
    if protocol not in ("s3", "s3a") or set(options) - set(_NATIVE_S3_OPTIONS):
        return None
    kwargs: dict[str, Any] = {}
    for name, value in options.items():
        argument = _NATIVE_S3_OPTIONS[name]
        if name == "anon":
            kwargs[argument] = _parse_bool(name, value)
        elif name == "endpoint_url":
            scheme, _, rest = value.partition("://")
            kwargs["scheme"], kwargs[argument] = (scheme, rest) if rest else ("https", value)
        else:
            kwargs[argument] = value
    if "endpoint_override" in kwargs and "region" not in kwargs:
        kwargs["region"] = "us-east-1"  # a custom endpoint (MinIO, Ceph) ignores the region
    try:
        return pafs.S3FileSystem(**kwargs)
    except (OSError, ValueError, TypeError) as exc:
        logger.info("native S3 client unavailable for %s (%s); using s3fs", uri, exc)
        return None


def native_s3_pool(
    uri: str, storage_options: Mapping[str, str] | None, concurrency: int
) -> list[pafs.FileSystem]:
    """Enough native S3 clients (:func:`native_s3`) for ``concurrency`` requests in flight:
    ``ceil(concurrency / NATIVE_S3_CONNECTIONS)`` of them, or none when the URI or its
    options need s3fs.

    Why: one client holds at most :data:`NATIVE_S3_CONNECTIONS` connections; planning
    10,000 footers 20 ms away through one client takes at least 10,000 / 25 x 20 ms = 8 s,
    however many threads ask. Each client has its own connection pool.
    """
    count = max(1, -(-concurrency // NATIVE_S3_CONNECTIONS))
    pool: list[pafs.FileSystem] = []
    for _ in range(count):
        client = native_s3(uri, storage_options)
        if client is None:
            return []
        pool.append(client)
    return pool
