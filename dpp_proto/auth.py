"""What a caller needs to reach a secured dpp endpoint: the connection file and its channels.

Owns the **connection file** (as Jupyter's kernel connection files: one small JSON file holds
everything a client needs) and the one function that turns it into a gRPC channel, so the
trainer's loader, ``dpp top``/``dpp scale`` and a worker dialling its master all connect the
same way. Both sides import it; it imports grpc and the standard library only (never
``dpp_server``, ``dpp_client``, torch).

A connection file::

    {
      "address": "127.0.0.1:50051",     # the master
      "ca": "ca.pem",                    # CA certificate that signed the servers' certificates
      "cert": "client.pem",              # (mTLS) this client's certificate and key
      "key": "client.key",
      "token": "dpp_...",                # the bearer token (or "token_file": "path")
      "server_name": "",                 # optional: the name to check the certificate against
      "insecure": false                  # true: plaintext, no token (a --insecure cluster)
    }

Relative paths are relative to the file's folder. ``DPP_CONNECTION`` names the file a client
uses when it is given none. The file holds a secret: keep it 0600 (:func:`write_private`).

The token travels as gRPC metadata ``authorization: Bearer <token>`` on every call (gRPC's
access-token call credentials, sent only over TLS), the same header an Arrow Flight client
sends, so a server's check does not depend on the transport.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "AUTH_HEADER",
    "CONNECTION_ENV",
    "Connection",
    "ConnectionFileError",
    "bearer_token",
    "load_connection",
    "open_channel",
    "resolve",
    "token_sha256",
    "write_private",
]

#: The metadata key (lower case, as gRPC and HTTP/2 carry it) that holds ``Bearer <token>``.
AUTH_HEADER = "authorization"
#: The environment variable naming the connection file a client uses by default.
CONNECTION_ENV = "DPP_CONNECTION"
_BEARER = "bearer "


class ConnectionFileError(ValueError):
    """A connection file is missing, unreadable or malformed (the message names the field)."""


@dataclasses.dataclass(frozen=True)
class Connection:
    """How to reach a secured dpp cluster.

    Attributes:
        address: ``host:port`` of the master (a worker's address comes from the master).
        ca_pem: the CA certificate(s) that verify servers; empty: the system's roots.
        cert_pem: this client's certificate chain (mTLS); empty: none.
        key_pem: this client's private key (mTLS); empty: none.
        token: the bearer token; empty: none sent.
        server_name: the name the servers' certificates are checked against, when the address
            does not carry it (e.g. dialling an IP); empty: the address's host.
        insecure: plaintext without token, for a cluster started with ``--insecure``.
        path: the file it was read from (for messages), if any.
    """

    address: str = ""
    ca_pem: bytes = b""
    cert_pem: bytes = b""
    key_pem: bytes = b""
    token: str = dataclasses.field(default="", repr=False)
    server_name: str = ""
    insecure: bool = False
    path: str = ""

    def with_address(self, address: str) -> Connection:
        """The same credentials for another endpoint (a worker's data port)."""
        return dataclasses.replace(self, address=address)


def _read(base: Path, value: Any, field: str, where: str) -> bytes:
    if not isinstance(value, str):
        raise ConnectionFileError(f"{where}: {field} must be a path (string)")
    path = base / os.path.expanduser(value)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConnectionFileError(f"{where}: {field} {str(path)!r}: {exc.strerror}") from exc


def load_connection(path: str | os.PathLike[str] | None = None) -> Connection | None:
    """Reads a connection file: ``path``, else ``$DPP_CONNECTION``, else None (no file).

    Raises:
        ConnectionFileError: the file is unreadable or malformed (the message names the field).
    """
    if path is None:
        path = os.environ.get(CONNECTION_ENV) or None
        if path is None:
            return None
    file = Path(os.path.expanduser(os.fspath(path)))
    where = f"connection file {str(file)!r}"
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        raise ConnectionFileError(f"{where}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConnectionFileError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConnectionFileError(f"{where}: expected a JSON object")
    known = {"address", "ca", "cert", "key", "token", "token_file", "server_name", "insecure"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConnectionFileError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    base = file.parent
    token = data.get("token", "")
    if "token_file" in data:
        token = _read(base, data["token_file"], "token_file", where).decode().strip()
    if not isinstance(token, str):
        raise ConnectionFileError(f"{where}: token must be a string")
    if ("cert" in data) != ("key" in data):
        raise ConnectionFileError(f"{where}: give both cert and key (mTLS), or neither")
    insecure = data.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ConnectionFileError(f"{where}: insecure must be true or false")
    return Connection(
        address=str(data.get("address", "")),
        ca_pem=_read(base, data["ca"], "ca", where) if "ca" in data else b"",
        cert_pem=_read(base, data["cert"], "cert", where) if "cert" in data else b"",
        key_pem=_read(base, data["key"], "key", where) if "key" in data else b"",
        token=token,
        server_name=str(data.get("server_name", "")),
        insecure=insecure,
        path=str(file),
    )


def resolve(
    address: str | None, connection: str | os.PathLike[str] | Connection | None
) -> tuple[str, Connection | None]:
    """The address to dial and the credentials, from what a client was given: a connection
    (object or file path; None: ``$DPP_CONNECTION``, else plaintext) and an address (None or
    empty: the connection's). An explicit address wins over the file's, the credentials stay.

    Raises:
        ConnectionFileError: the connection file is unreadable, or no address is known.
    """
    conn = connection if isinstance(connection, Connection) else load_connection(connection)
    target = address or (conn.address if conn is not None else "")
    if not target:
        raise ConnectionFileError(
            "no master address: pass 'host:port', or a connection file (connection=... or "
            f"${CONNECTION_ENV}) that holds one"
        )
    return target, conn


def open_channel(
    address: str,
    connection: Connection | None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to ``address`` with the connection's credentials: TLS (and the client's
    certificate, for mTLS) and the token on every call. ``connection`` None or insecure: a
    plaintext channel, for a cluster started with ``--insecure``."""
    if connection is None or connection.insecure:
        return grpc.insecure_channel(address, options=list(options))
    tls = grpc.ssl_channel_credentials(
        root_certificates=connection.ca_pem or None,
        private_key=connection.key_pem or None,
        certificate_chain=connection.cert_pem or None,
    )
    credentials = tls
    if connection.token:
        credentials = grpc.composite_channel_credentials(
            tls, grpc.access_token_call_credentials(connection.token)
        )
    opts = list(options)
    if connection.server_name:
        opts.append(("grpc.ssl_target_name_override", connection.server_name))
    return grpc.secure_channel(address, credentials, options=opts)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, or None when there is none
    (or it is not a bearer token)."""
    for key, value in metadata or ():
        if key.lower() != AUTH_HEADER:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if text[: len(_BEARER)].lower() == _BEARER:
            return text[len(_BEARER) :].strip()
        return None
    return None


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a token: what a token file stores (tokens are 256 random bits, so a
    fast hash is enough; no salt or stretching is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Writes a secret file readable by its owner only (0600 from its creation: no window in
    which another user could open it)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.replace(tmp, path)
