"""Why an RPC failed, machine-readable: the error reasons both sides speak.

A gRPC status code alone is too coarse for a trainer: FAILED_PRECONDITION is a session name
taken by another spec, a table whose partition folders disagree, or a corrupt footer, and each
asks for a different fix. So every error the master answers carries, besides its status code
and message, two entries of gRPC *trailing metadata*:

* ``dpp-error-reason``: one of the :class:`Reason` values below;
* ``dpp-error-field``: the spec field at fault (``features[1].source``, ``partition_filter``),
  or the name of the limit that was exceeded; absent when neither applies.

Trailing metadata rather than a ``google.rpc.Status`` detail: it needs no extra package
(``grpcio-status``) on either side, any gRPC client in any language can read it, and the
message text stays the human contract. The server sets it in one place
(``dpp_server.errors.grpc_error_of``); the client reads it in one place
(``dpp_client.errors.error_from_rpc``), never by parsing English. ``docs/errors.md`` lists
each reason with its status code, client exception and fix.

Standard library only: both the client and the server import it.
"""

from __future__ import annotations

import enum

__all__ = ["FIELD_KEY", "REASON_KEY", "Reason"]

#: Trailing-metadata keys (gRPC metadata keys are lower case).
REASON_KEY = "dpp-error-reason"
FIELD_KEY = "dpp-error-field"


class Reason(enum.StrEnum):
    """Every kind of deliberate error; the value is what travels in ``dpp-error-reason``."""

    #: INVALID_ARGUMENT: a spec field (named in ``dpp-error-field``) is wrong.
    SPEC_INVALID = "SPEC_INVALID"
    #: NOT_FOUND: the session id is unknown (never created, expired after the master's
    #: session_ttl_s without a call, or forgotten by a master that restarted without a
    #: journal).
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    #: NOT_FOUND: nothing at the table URI, or no Parquet file under it.
    TABLE_NOT_FOUND = "TABLE_NOT_FOUND"
    #: NOT_FOUND: a split id the session does not have (a checkpoint of another plan).
    SPLIT_NOT_FOUND = "SPLIT_NOT_FOUND"
    #: NOT_FOUND: acknowledgements for an epoch the rank has not begun.
    EPOCH_NOT_BEGUN = "EPOCH_NOT_BEGUN"
    #: NOT_FOUND: a worker the master does not know (it re-registers).
    WORKER_NOT_FOUND = "WORKER_NOT_FOUND"
    #: FAILED_PRECONDITION: the session name is taken by a session with another spec.
    SESSION_CONFLICT = "SESSION_CONFLICT"
    #: FAILED_PRECONDITION: the table's folders or columns do not fit together.
    TABLE_LAYOUT = "TABLE_LAYOUT"
    #: FAILED_PRECONDITION: a file of the table is not readable Parquet (corrupt footer).
    FILE_UNREADABLE = "FILE_UNREADABLE"
    #: FAILED_PRECONDITION: a file changed since the session was planned.
    TABLE_CHANGED = "TABLE_CHANGED"
    #: FAILED_PRECONDITION: the storage could not be reached or listed, or an option is bad.
    STORAGE_FAILED = "STORAGE_FAILED"
    #: OUT_OF_RANGE: an epoch past the session's last, or a rank outside world_size.
    OUT_OF_RANGE = "OUT_OF_RANGE"
    #: RESOURCE_EXHAUSTED: a limit (named in ``dpp-error-field``) was exceeded.
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    #: UNAVAILABLE: the service cannot take the request now (its journal cannot be written,
    #: it is recovering or draining); retry later.
    UNAVAILABLE = "UNAVAILABLE"
    #: UNAUTHENTICATED: no credentials, or a token the server does not know.
    UNAUTHENTICATED = "UNAUTHENTICATED"
    #: PERMISSION_DENIED: the caller lacks the role, the tenant or the data-access rule the
    #: call needs (the message names what is needed).
    PERMISSION_DENIED = "PERMISSION_DENIED"
    #: INTERNAL: a bug in dpp.
    INTERNAL = "INTERNAL"
