"""The trainer's end of the data plane: a StreamBatches call over a worker's frame port.

:class:`SocketStream` is a :class:`~dpp_client.fan_in.StreamCall` (what the fan-in iterates
and cancels) that speaks :mod:`dpp_proto.data_plane` instead of gRPC: one TCP connection (TLS
with the cluster's certificates unless the cluster is --insecure), a hello with the token and
the request, then frames read with ``recv_into`` straight into a fresh, uninitialized Arrow
buffer each, which :func:`~dpp_client.frames.decode_frame` wraps without a copy. A refusal or
error arrives as a status and is raised as a :class:`~dpp_proto.data_plane.DataPlaneError`,
which ``error_from_rpc`` maps exactly as the gRPC status it mirrors; a lost connection is
UNAVAILABLE (the fan-in re-dials with its :class:`~dpp_proto.retry.Backoff`).

Must never import ``dpp_server`` or ``storage``. Thread-safety: one thread iterates;
:meth:`SocketStream.cancel` and :meth:`SocketStream.close` may be called from any thread
(``_lock`` guards the socket and the cancelled flag).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import cast

import grpc
import pyarrow as pa

from dpp_proto import worker_pb2
from dpp_proto.auth import Connection
from dpp_proto.data_plane import (
    MAX_FRAME_BYTES,
    MAX_STATUS_BYTES,
    RECORD,
    STATUS_FLAG,
    DataPlaneError,
    client_tls_context,
    encode_hello,
    parse_status,
)

__all__ = ["SocketStream", "TlsContexts"]

_CONNECT_TIMEOUT_S = 10.0
#: A large receive buffer lets the kernel hold a whole frame or two: fewer, larger reads.
_RCVBUF_BYTES = 4 << 20


class TlsContexts:
    """One client TLS context per connection, made once and shared by every stream of a
    loader (making one parses the certificates). Thread-safe (``_lock``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: dict[int, tuple[Connection, ssl.SSLContext]] = {}

    def of(self, connection: Connection) -> ssl.SSLContext:
        with self._lock:
            held = self._contexts.get(id(connection))
            if held is None or held[0] is not connection:
                held = (connection, client_tls_context(connection))
                self._contexts[id(connection)] = held
            return held[1]


_CONTEXTS = TlsContexts()


class SocketStream:
    """A StreamBatches call on a worker's data port (see the module docstring).

    Connects when iterated (the fan-in makes calls under a lock that ``cancel`` needs), so
    connecting, TLS and the hello happen in the stream's own thread.

    Args:
        address: the worker's data address (``host:port``), as ListWorkers lists it.
        request: the session and rank streamed.
        connection: the cluster's credentials; None or insecure: plaintext without a token.
    """

    def __init__(
        self,
        address: str,
        request: worker_pb2.StreamBatchesRequest,
        connection: Connection | None = None,
    ) -> None:
        self._address = address
        self._request = request
        self._connection = connection
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._tls: _TlsReader | None = None
        self._cancelled = False

    def __iter__(self) -> Iterator[pa.Buffer]:
        sock = self._connect()
        # The receiving half: the socket itself, or TLS decrypted from large socket reads.
        sock_or_tls: socket.socket | _TlsReader = sock if self._tls is None else self._tls
        head = bytearray(RECORD.size)
        head_view = memoryview(head)
        while True:
            self._read(sock_or_tls, head_view)
            (word,) = RECORD.unpack(head)
            if word & STATUS_FLAG:
                size = word & ~STATUS_FLAG
                if size > MAX_STATUS_BYTES:
                    raise DataPlaneError(
                        grpc.StatusCode.INTERNAL,
                        f"worker {self._address} sent a status of {size} bytes (max "
                        f"{MAX_STATUS_BYTES}): not a dpp data port of this version?",
                    )
                body = bytearray(size)
                self._read(sock_or_tls, memoryview(body))
                status = parse_status(bytes(body))
                if status.code() == grpc.StatusCode.OK:
                    return  # the worker ended the stream (superseded, stopping)
                raise status
            if word > MAX_FRAME_BYTES:
                raise DataPlaneError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"worker {self._address} sent a frame of {word} bytes, above the "
                    f"{MAX_FRAME_BYTES}-byte limit: lower the spec's batch_size",
                )
            # Uninitialized (no zero fill) and wrapped by Arrow as is: the batch decoded from
            # it keeps it alive, no copy.
            frame = pa.allocate_buffer(word)
            self._read(sock_or_tls, memoryview(frame))
            yield frame

    def _connect(self) -> socket.socket:
        host, _, port = self._address.rpartition(":")
        host = host.strip("[]")
        try:
            sock = socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            raise DataPlaneError(
                grpc.StatusCode.UNAVAILABLE,
                f"could not connect to the data port {self._address}: {exc}",
            ) from exc
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF_BYTES)
        conn = self._connection
        try:
            sock.settimeout(None)
            if conn is not None and not conn.insecure:
                tls = _TlsReader(sock, _CONTEXTS.of(conn), conn.server_name or host)
                tls.send(encode_hello(conn.token, self._request.SerializeToString()))
                self._tls = tls
            else:
                sock.sendall(encode_hello("", self._request.SerializeToString()))
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            # gRPC answers a failed handshake UNAVAILABLE too: the fan-in re-dials.
            raise DataPlaneError(
                grpc.StatusCode.UNAVAILABLE,
                f"could not open the data stream at {self._address}: {exc} (a secured "
                "cluster needs the connection file's CA and certificate: connection=... or "
                "$DPP_CONNECTION; an --insecure cluster needs an insecure connection)",
            ) from exc
        with self._lock:
            if self._cancelled:
                sock.close()
                raise DataPlaneError(grpc.StatusCode.CANCELLED, "the stream was cancelled")
            self._sock = sock
        return sock

    def _read(self, source: socket.socket | _TlsReader, view: memoryview) -> None:
        """Fills ``view``; a closed or broken connection ends the call."""
        while len(view):
            try:
                got = source.recv_into(view)
            except (OSError, ValueError) as exc:  # ValueError: closed by cancel meanwhile
                raise self._lost(str(exc)) from exc
            if got == 0:
                raise self._lost("the connection closed")
            view = view[got:]

    def _lost(self, what: str) -> DataPlaneError:
        with self._lock:
            cancelled = self._cancelled
        if cancelled:
            return DataPlaneError(grpc.StatusCode.CANCELLED, "the stream was cancelled")
        return DataPlaneError(
            grpc.StatusCode.UNAVAILABLE,
            f"the data stream from {self._address} broke: {what}",
        )

    def cancel(self) -> None:
        """Ends the call from any thread: the reading thread sees CANCELLED."""
        with self._lock:
            self._cancelled = True
            sock = self._sock
        if sock is not None:
            # The base class's shutdown, not SSLSocket's (which unwraps TLS and races with the
            # reading thread): the reader's recv_into returns at once. OSError: closed already.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class _TlsReader:
    """TLS over a blocking socket through memory BIOs: the socket is read in large chunks
    (``_CHUNK_BYTES``) and OpenSSL decrypts from memory. An ``SSLSocket`` reads each 16 KiB
    TLS record with two system calls of its own (header, then body); on the trainer this
    costs about a third less CPU per byte (``docs/benchmarks.md``). One thread uses it."""

    _CHUNK_BYTES = 1 << 20

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_name: str) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_name)
        self._chunk = memoryview(bytearray(self._CHUNK_BYTES))
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ssl.SSLEOFError("the worker closed the connection during TLS") from None
        self._flush()

    def send(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    def recv_into(self, view: memoryview) -> int:
        """Up to ``len(view)`` decrypted bytes (at most one TLS record); 0 at the end."""
        while True:
            try:
                # With a buffer, read() returns the count (typeshed says bytes).
                return cast(int, self._tls.read(len(view), view))
            except ssl.SSLWantReadError:
                self._flush()  # e.g. a TLS 1.3 key update's answer
                if not self._fill():
                    return 0
            except ssl.SSLZeroReturnError:
                return 0

    def _fill(self) -> bool:
        got = self._sock.recv_into(self._chunk)
        if got == 0:
            return False
        self._incoming.write(self._chunk[:got])
        return True

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._sock.sendall(self._outgoing.read())
