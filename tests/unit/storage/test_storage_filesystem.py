"""URI resolution: local paths get the native file system, everything else goes via fsspec."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from storage.errors import StorageError
from storage.filesystem import fsspec_filesystem_of, resolve


def test_plain_and_file_uris_resolve_to_native_local(tmp_path: Path) -> None:
    fs, path = resolve(str(tmp_path / "t"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "t")
    fs, path = resolve(f"file://{tmp_path}/t")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "t")
    assert fsspec_filesystem_of(fs) is None


def test_relative_path_becomes_absolute() -> None:
    _, path = resolve("some/table")
    assert path == os.path.join(os.getcwd(), "some/table")


def test_memory_uri_goes_through_fsspec() -> None:
    fs, path = resolve("memory://bucket/t")
    assert isinstance(fs, pafs.PyFileSystem)
    assert path == "/bucket/t"
    inner = fsspec_filesystem_of(fs)
    assert inner is not None and "memory" in inner.protocol


def test_s3_options_map_to_s3fs_keyword_arguments() -> None:
    # Constructing an S3FileSystem opens no connection, so this stays offline.
    options = {
        "endpoint_url": "http://127.0.0.1:9",
        "region": "eu-west-1",
        "key": "k",
        "secret": "s",
        "anon": "false",
    }
    fs, path = resolve("s3://bucket/table", options)
    assert path == "bucket/table"
    inner = fsspec_filesystem_of(fs)
    assert inner is not None
    assert inner.client_kwargs == {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"}
    assert inner.anon is False and inner.key == "k" and inner.secret == "s"


def test_bad_boolean_option_is_explained() -> None:
    with pytest.raises(StorageError, match=r"anon='maybe' is not a boolean; use 'true' or 'false'"):
        resolve("s3://bucket/t", {"anon": "maybe"})


def test_unknown_protocol_is_explained() -> None:
    with pytest.raises(StorageError, match=r"protocol 'nope' is not known to fsspec"):
        resolve("nope://x/y")
