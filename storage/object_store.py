"""Planning-time S3 access through obstore (Rust's ``object_store``): listing with ETags and
many footer reads in flight from one thread.

Owns: the fast path of :meth:`storage.table.Table.open` (the listing) and
:meth:`storage.table.Table.plan_splits` (every footer) for ``s3://`` tables whose storage
options are plain (key, secret, token, region, anon, endpoint_url).

Why: a table of 10,000 small files costs 10,000 footer GETs before its first batch. Through
pyarrow's native S3 client (the AWS C++ SDK) each GET costs the planner about 0.7 ms of CPU
and one client holds at most 25 connections; through s3fs, about a millisecond of Python under
the GIL. obstore signs and parses in Rust, at about 0.26 ms of CPU a GET, and an asyncio loop
keeps hundreds in flight without a thread each (docs/tables.md, "Cold start on many files").
Its listing returns ETags, so split ids are the same as through s3fs.

Anything obstore cannot do (an option it lacks, a refused request, a footer longer than what
was read) falls back, file by file, to the caller's own path; its error is the one raised.

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config

logger = logging.getLogger(__name__)

__all__ = ["TAIL_BYTES", "S3Objects", "s3_objects"]

# Bytes read from the end of each file in one GET: the footer of nearly every file (pyarrow's
# own default footer read); a longer footer costs a second GET of exactly its length.
TAIL_BYTES = 64 * 1024

# Storage options obstore's S3 store is given, and its config key for each (as for
# :func:`storage.filesystem.native_s3`; any other option keeps the table on s3fs).
_OPTIONS = {
    "key": "access_key_id",
    "secret": "secret_access_key",
    "token": "session_token",
    "region": "region",
    "endpoint_url": "endpoint",
}

T = TypeVar("T")


@dataclass(frozen=True)
class S3Objects:
    """One bucket through obstore.

    Thread-safety: the store is thread-safe; :meth:`map_tails` runs its own event loop on a
    thread of its own, so it may be called from any thread, including one running a loop.

    Attributes:
        bucket: the bucket; paths given and returned are ``bucket/key`` (fsspec's form).
        store: the ``obstore.store.S3Store``.
    """

    bucket: str
    store: Any

    def list_files(self, root: str) -> list[tuple[str, int, str]]:
        """``(path, size, etag)`` of every object under ``root`` (``bucket/prefix``): one
        ListObjectsV2 by prefix, 1,000 keys a page. A ``root`` naming one object lists that
        object (and any sharing its name as a prefix; the caller filters).

        Raises:
            OSError: the listing failed (obstore's error, wrapped).
        """
        import obstore

        key = root[len(self.bucket) + 1 :] if root.startswith(self.bucket + "/") else ""
        prefix = key.rstrip("/")
        found: list[tuple[str, int, str]] = []
        try:
            for page in obstore.list(self.store, prefix or None, chunk_size=1000):
                for meta in page:
                    path = str(meta["path"])
                    # A folder's listing must not pick up ``t2/...`` for ``t``.
                    if prefix and path != prefix and not path.startswith(prefix + "/"):
                        continue
                    etag = str(meta.get("e_tag") or "").strip('"')
                    found.append((f"{self.bucket}/{path}", int(meta["size"]), etag))
        except Exception as exc:  # obstore raises its own BaseError family and ValueError
            raise OSError(f"obstore listing of {root!r} failed: {exc}") from exc
        return found

    def map_tails(
        self,
        files: Sequence[tuple[str, int]],
        parse: Callable[[int, bytes], T],
        fallback: Callable[[int, BaseException], T],
        concurrency: int,
    ) -> list[T]:
        """For each ``(path, size)``, reads its footer (the last :data:`TAIL_BYTES`, and the
        rest of a longer footer) and returns ``parse(index, footer_bytes)``, in order.

        ``concurrency`` GETs are in flight at once on one event loop. ``parse`` runs on the
        loop's thread as each footer arrives, so at most ``concurrency`` footers are held.
        When a read or ``parse`` raises, ``fallback(index, error)`` runs on a worker thread
        instead (the caller's own, slower path) and its result or error stands.
        """

        fell_back: list[str] = []  # touched on the loop's thread only

        async def one(index: int, gate: asyncio.Semaphore) -> T:
            path, size = files[index]
            try:
                async with gate:
                    tail = await self._footer_bytes(path, size)
                return parse(index, tail)
            except Exception as exc:
                logger.debug("obstore footer read of %s failed (%s); falling back", path, exc)
                fell_back.append(f"{path} ({exc})")
                return await asyncio.get_running_loop().run_in_executor(None, fallback, index, exc)

        async def run() -> list[T]:
            gate = asyncio.Semaphore(max(1, concurrency))
            return list(await asyncio.gather(*(one(i, gate) for i in range(len(files)))))

        try:
            return _run_on_own_loop(run)
        finally:
            if fell_back:
                logger.info(
                    "%d of %d footers read again through the slower path; the first: %s",
                    len(fell_back),
                    len(files),
                    fell_back[0],
                )

    async def _footer_bytes(self, path: str, size: int) -> bytes:
        """The bytes from the start of ``path``'s Parquet footer to its end."""
        import obstore

        key = path[len(self.bucket) + 1 :]
        start = max(0, size - TAIL_BYTES)
        tail = bytes(await obstore.get_range_async(self.store, key, start=start, end=size))
        if len(tail) >= 8 and tail[-4:] == b"PAR1":
            (footer_length,) = struct.unpack("<I", tail[-8:-4])
            if footer_length + 8 > len(tail) and footer_length + 8 <= size:
                head = await obstore.get_range_async(
                    self.store, key, start=size - 8 - footer_length, end=start
                )
                tail = bytes(head) + tail
        return tail


def _run_on_own_loop(main: Callable[[], Awaitable[T]]) -> T:
    """Runs ``main()`` to completion on a new event loop on a thread of its own (the caller
    may be a gRPC handler thread, or a thread already running a loop)."""

    async def wrapped() -> T:
        return await main()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpp-plan-io") as pool:
        return pool.submit(asyncio.run, wrapped()).result()


def s3_objects(uri: str, storage_options: Mapping[str, str] | None) -> S3Objects | None:
    """obstore access to an ``s3://`` table's bucket, or None when the URI is not S3, its
    options need s3fs, or obstore is not installed."""
    scheme, _, rest = uri.partition("://")
    options = dict(storage_options or {})
    if scheme not in ("s3", "s3a") or set(options) - {*_OPTIONS, "anon"}:
        return None
    bucket = rest.split("/", 1)[0]
    if not bucket:
        return None
    try:
        from obstore.store import S3Store
    except ImportError:
        return None
    config: dict[str, Any] = {_OPTIONS[k]: v for k, v in options.items() if k in _OPTIONS}
    client: dict[str, Any] = {}
    if options.get("anon", "").strip().lower() in ("1", "true", "yes", "on"):
        config["skip_signature"] = True
    endpoint = options.get("endpoint_url", "")
    if endpoint.startswith("http://"):
        client["allow_http"] = True
    if endpoint and "region" not in config:
        config["region"] = "us-east-1"  # a custom endpoint (MinIO, Ceph) ignores the region
    try:
        store = S3Store(
            bucket,
            config=cast("S3Config", config),
            client_options=cast("ClientConfig", client) if client else None,
        )
    except Exception as exc:  # obstore refuses a configuration with its own errors
        logger.info("obstore unavailable for %s (%s); using pyarrow's S3 client", uri, exc)
        return None
    return S3Objects(bucket=bucket, store=store)
