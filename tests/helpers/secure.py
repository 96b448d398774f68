"""Channels for tests that call a cluster's RPCs directly: with the run's credentials
($DPP_CONNECTION, set by tests/conftest.py), as every client of a secured cluster must."""

from __future__ import annotations

import grpc

from dpp_proto.auth import load_connection, open_channel


def channel(address: str) -> grpc.Channel:
    """A channel to ``address`` with the user's connection (TLS, client certificate, token)."""
    return open_channel(address, load_connection())
