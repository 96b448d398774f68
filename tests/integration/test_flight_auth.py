"""The auth core behind an Arrow Flight server (should the data plane move to Flight): the same
header, the same ``Guard.check`` rule as the gRPC StreamBatches, over a real Flight server on
127.0.0.1 with TLS."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from dpp_proto import worker_pb2
from dpp_proto.auth import token_sha256
from dpp_server.auth import FLIGHT_MIDDLEWARE_KEY, Guard, TokenFile, flight_auth_middleware
from dpp_server.errors import NotFoundError
from dpp_server.local_cluster import CREDENTIALS_ENV

pytestmark = pytest.mark.integration


class _Server(flight.FlightServerBase):  # type: ignore[misc]
    """do_get streams a one-row table for a StreamBatchesRequest ticket, after the check."""

    def __init__(self, location: str, factory: Any, **kwargs: Any) -> None:
        super().__init__(location, middleware={FLIGHT_MIDDLEWARE_KEY: factory}, **kwargs)
        self.factory = factory

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.RecordBatchStream:
        request = worker_pb2.StreamBatchesRequest.FromString(ticket.ticket)
        identity = self.factory.authorize(context, request)
        return flight.RecordBatchStream(pa.table({"who": [identity.name]}))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    creds = Path(os.environ[CREDENTIALS_ENV])
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(
        f"{token_sha256('t-ads')} trainer alice ads\n{token_sha256('t-evil')} trainer eve evil\n"
    )

    def tenant(session_id: str) -> str:
        if session_id != "s-ads":
            raise NotFoundError(f"session {session_id!r} does not exist")
        return "ads"

    guard = Guard(TokenFile(tokens), session_tenant=tenant)
    cert = (creds / "server.pem").read_bytes(), (creds / "server.key").read_bytes()
    srv = _Server(
        "grpc+tls://127.0.0.1:0",
        flight_auth_middleware(guard),
        tls_certificates=[flight.CertKeyPair(*cert)],
    )
    try:
        yield f"grpc+tls://127.0.0.1:{srv.port}", (creds / "ca.pem").read_bytes()
    finally:
        srv.shutdown()


def _get(location: str, ca: bytes, token: str | None, session: str) -> pa.Table:
    client = flight.FlightClient(location, tls_root_certs=ca)
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    ticket = worker_pb2.StreamBatchesRequest(session_id=session, rank=0).SerializeToString()
    try:
        return client.do_get(
            flight.Ticket(ticket), flight.FlightCallOptions(headers=headers)
        ).read_all()
    finally:
        client.close()


def test_flight_data_plane_runs_the_same_check(server: tuple[str, bytes]) -> None:
    location, ca = server
    assert _get(location, ca, "t-ads", "s-ads").column("who").to_pylist() == ["alice"]
    with pytest.raises(flight.FlightUnauthenticatedError, match="no token was sent"):
        _get(location, ca, None, "s-ads")
    with pytest.raises(flight.FlightUnauthenticatedError, match="not valid here"):
        _get(location, ca, "t-wrong", "s-ads")
    with pytest.raises(flight.FlightUnauthorizedError, match="belongs to another tenant"):
        _get(location, ca, "t-evil", "s-ads")
