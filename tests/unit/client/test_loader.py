"""DppLoader's trainer-side logic against a fake master stub: no sockets, no processes.

Frames are put straight into the loader's queue, as its stream threads would.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import torch
from client_frames import encode_frame, header, make_rows

from dpp_client import DppLoader, Feature, SessionSpec, SpecRejectedError, WorkerDataError
from dpp_client.errors import DppClientError
from dpp_client.loader import _Failure, _WorkerStream
from dpp_proto import master_pb2
from tests.helpers.rpc import FakeRpcError

pytestmark = pytest.mark.filterwarnings("ignore:The given buffer is not writable:UserWarning")

SPEC = SessionSpec(
    table_uri="/t",
    features=(Feature("dense_0", "dense"), Feature("s", "sparse")),
    label="label",
    batch_size=4,
    epochs=2,
)


class FakeMaster:
    """Answers the client's master RPCs from canned data, recording the requests."""

    def __init__(self, splits: list[str], epochs: int = 2) -> None:
        self.splits = splits
        self.epochs = epochs
        self.requests: list[Any] = []
        self.create_error: grpc.RpcError | None = None
        self.unavailable_then_ok = 0

    def CreateSession(self, req: Any, timeout: float) -> master_pb2.CreateSessionResponse:
        self.requests.append(req)
        if self.unavailable_then_ok:
            self.unavailable_then_ok -= 1
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "restarting")
        if self.create_error is not None:
            raise self.create_error
        return master_pb2.CreateSessionResponse(session_id="s1")

    def BeginEpoch(self, req: Any, timeout: float) -> master_pb2.BeginEpochResponse:
        self.requests.append(req)
        if req.epoch >= self.epochs:
            raise FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "epoch 2 >= epochs 2")
        return master_pb2.BeginEpochResponse(split_ids=self.splits, epochs=self.epochs)

    def ListWorkers(self, req: Any, timeout: float) -> master_pb2.ListWorkersResponse:
        return master_pb2.ListWorkersResponse()

    def AckBatches(self, req: Any, timeout: float) -> master_pb2.AckBatchesResponse:
        self.requests.append(req)
        return master_pb2.AckBatchesResponse()


def make_loader(master: FakeMaster, **kwargs: Any) -> DppLoader:
    loader = DppLoader("unused:1", SPEC, worker_refresh_s=0.01, rpc_timeout_s=5.0, **kwargs)
    loader._master = master  # type: ignore[assignment]
    return loader


def feed(loader: DppLoader, *frames: bytes) -> None:
    ws = _WorkerStream("w1", "unused:2")
    for frame in frames:
        assert loader._forward(frame, ws)


def rows(n: int, start: int) -> Any:
    return make_rows(n, dense_dim=1, sparse_names=("s",), row_id_start=start, seed=start)


def test_two_epochs_then_empty() -> None:
    master = FakeMaster(["A", "B"])
    with make_loader(master, session_name="job") as loader:
        it = iter(loader)
        assert loader.session_id == "s1" and loader.epoch == 0
        feed(
            loader,
            encode_frame(header("A", 0), rows(4, 0)),
            encode_frame(header("A", 1, last=True), rows(3, 4)),
            encode_frame(header("A", 0), rows(4, 0)),  # duplicate
            encode_frame(header("B", 0, last=True), rows(2, 7)),
            encode_frame(header("A", 0, epoch=1, last=True), rows(4, 100)),  # early
        )
        got = [b.extras["row_id"].tolist() for b in it]
        assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
        feed(loader, encode_frame(header("B", 0, epoch=1, last=True), None))
        got = [b.extras["row_id"].tolist() for b in loader]
        assert got == [[100, 101, 102, 103]]
        assert list(loader) == []
        stats = loader.stats
        assert stats.batches == 4 and stats.rows == 13
        assert stats.bytes_received > 0 and stats.decode_s > 0
        assert stats.wall_s >= stats.stall_s > 0
        assert 0 < stats.stall_share <= 1
    create = master.requests[0]
    assert create.session_name == "job" and create.spec.batch_size == 4
    assert [r.epoch for r in master.requests if isinstance(r, master_pb2.BeginEpochRequest)] == [
        0,
        1,
        2,
    ]
    assert loader._refresher is not None and not loader._refresher.is_alive()


def test_full_batches_are_converted_off_the_trainer_thread() -> None:
    master = FakeMaster(["A"])
    with make_loader(master) as loader:
        it = iter(loader)
        feed(loader, encode_frame(header("A", 0, last=True), rows(4, 0)))
        item = loader._queue.get_nowait()
        assert not isinstance(item, _Failure) and item.prepared is not None
        loader._queue.put(item)
        batch = next(it)
        assert batch is item.prepared
        assert batch.dense.dtype == torch.float32 and batch.dense.shape == (4, 1)


def test_drop_last() -> None:
    master = FakeMaster(["A"])
    with make_loader(master, drop_last=True) as loader:
        it = iter(loader)
        feed(loader, encode_frame(header("A", 0, last=True), rows(3, 0)))
        assert list(it) == []


def test_error_frame_raises_in_the_trainer_thread() -> None:
    master = FakeMaster(["A"])
    with make_loader(master) as loader:
        it = iter(loader)
        feed(loader, encode_frame(header("A", 0, error="corrupt parquet page"), None))
        with pytest.raises(WorkerDataError, match="corrupt parquet page"):
            next(it)


def test_background_failure_reraises() -> None:
    master = FakeMaster(["A"])
    with make_loader(master) as loader:
        it = iter(loader)
        loader._fail(DppClientError("stream broke"))
        with pytest.raises(DppClientError, match="stream broke"):
            next(it)


def test_spec_rejection_surfaces_with_the_field() -> None:
    master = FakeMaster(["A"])
    master.create_error = FakeRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, "features[1].kind: unsupported"
    )
    with make_loader(master) as loader, pytest.raises(SpecRejectedError) as info:
        iter(loader)
    assert info.value.field == "features[1].kind"


def test_unavailable_master_is_retried() -> None:
    master = FakeMaster(["A"])
    master.unavailable_then_ok = 2
    with make_loader(master) as loader:
        iter(loader)
        assert loader.session_id == "s1"


def test_stale_epoch_iterator_ends() -> None:
    master = FakeMaster(["A"])
    with make_loader(master) as loader:
        first = iter(loader)
        feed(loader, encode_frame(header("A", 0, epoch=1, last=True), rows(4, 0)))
        second = iter(loader)
        assert list(first) == []
        assert [b.num_rows for b in second] == [4]


def test_closed_loader_refuses_to_iterate() -> None:
    loader = make_loader(FakeMaster([]))
    loader.close()
    with pytest.raises(DppClientError, match="closed"):
        iter(loader)


def test_rank_outside_world_size() -> None:
    with pytest.raises(ValueError, match=r"rank 1 outside \[0, world_size=1\)"):
        DppLoader("x:1", SPEC, rank=1)


def test_spec_as_mapping() -> None:
    loader = DppLoader("x:1", SPEC.to_dict())
    assert loader.spec == SPEC
