"""The stats package's domain errors.

Owns :class:`StatsError` and :class:`CapacityError`. They derive from
:class:`dpp_server.errors.DppError`, so the one status mapping covers them; they live here only
while ``dpp_server/errors.py`` is being restructured (issue 11) and move there when the stats
session is wired in. Must never import anything else from ``dpp_server``.
"""

from __future__ import annotations

import grpc

from dpp_server.errors import DppError

__all__ = ["CapacityError", "StatsError"]


class StatsError(DppError):
    """Bad stats input: a malformed or mismatched payload, a batch without a feature's column,
    a report without a feature asked for, an option out of range."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class CapacityError(StatsError):
    """A shard plan cannot place the tables in the memory given.

    Attributes:
        table: the table that did not fit.
        shortfall_gb: how many more GB (10**9 bytes) it needed.
    """

    status = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, table: str, shortfall_gb: float) -> None:
        super().__init__(message)
        self.table = table
        self.shortfall_gb = shortfall_gb
