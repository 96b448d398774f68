"""A delaying TCP proxy for an HTTP (S3) endpoint on loopback, and moto's S3 server to put it in
front of. Used by the remote-storage tests and benchmarks (``bench/remote_storage.py``,
``bench/cold_start.py``): object stores sit tens of milliseconds from the workers, loopback
sits microseconds away, and ``tc netem`` is not available here.

What the proxy does, per connection:

1. Accepting a connection costs one round trip (``delay_s``) before the upstream connection is
   opened, as a TCP handshake does.
2. Every chunk the client sends is forwarded ``delay_s`` after it arrived (a queue with
   deadlines, so chunks keep their order and bandwidth is not throttled: pipelined bytes
   overlap their delays). The answer comes back undelayed; each request/response exchange
   therefore costs one extra ``delay_s``, a round trip's worth.
3. The client's bytes are parsed as HTTP/1.1 requests (request line, ``Content-Length`` or
   chunked bodies) and counted by method and path, so a test can bound GET requests per
   split; bytes sent back are counted too (bytes fetched per row).

Thread-safety: the proxy runs its own asyncio loop in a child process (:class:`DelayProxy`)
or in a daemon thread (:class:`InProcessProxy`); :meth:`~DelayProxy.snapshot` and
:meth:`~DelayProxy.reset` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DelayProxy", "InProcessProxy", "ProxyStats", "free_port", "moto_server", "s3_endpoint"]

MOTO_KEY, MOTO_SECRET = "testing", "testing"


@dataclasses.dataclass
class ProxyStats:
    """What went through the proxy since the last reset.

    Attributes:
        requests: HTTP requests by method (``GET``, ``HEAD``, ``PUT``, ...).
        gets_by_path: GET requests by request path, query string dropped (``/bucket/key``).
        bytes_down: bytes the upstream sent back (headers included).
        bytes_up: bytes the client sent.
        connections: TCP connections accepted.
        log: the first 1000 requests, as ``METHOD path [Range]``.
    """

    requests: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    gets_by_path: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    bytes_down: int = 0
    bytes_up: int = 0
    connections: int = 0
    log: list[str] = dataclasses.field(default_factory=list)

    def copy(self) -> ProxyStats:
        return ProxyStats(
            requests=collections.Counter(self.requests),
            gets_by_path=collections.Counter(self.gets_by_path),
            bytes_down=self.bytes_down,
            bytes_up=self.bytes_up,
            connections=self.connections,
            log=list(self.log),
        )


class _RequestCounter:
    """Parses one connection's client bytes as a sequence of HTTP/1.1 requests."""

    def __init__(self, on_request: collections.abc.Callable[[str, str, str], None]) -> None:
        self._on_request = on_request
        self._buffer = b""
        self._body_left = 0  # bytes of a Content-Length body still to skip
        self._chunked = False  # inside a chunked body

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._body_left:
                taken = min(self._body_left, len(self._buffer))
                self._buffer = self._buffer[taken:]
                self._body_left -= taken
                if self._body_left:
                    return
            if self._chunked:
                if not self._skip_chunks():
                    return
                continue
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].decode("latin-1")
            self._buffer = self._buffer[end + 4 :]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            method, target = (parts[0], parts[1]) if len(parts) >= 2 else (parts[0], "")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self._on_request(method, target.split("?", 1)[0], headers.get("range", ""))
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked = True
            else:
                self._body_left = int(headers.get("content-length", "0") or 0)

    def _skip_chunks(self) -> bool:
        """Consumes whole chunks; True once the terminating chunk and trailers are consumed."""
        while True:
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(self._buffer[:line_end].split(b";")[0].strip() or b"0", 16)
            if size == 0:
                end = self._buffer.find(b"\r\n\r\n", line_end)
                if end < 0:
                    return False
                self._buffer = self._buffer[end + 4 :]
                self._chunked = False
                return True
            if len(self._buffer) < line_end + 2 + size + 2:
                return False
            self._buffer = self._buffer[line_end + 2 + size + 2 :]


class DelayProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``, adding ``delay_s`` per round trip, from a
    child process (so that the proxy's own Python work never competes for the GIL of the
    process being measured).

    Use as a context manager; :attr:`endpoint` is the URL to give clients instead of the
    upstream's. Thread-safe: calls to the child are serialized by a lock.
    """

    def __init__(self, upstream: str, delay_s: float = 0.020) -> None:
        """Args:
        upstream: ``http://host:port`` of the real endpoint.
        delay_s: added to each round trip (and to each new connection).
        """
        self.upstream = upstream
        self.delay_s = delay_s
        self.port = 0
        self._lock = threading.Lock()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The proxy's process id (benchmarks read its CPU time); 0 before it started."""
        return (self._process.pid or 0) if self._process is not None else 0

    def __enter__(self) -> DelayProxy:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_proxy_main, args=(self.upstream, self.delay_s, child), daemon=True
        )
        self._process.start()
        if not self._conn.poll(30):
            raise RuntimeError("the delay proxy did not start in 30 s")
        self.port = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        with contextlib.suppress(OSError, EOFError):
            self._call("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def snapshot(self) -> ProxyStats:
        """A copy of the counters."""
        stats: ProxyStats = self._call("snapshot")
        return stats

    def reset(self) -> None:
        self._call("reset")

    def _call(self, command: str) -> Any:
        with self._lock:
            self._conn.send(command)
            return self._conn.recv()


def _proxy_main(upstream: str, delay_s: float, conn: Any) -> None:
    """The child process: runs the proxy and answers ``snapshot``/``reset``/``stop``."""
    with InProcessProxy(upstream, delay_s) as proxy:
        conn.send(proxy.port)
        while True:
            command = conn.recv()
            if command == "snapshot":
                conn.send(proxy.snapshot())
            elif command == "reset":
                proxy.reset()
                conn.send(None)
            else:
                conn.send(None)
                return


class InProcessProxy:
    """:class:`DelayProxy`'s server, run on an asyncio loop in a daemon thread of this
    process. Thread-safe: ``_lock`` guards the counters.
    """

    def __init__(self, upstream: str, delay_s: float = 0.020) -> None:
        """Args:
        upstream: ``http://host:port`` of the real endpoint.
        delay_s: added to each round trip (and to each new connection).
        """
        hostport = upstream.split("://", 1)[-1].rstrip("/")
        host, _, port = hostport.rpartition(":")
        self.upstream_host, self.upstream_port = host, int(port)
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> InProcessProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = future.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def snapshot(self) -> ProxyStats:
        """A copy of the counters."""
        with self._lock:
            return self._stats.copy()

    def reset(self) -> None:
        with self._lock:
            self._stats = ProxyStats()

    def _count_request(self, method: str, path: str, byte_range: str) -> None:
        with self._lock:
            if len(self._stats.log) < 1000:
                self._stats.log.append(f"{method} {path} {byte_range}".rstrip())
            self._stats.requests[method] += 1
            if method == "GET":
                self._stats.gets_by_path[path] += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._stats.connections += 1
        await asyncio.sleep(self.delay_s)  # the handshake's round trip
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()
            return
        counter = _RequestCounter(self._count_request)
        upstream = asyncio.create_task(self._client_to_upstream(reader, up_writer, counter))
        upstream_socket = up_writer.get_extra_info("socket")
        downstream = asyncio.create_task(
            self._upstream_to_client(up_reader, writer, upstream_socket)
        )
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is closing
        finally:
            for task in (upstream, downstream):
                task.cancel()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _client_to_upstream(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        counter: _RequestCounter,
    ) -> None:
        """Forwards each chunk ``delay_s`` after it arrived, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            loop = asyncio.get_running_loop()
            while True:
                deadline, data = await queue.get()
                if not data:
                    up_writer.write_eof()
                    return
                wait = deadline - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                up_writer.write(data)
                await up_writer.drain()

        sender = asyncio.create_task(send())
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(1 << 16)
                if data:
                    with self._lock:
                        self._stats.bytes_up += len(data)
                    counter.feed(data)
                queue.put_nowait((loop.time() + self.delay_s, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    async def _upstream_to_client(
        self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Any
    ) -> None:
        while True:
            _quick_ack(upstream)
            data = await up_reader.read(1 << 16)
            if not data:
                return
            with self._lock:
                self._stats.bytes_down += len(data)
            writer.write(data)
            await writer.drain()


def _quick_ack(sock: Any) -> None:
    """Acknowledges the upstream's segments at once (Linux turns quick ACKs off again after a
    while, so this is repeated before every read). Without it a server that writes a
    response's headers and body separately (moto, radosgw) waits for the ACK that loopback
    delays by 40 ms: an artifact that would dwarf the 20 ms being simulated."""
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Starts moto's S3 server on loopback; yields its endpoint URL (any key/secret works).

    Raises:
        RuntimeError: ``moto_server`` is not installed (it comes with the ``dev`` extra), or it
            did not start within 30 s.
    """
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if server is None:
        raise RuntimeError("moto_server is not installed: run `make test` (moto[server] is in dev)")
    port = free_port()
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("moto_server exited at start") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start in 30 s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def s3_endpoint(kind: str, root: Path) -> Iterator[tuple[str, str, str]]:
    """``(endpoint, key, secret)`` of a fresh S3 server on loopback: ``moto`` (a Python
    server; about 50 ms of its own per request) or ``radosgw`` (Ceph's, C++, state under
    ``root``; about 15 s to start)."""
    if kind == "moto":
        with moto_server() as endpoint:
            yield endpoint, MOTO_KEY, MOTO_SECRET
        return
    from tests.integration.radosgw import missing_binaries, radosgw

    missing = missing_binaries()
    if missing:
        raise RuntimeError(
            f"Ceph's {', '.join(missing)} not installed: run `make test` (it installs the "
            "Debian packages ceph-mon ceph-osd radosgw ceph-common)"
        )
    with radosgw(root) as gateway:
        yield gateway.endpoint, gateway.key, gateway.secret
