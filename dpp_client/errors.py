"""Exceptions the dpp client raises, and the one function that maps gRPC statuses to them.

Owns: every deliberate error of ``dpp_client``. Other client modules raise these and never
inspect ``grpc.StatusCode`` themselves, so the status-to-exception policy lives in
:func:`error_from_rpc` alone. Must never import ``dpp_server`` or ``storage``: the client knows
the server only through the proto contract and its status codes.

Messages say what was tried (with ids), what went wrong, and what to do about it.
"""

from __future__ import annotations

import grpc

__all__ = [
    "DppAccessError",
    "DppClientError",
    "DppUnavailableError",
    "FrameError",
    "SessionConflictError",
    "SessionNotFoundError",
    "SpecRejectedError",
    "WorkerDataError",
    "error_from_rpc",
    "rpc_code",
]


class DppClientError(Exception):
    """Base of every deliberate dpp client error.

    Attributes:
        code: the gRPC status code behind the error, or ``None`` when it did not come from an
            RPC (e.g. a malformed frame). Kept so callers can still branch on the raw status.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class SpecRejectedError(DppClientError, ValueError):
    """A session spec is invalid: the master said INVALID_ARGUMENT, or a local type check failed.

    Also a ``ValueError`` so generic config-handling code that catches ``ValueError`` keeps
    working.

    Attributes:
        field: path of the offending field (e.g. ``features[3].ops[1].max_value``), as named
            by the master's message (the text before its first colon) or by the local check.
    """

    def __init__(self, message: str, field: str = "", code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, code)
        self.field = field


class SessionNotFoundError(DppClientError):
    """NOT_FOUND: an unknown session (e.g. the master lost it) or an unknown table."""


class SessionConflictError(DppClientError):
    """FAILED_PRECONDITION: e.g. a session name reused with a different spec."""


class WorkerDataError(DppClientError):
    """A worker could not produce a split and sent a frame with ``error`` set.

    Attributes:
        split_id: the split that failed.
        epoch: the epoch it belonged to.
    """

    def __init__(self, message: str, split_id: str = "", epoch: int = 0) -> None:
        super().__init__(message)
        self.split_id = split_id
        self.epoch = epoch


class DppAccessError(DppClientError):
    """UNAUTHENTICATED or PERMISSION_DENIED: the credentials are missing or wrong, or their
    identity may not do this (the message names the role, tenant or rule needed)."""


class DppUnavailableError(DppClientError):
    """The master or a worker stayed unreachable (UNAVAILABLE / ABORTED / DEADLINE_EXCEEDED)
    past the retry deadline."""


class FrameError(DppClientError):
    """A StreamBatches response is not a well-formed frame (bad magic, truncated, bad section).

    Means a client/server version mismatch or a corrupted message, never a user error.
    """


#: Codes the client retries with capped backoff; everything else fails fast.
RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
)


def rpc_code(exc: BaseException) -> grpc.StatusCode | None:
    """Returns the status code of a gRPC error, or None when ``exc`` carries none.

    ``grpc.RpcError`` itself declares no ``code()``; the concrete errors grpc raises are also
    ``grpc.Call`` objects that do. Duck typing keeps this working for both and for test fakes.
    """
    code_fn = getattr(exc, "code", None)
    if not callable(code_fn):
        return None
    code = code_fn()
    return code if isinstance(code, grpc.StatusCode) else None


def _rpc_details(exc: BaseException) -> str:
    details_fn = getattr(exc, "details", None)
    details = details_fn() if callable(details_fn) else None
    return str(details) if details else str(exc)


def error_from_rpc(exc: BaseException, what: str) -> DppClientError:
    """Maps a failed RPC to the client exception a trainer should see.

    Args:
        exc: the ``grpc.RpcError`` raised by a stub call.
        what: what was tried, with ids, e.g. ``"CreateSession(name='ctr') at 10.0.0.1:50051"``;
            it prefixes the message so the error says what failed without a traceback.

    Returns:
        The mapped exception (not raised, so the caller keeps control of ``from`` chaining).
    """
    code = rpc_code(exc)
    details = _rpc_details(exc)
    message = f"{what} failed: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The master's SpecError text is "<field>: <problem>[; <fix>]".
        field = details.split(":", 1)[0].strip() if ":" in details else ""
        return SpecRejectedError(
            f"{message} (fix the spec field named above and create the session again)",
            field=field,
            code=code,
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return SessionNotFoundError(
            f"{message} (check the table URI, or create the session again if the master lost it)",
            code,
        )
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return SessionConflictError(
            f"{message} (use another session_name or the same spec as the other ranks)", code
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return DppAccessError(
            f"{message} (connect with the connection file of an identity allowed to do this: "
            "DppLoader(connection=...) or $DPP_CONNECTION; see docs/security.md)",
            code,
        )
    if code in RETRYABLE_CODES or code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DppUnavailableError(
            f"{message} (is the master/worker running and reachable? A secured cluster (the "
            "default) also needs its connection file: connection=... or $DPP_CONNECTION; "
            "retried until the deadline)",
            code,
        )
    return DppClientError(message, code)
