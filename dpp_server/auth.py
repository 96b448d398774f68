"""Who may call what: tokens -> identities, the role table, tenant ownership, one check.

Owns the server side of authentication and authorization, independent of the transport:

* :class:`TokenFile`: hashed tokens -> :class:`Identity` (name, roles, tenant), compared in
  constant time, re-read when the file changes (rotation without a restart);
* :data:`RULES`: each RPC's roles and scope (a session's tenant, a worker's own id), and
  :class:`Guard`, the one check (:meth:`Guard.check`) every adapter calls;
* the adapters: :class:`AuthInterceptor` for every gRPC server (master, monitor, worker data
  plane), and :func:`flight_auth_middleware` for an Arrow Flight server, should the data
  plane move there: both read the same ``authorization: Bearer`` header and call the same
  ``Guard.check`` with the same method names;
* server TLS credentials (:func:`server_credentials`) and the processes' settings
  (:class:`SecuritySettings`, turned into ``dpp master/worker`` flags by :mod:`dpp_server.cli`).

Must never import dpp_client or torch; knows grpc only in the interceptor and credentials.

A call, worked example (a trainer of tenant ``ads`` acknowledges batches of session s-1 that
tenant ``search`` created):

    1. The interceptor reads ``authorization: Bearer <token>``; :meth:`TokenFile.identify`
       hashes it and compares it with every stored hash (``hmac.compare_digest``): identity
       ``alice``, roles {trainer}, tenant ``ads``. No header: UNAUTHENTICATED; an unknown
       token: UNAUTHENTICATED.
    2. :data:`RULES` for ``/dpp.v1.MasterService/AckBatches``: roles {trainer}, scope session.
       Alice has the role.
    3. Scope session: the master says s-1 belongs to ``search`` (journaled when s-1 was
       created, from the creator's identity, never from the request), not ``ads``:
       PERMISSION_DENIED naming what is needed, and the handler never runs.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc

from dpp_proto.auth import Connection, bearer_token, token_sha256
from dpp_server.errors import (
    DppError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    grpc_error_of,
)

logger = logging.getLogger(__name__)


class Role(enum.StrEnum):
    """What an identity may do (:data:`RULES` lists each RPC's roles)."""

    #: create and join its tenant's sessions, stream and acknowledge only them
    TRAINER = "trainer"
    #: register, heartbeat, lease and report, only for its own worker id
    WORKER = "worker"
    #: scale, drop workers, read the cluster's status and any session's (redacted) spec
    ADMIN = "admin"


@dataclasses.dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    name: str
    roles: frozenset[Role]
    tenant: str = ""

    def describe(self) -> str:
        roles = ",".join(sorted(self.roles)) or "none"
        tenant = f", tenant {self.tenant!r}" if self.tenant else ""
        return f"identity {self.name!r} (role {roles}{tenant})"


#: Everyone, on a server started with ``--insecure``: every role, the empty tenant.
INSECURE = Identity("insecure", frozenset(Role), "")


class Scope(enum.Enum):
    """What, beyond a role, a call must own."""

    NONE = "none"
    #: the request's ``session_id`` belongs to the caller's tenant (trainers; workers and
    #: admins serve every tenant)
    SESSION = "session"
    #: the request's ``worker_id`` was registered by the caller (workers; admins any)
    WORKER = "worker"


@dataclasses.dataclass(frozen=True)
class Rule:
    roles: frozenset[Role]
    scope: Scope = Scope.NONE


def _rule(*roles: Role, scope: Scope = Scope.NONE) -> Rule:
    return Rule(frozenset(roles), scope)


_M = "/dpp.v1.MasterService/"
T, W, A = Role.TRAINER, Role.WORKER, Role.ADMIN
#: Every RPC of every dpp service, by its gRPC method path. A method missing here is refused
#: (fail closed): a new RPC needs a line.
RULES: Mapping[str, Rule] = {
    _M + "CreateSession": _rule(T),
    _M + "GetSession": _rule(T, W, A, scope=Scope.SESSION),
    _M + "BeginEpoch": _rule(T, scope=Scope.SESSION),
    _M + "AckBatches": _rule(T, scope=Scope.SESSION),
    _M + "ListWorkers": _rule(T, A),
    _M + "RegisterWorker": _rule(W),
    _M + "Heartbeat": _rule(W, scope=Scope.WORKER),
    _M + "AcquireSplit": _rule(W, scope=Scope.WORKER),
    _M + "ReportSplitProgress": _rule(W, scope=Scope.WORKER),
    _M + "UnregisterWorker": _rule(W, A, scope=Scope.WORKER),
    # dpp stats (issue 17): the session's owner reads its report; a worker hands in sketches
    # only for a lease it holds (the master checks the lease, as for ReportSplitProgress).
    _M + "GetStatsReport": _rule(T, scope=Scope.SESSION),
    _M + "ReportSplitStats": _rule(W, scope=Scope.WORKER),
    "/dpp.v1.MonitorService/GetClusterStatus": _rule(A),
    "/dpp.v1.MonitorService/SetWorkerTarget": _rule(A),
    "/dpp.v1.WorkerService/StreamBatches": _rule(T, scope=Scope.SESSION),
}
#: Open to anyone: the standard health service (Kubernetes probes carry no token); it
#: reveals only SERVING / NOT_SERVING.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def short_name(method: str) -> str:
    """``/dpp.v1.MasterService/CreateSession`` -> ``MasterService.CreateSession``."""
    service, _, name = method.strip("/").rpartition("/")
    return f"{service.rpartition('.')[2]}.{name}"


# -- token files --------------------------------------------------------------------------


class TokenFile:
    """Hashed tokens -> identities, from a file an operator edits; re-read when it changes.

    One identity per line (``#`` starts a comment)::

        # sha256 of the token (hex)                                      roles         name  tenant
        9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 trainer,admin alice ads

    ``dpp token`` issues a token and prints its line. Only hashes are stored: the file is
    not a secret, though it should still be writable by the operator alone.

    Thread-safe: ``_lock`` guards the parsed entries and the file's last seen mtime.
    """

    def __init__(self, path: str | os.PathLike[str], recheck_s: float = 1.0) -> None:
        self.path = Path(path)
        self._recheck_s = recheck_s
        self._lock = threading.Lock()
        self._entries: tuple[tuple[bytes, Identity], ...] = ()
        self._mtime_ns = -1
        self._checked = 0.0
        self._load()

    @staticmethod
    def parse(text: str, where: str = "token file") -> tuple[tuple[bytes, Identity], ...]:
        """The (hash, identity) entries of a token file's text.

        Raises:
            ValueError: a malformed line (the message names the line and what is wrong).
        """
        entries = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) not in (3, 4):
                raise ValueError(
                    f"{where} line {number}: expected 'SHA256 ROLES NAME [TENANT]', "
                    f"got {len(parts)} field(s)"
                )
            digest, roles_text, name = parts[:3]
            tenant = parts[3] if len(parts) == 4 else ""
            try:
                raw_digest = bytes.fromhex(digest)
            except ValueError:
                raw_digest = b""
            if len(raw_digest) != 32:
                raise ValueError(f"{where} line {number}: the hash is not 64 hex digits")
            try:
                roles = frozenset(Role(r) for r in roles_text.split(","))
            except ValueError:
                raise ValueError(
                    f"{where} line {number}: unknown role in {roles_text!r}; roles are "
                    f"{', '.join(r.value for r in Role)}"
                ) from None
            if Role.TRAINER in roles and not tenant:
                raise ValueError(f"{where} line {number}: a trainer identity needs a tenant")
            entries.append((raw_digest, Identity(name, roles, tenant)))
        return tuple(entries)

    def _load(self) -> None:
        stat = self.path.stat()
        entries = self.parse(self.path.read_text(), f"token file {str(self.path)!r}")
        self._entries, self._mtime_ns = entries, stat.st_mtime_ns
        logger.info("token file %s: %d identities", self.path, len(entries))

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._recheck_s:
            return
        self._checked = now
        try:
            if self.path.stat().st_mtime_ns != self._mtime_ns:
                self._load()
        except (OSError, ValueError) as exc:  # keep serving with the identities we have
            logger.error("token file %s not reloaded: %s", self.path, exc)

    def identify(self, token: str) -> Identity | None:
        """The identity of a token, or None. Compares the token's hash with every entry in
        constant time each, so the time taken says nothing about which hash is close."""
        digest = bytes.fromhex(token_sha256(token))
        with self._lock:
            self._maybe_reload()
            entries = self._entries
        found = None
        for stored, identity in entries:
            if hmac.compare_digest(stored, digest):
                found = identity
        return found


# -- the check ------------------------------------------------------------------------------


class Guard:
    """Authenticates a token and authorizes one call: the only place that says yes or no.

    Thread-safe: ``_lock`` guards ``_workers`` (worker id -> the identity name that registered
    it); the token file and ``session_tenant`` are thread-safe themselves.

    Args:
        tokens: the token file; None with ``insecure``.
        insecure: everyone is :data:`INSECURE` (a trusted lab; logged loudly by the caller).
        session_tenant: the tenant owning a session (raises ``NotFoundError`` for an unknown
            one): the master's ledger, or on a worker the master's answer.
    """

    def __init__(
        self,
        tokens: TokenFile | None,
        *,
        insecure: bool = False,
        session_tenant: Callable[[str], str],
    ) -> None:
        if tokens is None and not insecure:
            raise ValueError("a secured server needs a token file")
        self.tokens = tokens
        self.insecure = insecure
        self._session_tenant = session_tenant
        self._lock = threading.Lock()
        self._workers: dict[str, str] = {}

    def authenticate(self, method: str, token: str | None) -> Identity:
        """The caller's identity.

        Raises:
            UnauthenticatedError: no token, or one the token file does not hold.
        """
        if self.insecure:
            return INSECURE
        rule = RULES.get(method)
        needs = ", ".join(sorted(rule.roles)) if rule else "a known"
        what = short_name(method)
        if not token:
            raise UnauthenticatedError(
                f"{what} needs credentials: no token was sent; connect with a connection file "
                f"holding a token of role {needs} (DppLoader(connection=...), $DPP_CONNECTION, "
                "or --connection; see docs/security.md)"
            )
        assert self.tokens is not None  # checked in __init__
        identity = self.tokens.identify(token)
        if identity is None:
            raise UnauthenticatedError(
                f"{what}: the token sent is not valid here (mistyped, revoked or for another "
                f"cluster); ask the operator for a token of role {needs}"
            )
        return identity

    def authorize(self, method: str, identity: Identity, request: object) -> None:
        """Checks the rule of ``method`` for ``identity`` on ``request`` (its ``session_id``
        and ``worker_id`` fields, where it has them).

        Raises:
            PermissionDeniedError: a missing role, another tenant's session, another
                worker's id, or a method without a rule.
            NotFoundError: an unknown session (the same answer the handler would give).
        """
        what = short_name(method)
        rule = RULES.get(method)
        if rule is None:
            raise PermissionDeniedError(f"{what}: no access rule; refused")
        if not identity.roles & rule.roles:
            raise PermissionDeniedError(
                f"{what} needs role {' or '.join(sorted(rule.roles))}; {identity.describe()} "
                "lacks it"
            )
        if getattr(request, "undecodable", False):
            # Bytes that are no message (dpp_server/refusals.py): refused with INVALID_ARGUMENT
            # by the next interceptor before any session or worker is touched.
            return
        if (
            rule.scope is Scope.SESSION
            and Role.TRAINER in identity.roles
            and not (identity.roles & {Role.WORKER, Role.ADMIN} & rule.roles)
        ):
            session_id = str(getattr(request, "session_id", ""))
            if self._session_tenant(session_id) != identity.tenant:
                raise PermissionDeniedError(
                    f"{what}: session {session_id} belongs to another tenant; "
                    f"{identity.describe()} may use only sessions of tenant "
                    f"{identity.tenant!r}"
                )
        if rule.scope is Scope.WORKER and Role.ADMIN not in (identity.roles & rule.roles):
            worker_id = str(getattr(request, "worker_id", ""))
            with self._lock:
                # Unknown ids (a master restarted from its journal) go to their first caller.
                owner = self._workers.setdefault(worker_id, identity.name)
            if owner != identity.name:
                raise PermissionDeniedError(
                    f"{what}: worker {worker_id} was registered by another identity; "
                    f"{identity.describe()} may act only for the workers it registered"
                )

    def check(self, method: str, token: str | None, request: object) -> Identity:
        """:meth:`authenticate` then :meth:`authorize`: what every adapter calls."""
        identity = self.authenticate(method, token)
        self.authorize(method, identity, request)
        return identity

    def bind_worker(self, worker_id: str, identity: Identity) -> None:
        """Records that ``identity`` registered ``worker_id`` (after RegisterWorker)."""
        with self._lock:
            self._workers[worker_id] = identity.name


# -- the gRPC adapter ----------------------------------------------------------------------

_IDENTITY: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "dpp_identity", default=None
)


def current_identity() -> Identity:
    """The identity of the unary call this thread is serving (set by :class:`AuthInterceptor`).

    Raises:
        UnauthenticatedError: outside a call that passed the interceptor.
    """
    identity = _IDENTITY.get()
    if identity is None:
        raise UnauthenticatedError("no authenticated caller for this call")
    return identity


_REGISTER = _M + "RegisterWorker"


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Runs :meth:`Guard.check` before every handler of the server it is installed on (the
    first interceptor, so metrics never see an unauthenticated request). Thread-safe: the
    guard is; the identity is handed to the handler through a context variable."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        guard = self.guard

        def admit(request: Any, context: grpc.ServicerContext) -> Identity:
            try:
                return guard.check(method, token, request)
            except DppError as exc:
                error = grpc_error_of(exc)
                context.set_trailing_metadata(error.trailing_metadata())
                context.abort(error.code, error.message)
            except grpc.RpcError as exc:  # a worker asking its master whose session this is
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{short_name(method)}: could not ask the master who owns the session "
                    f"({exc}); retry",
                )

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                identity = admit(request, context)
                reset = _IDENTITY.set(identity)
                try:
                    response = inner(request, context)
                finally:
                    _IDENTITY.reset(reset)
                worker_id = str(getattr(response, "worker_id", ""))
                if method == _REGISTER and worker_id:
                    guard.bind_worker(worker_id, identity)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                admit(request, context)
                yield from inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method}: no access rule")

        return grpc.stream_stream_rpc_method_handler(refuse)


# -- the Arrow Flight adapter (for a data plane on Flight) ------------------------------------


#: The key a Flight server registers :func:`flight_auth_middleware` under.
FLIGHT_MIDDLEWARE_KEY = "dpp-auth"
FLIGHT_STREAM_METHOD = "/dpp.v1.WorkerService/StreamBatches"


def flight_auth_middleware(guard: Guard) -> Any:
    """The same check for an Arrow Flight server, should the data plane move there.

    Returns a ``pyarrow.flight.ServerMiddlewareFactory`` (register it as
    ``middleware={FLIGHT_MIDDLEWARE_KEY: factory}``): ``start_call`` authenticates the
    ``authorization: Bearer`` header (a bad or missing token: ``FlightUnauthenticatedError``,
    Flight's UNAUTHENTICATED), and the server's ``do_get`` calls ``factory.authorize(context,
    request)`` with its decoded ticket (a StreamBatchesRequest: session and rank), checked
    under the same method name and rule as the gRPC ``StreamBatches``
    (``FlightUnauthorizedError``: PERMISSION_DENIED). Imports Flight only when called.
    """
    import pyarrow.flight as flight

    class Middleware(flight.ServerMiddleware):  # type: ignore[misc]
        def __init__(self, identity: Identity) -> None:
            self.identity = identity

    class Factory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
        def start_call(self, info: Any, headers: dict[str, list[str]]) -> Middleware:
            pairs = [(k, v) for k, values in headers.items() for v in values]
            try:
                identity = guard.authenticate(FLIGHT_STREAM_METHOD, bearer_token(pairs))
            except UnauthenticatedError as exc:
                raise flight.FlightUnauthenticatedError(str(exc)) from None
            return Middleware(identity)

        @staticmethod
        def authorize(context: Any, request: object) -> Identity:
            """For ``do_get``: the caller's identity, checked against the ticket."""
            identity: Identity = context.get_middleware(FLIGHT_MIDDLEWARE_KEY).identity
            try:
                guard.authorize(FLIGHT_STREAM_METHOD, identity, request)
            except PermissionDeniedError as exc:
                raise flight.FlightUnauthorizedError(str(exc)) from None
            except NotFoundError as exc:
                raise flight.FlightServerError(str(exc)) from None
            return identity

    return Factory()


# -- TLS and settings ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SecuritySettings:
    """Transport security and authentication: TLS and tokens unless --insecure.

    Attributes:
        insecure: no TLS and no tokens: anyone who reaches the port may do anything. For a
            trusted lab only; logged as a warning and shown by `dpp top`. Never the default.
        tls_cert: this process's certificate chain (PEM); also its client certificate
            towards the master (mTLS).
        tls_key: the private key of --tls-cert (PEM).
        tls_ca: the cluster's CA certificate (PEM): verifies the master's certificate, and
            this server then requires every caller to present a certificate it signed (mTLS).
            Empty: servers are verified against the system's roots, no client certificates.
        token_file: hashed tokens (one 'SHA256 ROLES NAME [TENANT]' per line; `dpp token`
            issues them): who may call this server. Re-read when it changes.
        auth_token_file: (worker) the file holding this worker's own token (role worker),
            presented to the master.
    """

    insecure: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    token_file: str = ""
    auth_token_file: str = ""

    def check(self, role: str) -> None:
        """Refuses an incomplete secure setup (``role``: master or worker).

        Raises:
            ValueError: what is missing and how to get it.
        """
        if self.insecure:
            return
        missing = [
            flag
            for flag, value in (
                ("--tls-cert", self.tls_cert),
                ("--tls-key", self.tls_key),
                ("--token-file", self.token_file),
                *((("--auth-token-file", self.auth_token_file),) if role == "worker" else ()),
            )
            if not value
        ]
        if missing:
            raise ValueError(
                f"dpp {role} is secured by default and needs {', '.join(missing)} (see "
                "docs/security.md; `dpp up` makes them itself, `dpp certs` makes a set), or "
                "--insecure for a trusted lab"
            )


def warn_insecure(role: str, address: str) -> None:
    """The loud line every --insecure process logs at start."""
    logger.warning(
        "INSECURE: dpp %s at %s runs with --insecure: no TLS, no authentication; anyone who "
        "can reach the port can read every session's data and control the cluster",
        role,
        address,
    )


def server_credentials(settings: SecuritySettings) -> grpc.ServerCredentials | None:
    """TLS credentials of a server (None when insecure); with ``tls_ca`` clients must present
    a certificate signed by it (mTLS)."""
    if settings.insecure:
        return None
    key = Path(settings.tls_key).read_bytes()
    cert = Path(settings.tls_cert).read_bytes()
    ca = Path(settings.tls_ca).read_bytes() if settings.tls_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def bind(server: grpc.Server, address: str, settings: SecuritySettings) -> int:
    """Binds ``server`` to ``address`` with TLS, or plaintext when insecure; the port."""
    credentials = server_credentials(settings)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


def client_connection(settings: SecuritySettings, address: str) -> Connection | None:
    """How a worker dials its master with these settings: the cluster CA, its certificate as
    the client certificate (mTLS) and its own token; None when insecure."""
    if settings.insecure:
        return None
    return Connection(
        address=address,
        ca_pem=Path(settings.tls_ca).read_bytes() if settings.tls_ca else b"",
        cert_pem=Path(settings.tls_cert).read_bytes() if settings.tls_ca else b"",
        key_pem=Path(settings.tls_key).read_bytes() if settings.tls_ca else b"",
        token=Path(settings.auth_token_file).read_text().strip(),
    )


class TenantCache:
    """Session -> owning tenant, as the master answered: a session's owner never changes, so
    answers are kept (the oldest dropped past ``max_entries``). Thread-safe (``_lock`` guards
    ``_owners``); a lookup runs outside the lock."""

    def __init__(self, lookup: Callable[[str], str], max_entries: int = 4096) -> None:
        self._lookup = lookup
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}

    def __call__(self, session_id: str) -> str:
        with self._lock:
            owner = self._owners.get(session_id)
        if owner is not None:
            return owner
        owner = self._lookup(session_id)
        with self._lock:
            self._owners[session_id] = owner
            while len(self._owners) > self._max_entries:
                del self._owners[next(iter(self._owners))]
        return owner


def guard_of(settings: SecuritySettings, session_tenant: Callable[[str], str]) -> Guard:
    """The guard of a server with these settings."""
    tokens = None if settings.insecure else TokenFile(settings.token_file)
    return Guard(tokens, insecure=settings.insecure, session_tenant=session_tenant)
