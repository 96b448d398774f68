"""Domain exceptions of the dpp server, and their one mapping to gRPC status codes.

Owns: every exception the master and workers raise on purpose. Logic modules raise these;
``*_service.py`` modules turn them into gRPC statuses with :func:`grpc_status_of` and nothing
else. Must never import grpc at module level beyond the status enum: the mapping is data.

Messages say what was tried (with ids), what went wrong, and what to do about it.
"""

from __future__ import annotations

import grpc

from storage.errors import FilterError, StorageError, TableNotFoundError


class DppError(Exception):
    """Base of every deliberate dpp server error."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL


class SpecError(DppError):
    """A session spec is invalid.

    Attributes:
        field: path of the offending field, e.g. ``features[3].ops[1].boundaries``.
        problem: what is wrong with it.
        fix: what the user should do.
    """

    status = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        text = f"{field}: {problem}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


class NotFoundError(DppError):
    """An unknown session, worker or table."""

    status = grpc.StatusCode.NOT_FOUND


class ConflictError(DppError):
    """A request conflicts with existing state (e.g. a session name reused with another spec)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRangeError(DppError):
    """A request beyond the end of a sequence (e.g. an epoch past the session's last)."""

    status = grpc.StatusCode.OUT_OF_RANGE


class UnauthenticatedError(DppError):
    """A call without credentials, or with a token the server does not know."""

    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(DppError):
    """An authenticated caller lacks the role, the tenant or the data-access rule a call needs
    (the message names what is needed, never what exists)."""

    status = grpc.StatusCode.PERMISSION_DENIED


def grpc_status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Maps any exception to the gRPC status code and message a caller should see.

    Storage errors come from the ``storage`` package, which knows nothing of gRPC, so they
    are mapped here too. Anything unexpected is INTERNAL: a bug, never the user's fault.
    """
    if isinstance(exc, DppError):
        return exc.status, str(exc)
    if isinstance(exc, TableNotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, FilterError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, StorageError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}): {exc}"
