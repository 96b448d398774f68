"""Exceptions the dpp client raises, and the one function that maps gRPC statuses to them.

Owns: every deliberate error of ``dpp_client``. Other client modules raise these and never
inspect ``grpc.StatusCode`` themselves, so the status-to-exception policy lives in
:func:`error_from_rpc` alone. Must never import ``dpp_server`` or ``storage``: the client knows
the server only through the proto contract: status codes, and the machine-readable reason and
field the master attaches as trailing metadata (:mod:`dpp_proto.reasons`).

Each :class:`~dpp_proto.reasons.Reason` has its own exception class (``docs/errors.md``), so a
trainer can catch a table problem apart from a session name conflict; a hint is appended only
where the master's message does not already say what to do.

Messages say what was tried (with ids), what went wrong, and what to do about it.
"""

from __future__ import annotations

import re

import grpc

from dpp_proto.reasons import FIELD_KEY, REASON_KEY, Reason

__all__ = [
    "CorruptFileError",
    "DppAccessError",
    "DppClientError",
    "DppUnavailableError",
    "FrameError",
    "LimitExceededError",
    "SessionConflictError",
    "SessionNotFoundError",
    "SpecRejectedError",
    "TableChangedError",
    "TableError",
    "TableLayoutError",
    "TableNotFoundError",
    "WorkerDataError",
    "error_from_rpc",
    "rpc_code",
]


class DppClientError(Exception):
    """Base of every deliberate dpp client error.

    Attributes:
        code: the gRPC status code behind the error, or ``None`` when it did not come from an
            RPC (e.g. a malformed frame). Kept so callers can still branch on the raw status.
        reason: the master's machine-readable reason (a :class:`~dpp_proto.reasons.Reason`
            value), or ``""`` when the error carried none.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class SpecRejectedError(DppClientError, ValueError):
    """A session spec is invalid: the master said INVALID_ARGUMENT, or a local type check failed.

    Also a ``ValueError`` so generic config-handling code that catches ``ValueError`` keeps
    working.

    Attributes:
        field: path of the offending field (e.g. ``features[3].ops[1].max_value``), as the
            master named it (``dpp-error-field``) or the local check did.
    """

    def __init__(
        self,
        message: str,
        field: str = "",
        code: grpc.StatusCode | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message, code, reason)
        self.field = field


class SessionNotFoundError(DppClientError):
    """NOT_FOUND: the session (or an epoch or split of it) is unknown to the master."""


class TableNotFoundError(DppClientError):
    """NOT_FOUND: nothing at the table URI, or no Parquet file under it."""


class SessionConflictError(DppClientError):
    """FAILED_PRECONDITION: the session name is taken by a session with a different spec."""


class TableError(DppClientError):
    """FAILED_PRECONDITION: the table exists but cannot be read as asked (storage unreachable,
    a bad storage option). Subclasses name the more precise cases."""


class TableLayoutError(TableError):
    """The table's folders or columns do not fit together (partition keys differ between
    folders, a partition column also stored in the files)."""


class CorruptFileError(TableError):
    """A file of the table is not readable Parquet (truncated, corrupt footer)."""


class TableChangedError(TableError):
    """A file of the table changed since the session was planned."""


class LimitExceededError(DppClientError):
    """RESOURCE_EXHAUSTED: a request exceeded a limit of the master or of gRPC.

    Attributes:
        limit: the limit's name (a master setting, or a gRPC channel option such as
            ``grpc.max_send_message_length``), or ``""`` when the answer named none.
    """

    def __init__(
        self, message: str, limit: str = "", code: grpc.StatusCode | None = None, reason: str = ""
    ) -> None:
        super().__init__(message, code, reason)
        self.limit = limit


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

#: Reason -> (client exception, hint appended to the master's message, or "" when the message
#: already says what to do). One row per reason: tests/integration/test_error_status.py checks
#: that every :class:`Reason` has one.
_ACCESS_HINT = (
    "connect with the connection file of an identity allowed to do this: "
    "DppLoader(connection=...) or $DPP_CONNECTION; see docs/security.md"
)

REASON_ERRORS: dict[Reason, tuple[type[DppClientError], str]] = {
    Reason.SPEC_INVALID: (
        SpecRejectedError,
        "fix the spec field named above and create the session again",
    ),
    Reason.SESSION_NOT_FOUND: (
        SessionNotFoundError,
        "a master started without --journal-dir forgets its sessions when it restarts, and a "
        "session no rank called for the master's session_ttl_s expires; create the session "
        "again (a checkpoint's position still applies)",
    ),
    Reason.SPLIT_NOT_FOUND: (SessionNotFoundError, ""),
    Reason.EPOCH_NOT_BEGUN: (SessionNotFoundError, ""),
    Reason.WORKER_NOT_FOUND: (DppClientError, ""),
    Reason.TABLE_NOT_FOUND: (TableNotFoundError, ""),
    Reason.SESSION_CONFLICT: (SessionConflictError, ""),
    Reason.TABLE_LAYOUT: (TableLayoutError, ""),
    Reason.FILE_UNREADABLE: (CorruptFileError, ""),
    Reason.TABLE_CHANGED: (TableChangedError, ""),
    Reason.STORAGE_FAILED: (TableError, ""),
    Reason.OUT_OF_RANGE: (DppClientError, ""),
    Reason.LIMIT_EXCEEDED: (LimitExceededError, ""),
    Reason.UNAVAILABLE: (DppUnavailableError, "retry once the service is back"),
    Reason.UNAUTHENTICATED: (DppAccessError, _ACCESS_HINT),
    Reason.PERMISSION_DENIED: (DppAccessError, _ACCESS_HINT),
    Reason.INTERNAL: (
        DppClientError,
        "a bug in dpp, not in your spec: please report it with the master's log",
    ),
}

# gRPC's own message size check: "Sent message larger than max (20000000 vs. 16777216)".
_MESSAGE_SIZE = re.compile(r"(Sent|Received) message larger than max \((\d+) vs\. (\d+)\)")


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


def rpc_reason(exc: BaseException) -> tuple[Reason | None, str]:
    """The ``dpp-error-reason`` and ``dpp-error-field`` trailing metadata of a failed call:
    (None, "") when it carries none (gRPC's own errors, an older master)."""
    metadata_fn = getattr(exc, "trailing_metadata", None)
    metadata = metadata_fn() if callable(metadata_fn) else None
    values = {key: value for key, value in metadata or () if isinstance(value, str)}
    try:
        reason = Reason(values[REASON_KEY]) if REASON_KEY in values else None
    except ValueError:  # a newer master's reason: fall back on the status code
        reason = None
    return reason, values.get(FIELD_KEY, "")


def error_from_rpc(exc: BaseException, what: str) -> DppClientError:
    """Maps a failed RPC to the client exception a trainer should see.

    The master's reason (trailing metadata) picks the class; without one, the status code
    does, and only where it is unambiguous.

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
    reason, field = rpc_reason(exc)
    if reason is not None:
        cls, hint = REASON_ERRORS[reason]
        text = f"{message} ({hint})" if hint else message
        if cls is SpecRejectedError:
            return SpecRejectedError(text, field=field, code=code, reason=reason)
        if cls is LimitExceededError:
            return LimitExceededError(text, limit=field, code=code, reason=reason)
        return cls(text, code, reason)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # No reason: an older master, whose SpecError text is "<field>: <problem>[; <fix>]".
        field = details.split(":", 1)[0].strip() if ":" in details else ""
        return SpecRejectedError(
            f"{message} ({REASON_ERRORS[Reason.SPEC_INVALID][1]})", field=field, code=code
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return SessionNotFoundError(message, code)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _limit_error(message, details, code)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return DppAccessError(f"{message} ({_ACCESS_HINT})", code)
    if code in RETRYABLE_CODES or code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DppUnavailableError(
            f"{message} (is the master/worker running and reachable? A secured cluster (the "
            "default) also needs its connection file: connection=... or $DPP_CONNECTION; "
            "retried until the deadline)",
            code,
        )
    return DppClientError(message, code)


def _limit_error(message: str, details: str, code: grpc.StatusCode) -> LimitExceededError:
    """RESOURCE_EXHAUSTED without a reason: gRPC's own message size limit, named."""
    size = _MESSAGE_SIZE.search(details)
    if size is None:
        return LimitExceededError(message, code=code)
    direction, got, limit = size.group(1), int(size.group(2)), int(size.group(3))
    if direction == "Sent":
        name = "grpc.max_send_message_length"
        whose = "this client's"
    else:
        name = "grpc.max_receive_message_length"
        whose = "the receiver's"
    return LimitExceededError(
        f"{message} ({name}: the message is {got} bytes, above {whose} limit of {limit} bytes; "
        "a spec this large usually inlines a huge op parameter (a map_id table, a keep_ids "
        "list): move such data into the table, or shorten it)",
        limit=name,
        code=code,
    )
