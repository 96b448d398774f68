"""The worker's data plane: StreamBatches over plain TCP (TLS on a secure cluster), beside gRPC.

Owns the worker's end of :mod:`dpp_proto.data_plane`: a listening socket, a thread per
connection that authenticates the hello and then drains the (session, rank)'s
:class:`~dpp_server.worker.FrameBuffer` into the connection with the same protocol as
:meth:`dpp_server.worker_service.WorkerServicer.stream_batches` (attach, superseded streams
stop, closed buffers re-fetched, a frame whose send failed put back with ``unget``, detach).
Why a socket and not gRPC: the trainer's cost of receiving through grpcio Python is about twice
that of ``recv_into`` on a socket (``docs/benchmarks.md``); the worker's is lower too.

Security is the gRPC server's, checked by the same :class:`~dpp_server.auth.Guard`: TLS with
the worker's certificate and, with a cluster CA, required client certificates (mTLS); the
hello's bearer token authenticated and authorized under the rule of
``/dpp.v1.WorkerService/StreamBatches`` (role trainer, the session's tenant). A refusal is sent
as the status gRPC would have answered, with the same ``dpp-error-*`` metadata
(:func:`~dpp_server.errors.grpc_error_of`). Plaintext only for an ``--insecure`` worker.

Flow control: a send blocks while the trainer does not read (TCP's window). A trainer that
went away is noticed by its socket turning readable (EOF): the frame in hand goes back to
the buffer. Thread-safety: ``_lock`` guards the connection set and the stream count; each
connection thread touches only its own socket and its (session, rank) buffer.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
from collections.abc import Callable

import grpc

from dpp_proto import worker_pb2
from dpp_proto.data_plane import (
    HELLO_PREFIX,
    RECORD,
    HelloError,
    encode_status,
    parse_hello_prefix,
)
from dpp_server.auth import Guard, SecuritySettings, short_name
from dpp_server.errors import DppError, grpc_error_of
from dpp_server.worker import Worker

logger = logging.getLogger(__name__)

STREAM_METHOD = "/dpp.v1.WorkerService/StreamBatches"
#: Time a client has for TLS and its hello before the connection is dropped.
_HELLO_TIMEOUT_S = 10.0
_ACCEPT_POLL_S = 0.5
_SNDBUF_BYTES = 4 << 20


def server_tls_context(settings: SecuritySettings) -> ssl.SSLContext | None:
    """The data port's TLS: the worker's certificate; with ``tls_ca``, client certificates
    signed by it are required (mTLS), as on the gRPC port. None when insecure."""
    if settings.insecure:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_ca:
        context.load_verify_locations(settings.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class FrameServer:
    """Serves StreamBatches on a data port (see the module docstring).

    Args:
        worker: whose frame buffers are streamed.
        guard: the gRPC server's guard (same tokens, rules and tenant lookups).
        security: TLS settings (insecure: plaintext).
        host: the address to bind (the gRPC server's).
        port: the port (0: any free one).
        max_streams: streams served at once; one more is refused RESOURCE_EXHAUSTED, as the
            gRPC server does past its ``max_streams``.
        poll_s: how often a waiting stream re-checks its buffer and its client.
    """

    def __init__(
        self,
        worker: Worker,
        guard: Guard,
        security: SecuritySettings,
        host: str = "127.0.0.1",
        port: int = 0,
        max_streams: int = 512,
        poll_s: float = 0.25,
    ) -> None:
        self.worker = worker
        self.guard = guard
        self.max_streams = max_streams
        self.poll_s = poll_s
        self._tls = server_tls_context(security)
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        self._listener = socket.create_server((host.strip("[]"), port), family=family, backlog=128)
        self._listener.settimeout(_ACCEPT_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._streams = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name="dpp-frames-accept", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stops accepting and ends every connection (their streams see a broken send)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(_ACCEPT_POLL_S * 4)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _shutdown(conn)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopped.is_set():
                    return
                logger.exception("data port accept failed")  # e.g. out of file descriptors
                self._stopped.wait(_ACCEPT_POLL_S)
                continue
            threading.Thread(
                target=self._serve,
                args=(conn, f"{peer[0]}:{peer[1]}"),
                name=f"dpp-frames-{peer[0]}:{peer[1]}",
                daemon=True,
            ).start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        with self._lock:
            if self._stopped.is_set():
                conn.close()
                return
            self._conns.add(conn)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF_BYTES)
            conn.settimeout(_HELLO_TIMEOUT_S)
            if self._tls is not None:
                try:
                    tls = self._tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    # An insecure client, a wrong CA, no client certificate: the handshake is
                    # the refusal (as on the gRPC port); nothing more can be said.
                    logger.info("data port: TLS handshake with %s failed: %s", peer, exc)
                    return
                with self._lock:
                    self._conns.discard(conn)
                    self._conns.add(tls)
                conn = tls
            request = self._admit(conn, peer)
            if request is None:
                return
            conn.settimeout(None)  # sends block while the trainer does not read (backpressure)
            self._stream(conn, request)
        except OSError as exc:
            logger.debug("data port: connection from %s ended: %s", peer, exc)
        except Exception:
            logger.exception("data port: stream to %s failed", peer)
            _send_quietly(
                conn, encode_status(grpc.StatusCode.INTERNAL, "internal error in the data port")
            )
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _admit(self, conn: socket.socket, peer: str) -> worker_pb2.StreamBatchesRequest | None:
        """Reads and checks the hello; sends the refusal and returns None when refused."""
        try:
            prefix = _recv_exactly(conn, HELLO_PREFIX.size)
            token_len, request_len = parse_hello_prefix(prefix)
            token = _recv_exactly(conn, token_len).decode()
            request = worker_pb2.StreamBatchesRequest.FromString(_recv_exactly(conn, request_len))
        except (HelloError, UnicodeDecodeError) as exc:
            _send_quietly(conn, encode_status(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
            return None
        except (EOFError, TimeoutError):
            logger.info("data port: %s sent no complete hello", peer)
            return None
        except Exception as exc:  # protobuf's DecodeError, whose import path varies
            _send_quietly(
                conn,
                encode_status(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the hello's request is not a StreamBatchesRequest: {exc}",
                ),
            )
            return None
        try:
            self.guard.check(STREAM_METHOD, token or None, request)
        except DppError as exc:
            error = grpc_error_of(exc)
            _send_quietly(conn, encode_status(error.code, error.message, error.trailing_metadata()))
            return None
        except grpc.RpcError as exc:  # asking the master whose session this is failed
            _send_quietly(
                conn,
                encode_status(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{short_name(STREAM_METHOD)}: could not ask the master who owns the "
                    f"session ({exc}); retry",
                ),
            )
            return None
        with self._lock:
            if self._streams >= self.max_streams:
                refused = True
            else:
                refused = False
                self._streams += 1
        if refused:
            _send_quietly(
                conn,
                encode_status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"worker serves its max_streams ({self.max_streams}) already; retry later",
                ),
            )
            return None
        return request

    def _stream(self, conn: socket.socket, request: worker_pb2.StreamBatchesRequest) -> None:
        """Drains the (session, rank)'s buffer into ``conn``: the FrameBuffer protocol of
        ``WorkerServicer.stream_batches``, with the connection's liveness for the RPC's."""
        alive = _liveness(conn)
        buffer = self.worker.buffer(request.session_id, request.rank)
        token = buffer.attach()
        logger.info(
            "client streaming session %s rank %d (data port)", request.session_id, request.rank
        )
        self.worker.streams.add(1)
        try:
            while alive() and not self.worker.stopping and not self._stopped.is_set():
                if buffer.closed:
                    buffer.detach()
                    buffer = self.worker.buffer(request.session_id, request.rank)
                    token = buffer.attach()
                if not buffer.is_consumer(token):
                    break  # superseded by a newer stream of the same (session, rank)
                item = buffer.take(self.poll_s, token, alive)
                if item is None:
                    continue
                frame, lease = item
                try:
                    _send_frame(conn, frame)
                except OSError:
                    buffer.unget(frame, lease)  # the client went away: the frame stays
                    return
            _send_quietly(conn, encode_status(grpc.StatusCode.OK, "stream ended"))
        finally:
            buffer.detach()
            self.worker.streams.add(-1)
            with self._lock:
                self._streams -= 1


def _send_frame(conn: socket.socket, frame: bytes) -> None:
    head = RECORD.pack(len(frame))
    if isinstance(conn, ssl.SSLSocket):
        conn.sendall(head)
        conn.sendall(frame)
        return
    # One system call for the word and the frame, without joining them (no copy).
    sent = conn.sendmsg([head, frame])
    if sent < len(head):
        conn.sendall(head[sent:])
        sent = len(head)
    if sent - len(head) < len(frame):
        conn.sendall(memoryview(frame)[sent - len(head) :])


def _liveness(conn: socket.socket) -> Callable[[], bool]:
    """Whether the client is still there: it never sends after its hello, so a readable
    socket means EOF (it closed or died) or a broken peer; either way the stream ends."""

    def alive() -> bool:
        try:
            readable, _, _ = select.select([conn], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    return alive


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    out = bytearray(size)
    view = memoryview(out)
    while len(view):
        got = conn.recv_into(view)
        if got == 0:
            raise EOFError("the client closed the connection")
        view = view[got:]
    return bytes(out)


def _send_quietly(conn: socket.socket, data: bytes) -> None:
    try:
        conn.settimeout(_HELLO_TIMEOUT_S)
        conn.sendall(data)
    except OSError:
        pass  # the client is gone: nothing to tell


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        socket.socket.shutdown(conn, socket.SHUT_RDWR)
