"""Domain exceptions of the dpp server, and their one mapping to gRPC status codes.

Owns: every exception the master and workers raise on purpose. Logic modules raise these;
``*_service.py`` modules turn them into gRPC statuses with :func:`grpc_error_of` and nothing
else. Must never import grpc at module level beyond the status enum: the mapping is data.

Each error has a status code and a machine-readable :class:`~dpp_proto.reasons.Reason` (and,
where one is at fault, the spec field or limit it names): the code alone cannot tell a session
name conflict from a corrupt footer, and the client must not parse English to tell them apart.

Messages say what was tried (with ids), what went wrong, and what to do about it.
"""

from __future__ import annotations

import dataclasses

import grpc

from dpp_proto.reasons import FIELD_KEY, REASON_KEY, Reason
from storage.errors import (
    CorruptFileError,
    FilterError,
    RowGroupTooLargeError,
    SplitChangedError,
    StorageError,
    TableLayoutError,
    TableNotFoundError,
    TableUriError,
)


class DppError(Exception):
    """Base of every deliberate dpp server error.

    Attributes:
        status: the gRPC status code callers see.
        reason: the machine-readable kind of error (``dpp-error-reason``); a class default
            that an instance may refine (``NotFoundError(..., reason=...)``).
    """

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: Reason = Reason.INTERNAL


class SpecError(DppError):
    """A session spec is invalid.

    Attributes:
        field: path of the offending field, e.g. ``features[3].ops[1].boundaries``.
        problem: what is wrong with it.
        fix: what the user should do.
    """

    status = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.SPEC_INVALID

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        text = f"{field}: {problem}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


class NotFoundError(DppError):
    """An unknown session, split, epoch or worker; ``reason`` says which."""

    status = grpc.StatusCode.NOT_FOUND
    reason = Reason.SESSION_NOT_FOUND

    def __init__(self, message: str, reason: Reason = Reason.SESSION_NOT_FOUND) -> None:
        super().__init__(message)
        self.reason = reason


class ConflictError(DppError):
    """A session name reused with another spec."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.SESSION_CONFLICT


class InvalidArgumentError(DppError):
    """A request field no request may have (over a limit of :mod:`dpp_proto.limits`).

    Attributes:
        field: the request field, e.g. ``session_name``; the message starts with it.
    """

    status = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.SPEC_INVALID

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class UnavailableError(DppError):
    """The service cannot take the request now (e.g. its journal cannot be written); retry
    later."""

    status = grpc.StatusCode.UNAVAILABLE
    reason = Reason.UNAVAILABLE


class OutOfRangeError(DppError):
    """A request beyond the end of a sequence (e.g. an epoch past the session's last)."""

    status = grpc.StatusCode.OUT_OF_RANGE
    reason = Reason.OUT_OF_RANGE


class LimitError(DppError):
    """A request exceeds one of the server's limits.

    Attributes:
        limit: the limit's name as the operator sets it (a ``MasterConfig`` field, e.g.
            ``max_sessions``), sent as ``dpp-error-field`` so the client can name it.
    """

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.LIMIT_EXCEEDED

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(f"{limit}: {message}")
        self.limit = limit


@dataclasses.dataclass(frozen=True)
class GrpcError:
    """What a caller sees of an error: status code, message, reason and the field at fault."""

    code: grpc.StatusCode
    message: str
    reason: Reason
    field: str = ""

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """The ``dpp-error-*`` entries (:mod:`dpp_proto.reasons`)."""
        entries = [(REASON_KEY, self.reason.value)]
        if self.field:
            # Text metadata must be ASCII; field paths and limit names are, but be safe.
            entries.append((FIELD_KEY, self.field.encode("ascii", "backslashreplace").decode()))
        return tuple(entries)


# Storage errors come from a package that knows nothing of gRPC: mapped here, most specific
# class first.
_STORAGE: tuple[tuple[type[StorageError], grpc.StatusCode, Reason], ...] = (
    (TableNotFoundError, grpc.StatusCode.NOT_FOUND, Reason.TABLE_NOT_FOUND),
    (FilterError, grpc.StatusCode.INVALID_ARGUMENT, Reason.SPEC_INVALID),
    (TableUriError, grpc.StatusCode.INVALID_ARGUMENT, Reason.SPEC_INVALID),
    (TableLayoutError, grpc.StatusCode.FAILED_PRECONDITION, Reason.TABLE_LAYOUT),
    (CorruptFileError, grpc.StatusCode.FAILED_PRECONDITION, Reason.FILE_UNREADABLE),
    (SplitChangedError, grpc.StatusCode.FAILED_PRECONDITION, Reason.TABLE_CHANGED),
    (RowGroupTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.LIMIT_EXCEEDED),
    (StorageError, grpc.StatusCode.FAILED_PRECONDITION, Reason.STORAGE_FAILED),
)


def grpc_error_of(exc: BaseException) -> GrpcError:
    """Maps any exception to the status, message, reason and field a caller should see.

    Anything unexpected is INTERNAL: a bug, never the user's fault.
    """
    if isinstance(exc, DppError):
        field = getattr(exc, "field", "") or getattr(exc, "limit", "")
        return GrpcError(exc.status, str(exc), exc.reason, field)
    for cls, code, reason in _STORAGE:
        if isinstance(exc, cls):
            return GrpcError(code, str(exc), reason, getattr(exc, "field", ""))
    return GrpcError(
        grpc.StatusCode.INTERNAL,
        f"internal error ({type(exc).__name__}): {exc}",
        Reason.INTERNAL,
    )


class StatsError(DppError):
    """Bad statistics input (``dpp stats``, ``dpp shard-plan``): a malformed or mismatched
    sketch payload, a batch without a feature's column, a report without a feature asked for,
    an option out of range."""

    status = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.SPEC_INVALID


class CapacityError(StatsError):
    """A shard plan cannot place the embedding tables in the memory given.

    Attributes:
        table: the table that did not fit.
        shortfall_gb: how many more GB (10**9 bytes) it needed.
    """

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.LIMIT_EXCEEDED

    def __init__(self, message: str, table: str, shortfall_gb: float) -> None:
        super().__init__(message)
        self.table = table
        self.shortfall_gb = shortfall_gb


class UnauthenticatedError(DppError):
    """A call without credentials, or with a token the server does not know."""

    status = grpc.StatusCode.UNAUTHENTICATED
    reason = Reason.UNAUTHENTICATED


class PermissionDeniedError(DppError):
    """An authenticated caller lacks the role, the tenant or the data-access rule a call needs
    (the message names what is needed, never what exists)."""

    status = grpc.StatusCode.PERMISSION_DENIED
    reason = Reason.PERMISSION_DENIED


def grpc_status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message of :func:`grpc_error_of` (for callers that need no more)."""
    error = grpc_error_of(exc)
    return error.code, error.message
