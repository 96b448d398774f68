"""GrpcMasterLink over a fake stub: what each RPC's failure becomes. (Its retrying is the
gRPC channel's: tests/integration/test_master_link_retry.py checks it over a real channel.)"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from dpp_client.errors import DppUnavailableError, SessionNotFoundError
from dpp_client.master_link import GrpcMasterLink
from dpp_proto import master_pb2
from tests.helpers.rpc import FakeRpcError


class FailingStub:
    """Every RPC fails with ``code``; records the call options."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, method: str) -> Any:
        def call(request: Any, **options: Any) -> Any:
            self.calls.append({"method": method, **options})
            raise FakeRpcError(self.code, f"{method} says {self.code.name}")

        return call


def link(code: grpc.StatusCode) -> tuple[GrpcMasterLink, FailingStub]:
    stub = FailingStub(code)
    return GrpcMasterLink("m:1", 7.0, stub=stub), stub  # type: ignore[arg-type]


def test_every_call_waits_for_the_master_within_the_deadline() -> None:
    master, stub = link(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(DppUnavailableError, match=r"ListWorkers at master m:1 failed"):
        master.list_workers()
    assert stub.calls == [{"method": "ListWorkers", "timeout": 7.0, "wait_for_ready": True}]


def test_past_the_last_epoch_is_none() -> None:
    master, _ = link(grpc.StatusCode.OUT_OF_RANGE)
    assert master.begin_epoch(master_pb2.BeginEpochRequest(session_id="s", epoch=2)) is None


def test_unknown_session() -> None:
    master, _ = link(grpc.StatusCode.NOT_FOUND)
    assert not master.session_exists("s9")
    with pytest.raises(SessionNotFoundError, match=r"BeginEpoch\(session s9, rank 0, epoch 1\)"):
        master.begin_epoch(master_pb2.BeginEpochRequest(session_id="s9", epoch=1))


def test_ack_failure_is_mapped() -> None:
    master, _ = link(grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(DppUnavailableError, match="AckBatches at master m:1"):
        master.ack_batches(master_pb2.AckBatchesRequest())
