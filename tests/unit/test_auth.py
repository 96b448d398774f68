"""The auth core without sockets: token files, the guard's rules, the data-access policy and
the sealed journal (the same checks run over real servers in tests/integration/test_security.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpp_proto import spec_pb2
from dpp_proto.auth import bearer_token, token_sha256
from dpp_server import state
from dpp_server.auth import INSECURE, RULES, Guard, Identity, Role, TokenFile
from dpp_server.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError
from dpp_server.policy import DataPolicy, PolicySettings
from dpp_server.secret_store import REDACTED, SealedJournal, SecretBox, redact_spec
from dpp_server.spec import spec_from_proto
from tests.helpers.server import make_spec

M = "/dpp.v1.MasterService/"


def _tokens(tmp_path: Path, lines: list[str]) -> TokenFile:
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(lines) + "\n")
    return TokenFile(path, recheck_s=0.0)


def test_token_file_maps_hashes_to_identities_and_reloads(tmp_path: Path) -> None:
    tokens = _tokens(tmp_path, [f"{token_sha256('a-token')} trainer,admin alice ads # note"])
    assert tokens.identify("a-token") == Identity(
        "alice", frozenset({Role.TRAINER, Role.ADMIN}), "ads"
    )
    assert tokens.identify("other") is None
    # Rotation: a new line, the old one removed; picked up without a restart.
    path = tokens.path
    path.write_text(f"{token_sha256('b-token')} worker workers\n")
    os.utime(path, ns=(1, 10**18))
    assert tokens.identify("a-token") is None
    assert tokens.identify("b-token") == Identity("workers", frozenset({Role.WORKER}))


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("abc trainer alice ads", "64 hex digits"),
        (f"{'0' * 64} root alice ads", "unknown role"),
        (f"{'0' * 64} trainer alice", "needs a tenant"),
        (f"{'0' * 64} trainer", "expected 'SHA256 ROLES NAME [TENANT]'"),
    ],
)
def test_token_file_errors_name_the_line(line: str, problem: str) -> None:
    with pytest.raises(ValueError, match="line 2") as info:
        TokenFile.parse("# header\n" + line)
    assert problem in str(info.value)


def test_bearer_header() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("Authorization", b"bearer  xyz ")]) == "xyz"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token(None) is None


class _Req:
    def __init__(self, session_id: str = "", worker_id: str = "") -> None:
        self.session_id = session_id
        self.worker_id = worker_id


def _guard(tmp_path: Path) -> Guard:
    owners = {"s-a": "ads", "s-b": "search"}

    def tenant(session_id: str) -> str:
        if session_id not in owners:
            raise NotFoundError(f"session {session_id!r} does not exist")
        return owners[session_id]

    tokens = _tokens(
        tmp_path,
        [
            f"{token_sha256('t-ads')} trainer alice ads",
            f"{token_sha256('w-1')} worker w1",
            f"{token_sha256('w-2')} worker w2",
            f"{token_sha256('adm')} admin ops",
        ],
    )
    return Guard(tokens, session_tenant=tenant)


def test_guard_checks_role_tenant_and_worker_ownership(tmp_path: Path) -> None:
    guard = _guard(tmp_path)
    with pytest.raises(UnauthenticatedError, match="no token was sent"):
        guard.check(M + "BeginEpoch", None, _Req("s-a"))
    with pytest.raises(UnauthenticatedError, match="not valid here"):
        guard.check(M + "BeginEpoch", "nope", _Req("s-a"))
    assert guard.check(M + "BeginEpoch", "t-ads", _Req("s-a")).name == "alice"
    with pytest.raises(PermissionDeniedError, match="belongs to another tenant") as info:
        guard.check(M + "BeginEpoch", "t-ads", _Req("s-b"))
    assert "search" not in str(info.value)  # never names the other tenant
    with pytest.raises(NotFoundError):
        guard.check(M + "BeginEpoch", "t-ads", _Req("s-unknown"))
    with pytest.raises(PermissionDeniedError, match="needs role worker"):
        guard.check(M + "RegisterWorker", "t-ads", _Req())
    identity = guard.check(M + "RegisterWorker", "w-1", _Req())
    guard.bind_worker("w-0001", identity)
    guard.check(M + "Heartbeat", "w-1", _Req(worker_id="w-0001"))
    with pytest.raises(PermissionDeniedError, match="registered by another identity"):
        guard.check(M + "AcquireSplit", "w-2", _Req(worker_id="w-0001"))
    guard.check(M + "UnregisterWorker", "adm", _Req(worker_id="w-0001"))  # admins drop any
    guard.check(M + "GetSession", "w-2", _Req("s-b"))  # workers read every tenant's session
    with pytest.raises(PermissionDeniedError, match="no access rule"):
        guard.check("/dpp.v1.MasterService/Unknown", "adm", _Req())


def test_insecure_guard_admits_everyone() -> None:
    guard = Guard(None, insecure=True, session_tenant=lambda s: "")
    for method in RULES:
        assert guard.check(method, None, _Req("s", "w")) is INSECURE


def _spec(table: str, **fields: object) -> spec_pb2.SessionSpec:
    return make_spec(table, **fields)


def test_policy_prefixes_per_tenant_resolve_links_and_dots(tmp_path: Path) -> None:
    allowed = tmp_path / "tables"
    allowed.mkdir()
    (allowed / "link").symlink_to("/etc")
    policy = DataPolicy(
        PolicySettings(allow_table=f"ads={allowed},s3://shared/warehouse/", allow_endpoint="")
    )
    policy.check_spec(spec_from_proto(_spec(str(allowed / "t"))), "ads")
    policy.check_spec(spec_from_proto(_spec("s3://shared/warehouse/t")), "search")
    for uri, tenant in [
        (str(allowed / "t"), "search"),  # another tenant's prefix
        (str(allowed / ".." / "secrets"), "ads"),
        (str(allowed / "link"), "ads"),
        (f"{allowed}-sibling/t", "ads"),  # a prefix is a folder, not a string prefix
        ("s3://shared/warehouse/../private/t", "ads"),
        ("http://shared/warehouse/t", "ads"),
        ("s3://shared/warehouse/t?endpoint_override=evil:1", "ads"),
    ]:
        with pytest.raises(PermissionDeniedError, match="table_uri") as info:
            policy.check_spec(spec_from_proto(_spec(uri)), tenant)
        assert "exist" not in str(info.value)


def test_policy_endpoints_and_open_default() -> None:
    policy = DataPolicy(
        PolicySettings(allow_table="s3://b/", allow_endpoint="ads=http://minio:9000")
    )
    ok = _spec("s3://b/t")
    ok.storage_options.update({"endpoint_url": "http://minio:9000", "key": "k", "secret": "s"})
    policy.check_spec(spec_from_proto(ok), "ads")
    with pytest.raises(PermissionDeniedError, match=r"storage_options\.endpoint_url"):
        policy.check_spec(spec_from_proto(ok), "search")
    closed = DataPolicy(PolicySettings())
    with pytest.raises(PermissionDeniedError, match="may read under nothing"):
        closed.check_spec(spec_from_proto(_spec("/tmp/t")), "ads")
    DataPolicy(PolicySettings(), open_by_default=True).check_spec(
        spec_from_proto(_spec("/etc")), ""
    )


def test_redact_and_sealed_journal_round_trip(tmp_path: Path) -> None:
    spec = _spec("/t")
    spec.storage_options.update({"key": "AKIA", "secret": "s3cr3t"})
    shown = spec_pb2.SessionSpec()
    shown.CopyFrom(spec)
    redact_spec(shown)
    assert dict(shown.storage_options) == {"key": REDACTED, "secret": REDACTED}

    inner = state.MemoryJournal()
    box = SecretBox(tmp_path / "journal.key")
    assert (tmp_path / "journal.key").stat().st_mode & 0o777 == 0o600
    spec_bytes = spec.SerializeToString(deterministic=True)
    update = state.SessionCreated(
        "s-1", "", spec_bytes, (), state.PlanSummary(0, 0, 0, 0, 0, 0.0), "ads"
    )
    SealedJournal(inner, box).append(update)
    stored = next(inner.replay())
    assert isinstance(stored, state.SessionCreated)
    assert b"s3cr3t" not in stored.spec_bytes and b"AKIA" not in stored.spec_bytes
    assert list(SealedJournal(inner, box).replay()) == [update]
    with pytest.raises(ValueError, match="sealed with another key"):
        list(SealedJournal(inner, SecretBox(tmp_path / "other.key")).replay())
