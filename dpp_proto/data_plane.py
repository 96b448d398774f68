"""The data plane's transport: frames over a plain (or TLS) TCP stream, defined once for both sides.

Owns the byte layout between a worker's frame server (``dpp_server.frame_server``) and the
trainer's socket stream (``dpp_client.socket_stream``); the frames themselves are
:mod:`dpp_proto.wire`'s, unchanged. Why not gRPC: receiving frames through grpcio's Python
iterator cost the trainer ~0.9 core-s per 1M rows of the DLRM job, a socket read with
``recv_into`` ~0.45 (``bench/client_cpu.py``, ``docs/benchmarks.md``). The control plane stays
gRPC; this carries StreamBatches only, with the same request, the same token, the same access
rule and the same status codes and ``dpp-error-*`` reasons as the gRPC stream, so a trainer
sees one error mapping (``dpp_client.errors.error_from_rpc``) whichever plane it uses.

One connection is one StreamBatches call:

1. (secure clusters) TLS, with the cluster's certificates: the client checks the worker's
   certificate against the cluster CA and presents its own (mTLS), as over gRPC.
2. Client -> worker, the **hello**: ``DPPD``, version byte, ``<HI`` token length and request
   length, the bearer token (UTF-8, empty on an --insecure cluster), the serialized
   ``StreamBatchesRequest``. Nothing else is ever sent by the client: bytes (or EOF) from it
   afterwards mean it went away.
3. Worker -> client, **records**, each an 8-byte little-endian word then its body: a word
   below 2**63 is a frame of that many bytes; a word with bit 63 set is a **status** whose
   low bits give the length of a JSON body ``{"code": <grpc status code number>, "message":
   ..., "metadata": [[key, value], ...]}``. A status ends the call: OK (code 0) is a stream
   the worker ended (superseded, stopping); anything else is the refusal or error gRPC would
   have answered (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...), with the
   same trailing metadata. A connection that closes without a status is UNAVAILABLE.

Flow control is TCP's: a trainer whose queue is full stops reading, its receive window fills,
and the worker's send blocks, as gRPC's window did.

Imports grpc (for ``StatusCode`` and ``RpcError``, so errors map like gRPC's) and the standard
library; never ``dpp_server``, ``dpp_client``, torch. Thread-safety: pure functions and
immutable values.
"""

from __future__ import annotations

import json
import os
import ssl
import struct
import tempfile
from collections.abc import Sequence

import grpc

from dpp_proto.auth import Connection

__all__ = [
    "HELLO_MAGIC",
    "MAX_REQUEST_BYTES",
    "MAX_TOKEN_BYTES",
    "RECORD",
    "STATUS_FLAG",
    "VERSION",
    "DataPlaneError",
    "Hello",
    "HelloError",
    "client_tls_context",
    "encode_hello",
    "encode_status",
    "parse_hello_prefix",
    "parse_status",
]

HELLO_MAGIC = b"DPPD"
VERSION = 1
#: magic, version, token length, request length
HELLO_PREFIX = struct.Struct("<4sBHI")
#: Each record's word: a frame's length, or STATUS_FLAG | a status body's length.
RECORD = struct.Struct("<Q")
STATUS_FLAG = 1 << 63
MAX_TOKEN_BYTES = 8 << 10
MAX_REQUEST_BYTES = 64 << 10
MAX_STATUS_BYTES = 1 << 20
#: The largest frame a client accepts (the gRPC stream's max_receive_message_length).
MAX_FRAME_BYTES = 512 << 20


class HelloError(ValueError):
    """A hello that breaks the layout (bad magic, version, sizes): the message says which."""


class Hello:
    """A parsed hello: the bearer token and the serialized StreamBatchesRequest."""

    __slots__ = ("request", "token")

    def __init__(self, token: str, request: bytes) -> None:
        self.token = token
        self.request = request


def encode_hello(token: str, request: bytes) -> bytes:
    """The client's first (and only) bytes on a connection."""
    raw = token.encode()
    if len(raw) > MAX_TOKEN_BYTES or len(request) > MAX_REQUEST_BYTES:
        raise ValueError(
            f"hello too large: token {len(raw)} bytes (max {MAX_TOKEN_BYTES}), request "
            f"{len(request)} bytes (max {MAX_REQUEST_BYTES})"
        )
    return HELLO_PREFIX.pack(HELLO_MAGIC, VERSION, len(raw), len(request)) + raw + request


def parse_hello_prefix(prefix: bytes) -> tuple[int, int]:
    """(token length, request length) of a hello's fixed prefix.

    Raises:
        HelloError: not a dpp data-plane hello of this version, or sizes over the limits.
    """
    magic, version, token_len, request_len = HELLO_PREFIX.unpack(prefix)
    if magic != HELLO_MAGIC:
        raise HelloError(
            f"not a dpp data-plane hello (starts {magic!r}, expected {HELLO_MAGIC!r}); this "
            "port speaks dpp's frame protocol (dpp_proto/data_plane.py), not gRPC or HTTP"
        )
    if version != VERSION:
        raise HelloError(
            f"data-plane protocol version {version}; this worker speaks {VERSION}: install the "
            "same dpp version on the trainer and the workers"
        )
    if token_len > MAX_TOKEN_BYTES or request_len > MAX_REQUEST_BYTES:
        raise HelloError(
            f"hello sizes over the limits: token {token_len} (max {MAX_TOKEN_BYTES}), "
            f"request {request_len} (max {MAX_REQUEST_BYTES}) bytes"
        )
    return token_len, request_len


def encode_status(
    code: grpc.StatusCode, message: str, metadata: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A status record (word and body): how a call ends."""
    body = json.dumps(
        {"code": code.value[0], "message": message, "metadata": [list(m) for m in metadata]}
    ).encode()[:MAX_STATUS_BYTES]
    return RECORD.pack(STATUS_FLAG | len(body)) + body


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def parse_status(body: bytes) -> DataPlaneError:
    """The status a worker sent, as the error it stands for (code OK included)."""
    try:
        data = json.loads(body)
        code = _CODES.get(int(data["code"]), grpc.StatusCode.UNKNOWN)
        metadata = tuple((str(k), str(v)) for k, v in data.get("metadata", ()))
        return DataPlaneError(code, str(data.get("message", "")), metadata)
    except (ValueError, KeyError, TypeError) as exc:
        return DataPlaneError(
            grpc.StatusCode.INTERNAL, f"the worker sent a malformed status ({exc})"
        )


class DataPlaneError(grpc.RpcError):
    """A data-plane call's end, shaped as a gRPC error (``code()``, ``details()``,
    ``trailing_metadata()``), so the client maps it with the one function that maps gRPC's
    (``dpp_client.errors.error_from_rpc``) and retries it under the same rules."""

    def __init__(
        self, code: grpc.StatusCode, message: str, metadata: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self._code = code
        self._message = message
        self._metadata = tuple(metadata)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    # grpc-stubs types metadata as a class; grpcio hands (key, value) tuples, as here.
    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return self._metadata

    def __str__(self) -> str:
        return f"{self._code.name}: {self._message}"


def client_tls_context(connection: Connection) -> ssl.SSLContext:
    """The TLS context a trainer dials a worker's data port with: the cluster CA (else the
    system's roots) verifies the worker, the connection's certificate is presented (mTLS).

    The stdlib loads a certificate chain only from files: the PEMs are written to a private
    temporary folder for the call and removed at once.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if connection.ca_pem:
        context.load_verify_locations(cadata=connection.ca_pem.decode())
    else:
        context.load_default_certs()
    if connection.cert_pem:
        with tempfile.TemporaryDirectory(prefix="dpp-tls-") as folder:
            cert = os.path.join(folder, "cert.pem")
            key = os.path.join(folder, "key.pem")
            for path, data in ((cert, connection.cert_pem), (key, connection.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            context.load_cert_chain(cert, key)
    return context
