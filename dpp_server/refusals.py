"""Refused requests on the master: counted by RPC and kind, logged once per kind.

A shared master meets bad requests all day: a client of another version, a fuzzer, a trainer
acknowledging a session that expired. Each used to cost a log line (a traceback for a request
that did not decode: 2,000 fuzzed payloads left 19,500 traceback lines) and told an operator
nothing a count would not. Here every refused MasterService call is counted by (rpc, kind),
where kind is the error's reason (``dpp_proto.reasons.Reason``), or ``undecodable`` for bytes
that are not the RPC's message; the first of each (rpc, kind) is logged with its message, the
rest only counted (``dpp_master_requests_refused_total{rpc,kind}``, :mod:`dpp_server.metrics`).
Both labels come from fixed sets (the service's methods, the reasons), never from the client.

Owns :class:`Refusals` (the counts) and :class:`RefusalInterceptor` (the gRPC hook that feeds
them, and answers undecodable requests with INVALID_ARGUMENT naming the message type instead of
gRPC's INTERNAL "Exception deserializing request!" and its traceback). Thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc

from dpp_proto.reasons import REASON_KEY
from dpp_server.errors import InvalidArgumentError, grpc_error_of

logger = logging.getLogger(__name__)

_METHOD_PREFIX = "/dpp.v1.MasterService/"
UNDECODABLE = "undecodable"


class Refusals:
    """Refused calls by (rpc, kind). Thread-safe: ``_lock`` guards ``_counts``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def note(self, rpc: str, kind: str, message: str) -> None:
        """Counts one refusal; logs it if it is the first of its (rpc, kind)."""
        with self._lock:
            count = self._counts.get((rpc, kind), 0) + 1
            self._counts[(rpc, kind)] = count
        if count == 1:
            logger.warning(
                "%s refused (%s): %s [logged once; further %s refusals of %s are counted in "
                "dpp_master_requests_refused_total]",
                rpc,
                kind,
                message[:500],
                kind,
                rpc,
            )

    def first(self, rpc: str, kind: str) -> bool:
        """Whether (rpc, kind) has not been noted yet (to log a traceback only once)."""
        with self._lock:
            return (rpc, kind) not in self._counts

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


class _Undecodable:
    """What the wrapped deserializer returns for bytes that are not the RPC's message. The
    auth check (:mod:`dpp_server.auth`) sees ``undecodable`` and checks only who calls: the
    handler refuses the request before it touches any session."""

    undecodable = True

    def __init__(self, error: str) -> None:
        self.error = error


class RefusalInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every MasterService call that ends in an error status, and refuses undecodable
    requests with INVALID_ARGUMENT. Thread-safe: it only calls :class:`Refusals`."""

    def __init__(self, refusals: Refusals) -> None:
        self.refusals = refusals

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(_METHOD_PREFIX):
            return handler
        rpc = method.removeprefix(_METHOD_PREFIX)
        inner = handler.unary_unary
        parse = handler.request_deserializer
        refusals = self.refusals

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data) if parse is not None else data
            except Exception as exc:
                return _Undecodable(f"{type(exc).__name__}: {exc}")

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                error = grpc_error_of(
                    InvalidArgumentError(
                        "request",
                        f"the {rpc} request is not a valid protobuf "
                        f"message ({request.error}); is the client of another dpp version?",
                    )
                )
                refusals.note(rpc, UNDECODABLE, error.message)
                context.set_trailing_metadata(error.trailing_metadata())
                context.abort(error.code, error.message)
            try:
                return inner(request, context)
            except Exception:
                # The status the handler aborted with (grpcio's server context has code() and
                # details(); the typing stubs lack them).
                code = getattr(context, "code", lambda: None)()
                if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK:
                    reasons = [v for k, v in context.trailing_metadata() or () if k == REASON_KEY]
                    kind = str(reasons[0]) if reasons else code.name
                    details = getattr(context, "details", lambda: b"")()
                    text = details.decode("utf-8", "replace") if details else ""
                    refusals.note(rpc, kind, text)
                raise

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
