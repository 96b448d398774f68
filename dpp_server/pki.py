"""Throwaway credentials for a local or test cluster: a CA, certificates, tokens, a connection.

Owns :func:`make_credentials`, what ``dpp up``, ``dpp demo``, the test clusters and ``dpp
certs`` call so that a cluster is secured with no extra step: a fresh CA (its key is never
written, so nobody can issue more certificates from it), one certificate for the servers and
one for the user (both usable as server and client certificates, for mTLS), a token for the
workers and one for the user, the hashed token file, and the user's connection file. Every
file is written 0600 (:func:`dpp_proto.auth.write_private`).

Uses the ``cryptography`` package (the server extra). Must never import grpc.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dpp_proto.auth import token_sha256, write_private

#: How long throwaway certificates last: a local cluster is re-made on every start.
VALIDITY = datetime.timedelta(days=30)
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")


def new_token() -> str:
    """A bearer token: 256 random bits, with a prefix that secret scanners recognise."""
    return "dpp_" + secrets.token_urlsafe(32)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dpp"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclasses.dataclass(frozen=True)
class Authority:
    """A CA in memory: its key never touches the disk."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str = "dpp throwaway CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, hosts: Sequence[str] = ()) -> tuple[bytes, bytes]:
        """A (key PEM, certificate PEM) pair for ``hosts`` (IP addresses or DNS names), usable
        both to serve TLS and as a client certificate (mTLS)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


@dataclasses.dataclass(frozen=True)
class Credentials:
    """The files of a secured local cluster, all in ``directory``.

    Attributes:
        ca: the CA certificate.
        server_cert, server_key: the master's and workers' certificate (SANs: the hosts).
        token_file: the hashed tokens (the workers' and the user's).
        worker_token: the file holding the workers' token.
        connection: the user's connection file (address filled in by :func:`write_connection`).
    """

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    token_file: Path
    worker_token: Path
    connection: Path

    def server_args(self, role: str) -> list[str]:
        """The ``dpp master`` / ``dpp worker`` flags that use these files (mTLS, tokens)."""
        args = [
            "--tls-cert",
            str(self.server_cert),
            "--tls-key",
            str(self.server_key),
            "--tls-ca",
            str(self.ca),
            "--token-file",
            str(self.token_file),
        ]
        if role == "worker":
            args += ["--auth-token-file", str(self.worker_token)]
        return args

    @classmethod
    def at(cls, directory: Path) -> Credentials:
        """The files of a folder :func:`make_credentials` filled."""
        return cls(
            directory=directory,
            ca=directory / "ca.pem",
            server_cert=directory / "server.pem",
            server_key=directory / "server.key",
            token_file=directory / "tokens.txt",
            worker_token=directory / "worker.token",
            connection=directory / "connection.json",
        )

    def connection_for(self, address: str, dest: Path | None = None, identity: str = "") -> Path:
        """Writes a connection file for ``address`` with the user's (or the ``extra``
        identity ``identity``'s) credentials, paths made absolute; returns its path (default:
        the identity's file in the folder, updated in place)."""
        source = self.directory / (f"{identity}.json" if identity else "connection.json")
        data = json.loads(source.read_text())
        data["address"] = address
        for field in ("ca", "cert", "key"):
            if field in data:
                data[field] = str((self.directory / data[field]).resolve())
        target = dest or source
        write_private(target, json.dumps(data, indent=2) + "\n")
        return target


def make_credentials(
    directory: str | Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    tenant: str = "local",
    user: str = "user",
    extra: Sequence[tuple[str, str, str]] = (),
) -> Credentials:
    """Creates a fresh CA, certificates, tokens and the user's connection file in
    ``directory`` (0600 files). The user's identity has roles trainer and admin in
    ``tenant``; the workers share one identity of role worker.

    Args:
        extra: more identities as (name, roles, tenant): each gets a token file
            ``<name>.token`` and a connection file ``<name>.json`` (tests use them for other
            tenants and roles).
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca = Authority.create()
    write_private(folder / "ca.pem", ca.cert_pem)
    server_key, server_cert = ca.issue("dpp server", hosts)
    write_private(folder / "server.pem", server_cert)
    write_private(folder / "server.key", server_key)
    client_key, client_cert = ca.issue(f"dpp client {user}")
    write_private(folder / "client.pem", client_cert)
    write_private(folder / "client.key", client_key)
    lines = ["# sha256(token) roles name tenant  (made by dpp_server.pki.make_credentials)"]
    worker_token = new_token()
    write_private(folder / "worker.token", worker_token + "\n")
    lines.append(f"{token_sha256(worker_token)} worker workers")
    identities = [(user, "trainer,admin", tenant), *extra]
    for name, roles, its_tenant in identities:
        token = new_token()
        lines.append(f"{token_sha256(token)} {roles} {name} {its_tenant}".rstrip())
        connection = {
            "address": "",
            "ca": "ca.pem",
            "cert": "client.pem",
            "key": "client.key",
            "token": token,
        }
        file = "connection.json" if name == user else f"{name}.json"
        write_private(folder / file, json.dumps(connection, indent=2) + "\n")
    write_private(folder / "tokens.txt", "\n".join(lines) + "\n")
    return Credentials.at(folder)
