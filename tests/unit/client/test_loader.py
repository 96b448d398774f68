"""DppLoader's trainer-side logic against a fake master link and fake workers: no sockets,
no processes, no sleeps.

Frames reach the loader through its real fan-in, from fake worker streams the tests feed.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import grpc
import pytest
import torch
from client_frames import encode_frame, header, make_rows
from fakes import FakeMasterLink, FakeWorkers

import dpp_client.loader
from dpp_client import DppLoader, Feature, SessionSpec, SpecRejectedError, WorkerDataError
from dpp_client.batch import Batch
from dpp_client.errors import DppClientError
from dpp_client.loader import StallWatchdog
from dpp_client.master_link import GrpcMasterLink
from dpp_proto import master_pb2
from dpp_proto.wire import FrameEncoder, WireOptions
from tests.helpers.rpc import FakeRpcError

pytestmark = pytest.mark.filterwarnings("ignore:The given buffer is not writable:UserWarning")

SPEC = SessionSpec(
    table_uri="/t",
    features=(Feature("dense_0", "dense"), Feature("s", "sparse")),
    label="label",
    batch_size=4,
    epochs=2,
)
WORKER = "fake-worker:1"


def make_loader(master: Any, workers: FakeWorkers | None = None, **kwargs: Any) -> DppLoader:
    return DppLoader(
        "unused:1",
        SPEC,
        worker_refresh_s=0.01,
        rpc_timeout_s=5.0,
        master_link=master,
        dial_worker=workers or FakeWorkers(),
        **kwargs,
    )


def fake_master(splits: list[str]) -> FakeMasterLink:
    return FakeMasterLink(splits, workers=(WORKER,))


def rows(n: int, start: int) -> Any:
    return make_rows(n, dense_dim=1, sparse_names=("s",), row_id_start=start, seed=start)


def test_two_epochs_then_empty() -> None:
    master, workers = fake_master(["A", "B"]), FakeWorkers()
    with make_loader(master, workers, session_name="job") as loader:
        it = iter(loader)
        assert loader.session_id == "s1" and loader.epoch == 0
        workers.feed(
            WORKER,
            encode_frame(header("A", 0), rows(4, 0)),
            encode_frame(header("A", 1, last=True), rows(3, 4)),
            encode_frame(header("A", 0), rows(4, 0)),  # duplicate
            encode_frame(header("B", 0, last=True), rows(2, 7)),
            encode_frame(header("A", 0, epoch=1, last=True), rows(4, 100)),  # early
        )
        got = [b.extras["row_id"].tolist() for b in it]
        assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
        workers.feed(WORKER, encode_frame(header("B", 0, epoch=1, last=True), None))
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
    # close() joined every thread of the loader (refresher, stream, acknowledger).
    assert [t.name for t in threading.enumerate() if t.name.startswith("dpp-")] == []


def test_full_batches_are_converted_off_the_trainer_thread(monkeypatch: Any) -> None:
    converted: list[tuple[threading.Thread, Batch]] = []

    def recording_batch_from_arrow(rb: Any, **kwargs: Any) -> Batch:
        batch = original(rb, **kwargs)
        converted.append((threading.current_thread(), batch))
        return batch

    original = dpp_client.loader.batch_from_arrow
    monkeypatch.setattr(dpp_client.loader, "batch_from_arrow", recording_batch_from_arrow)
    master, workers = fake_master(["A"]), FakeWorkers()
    with make_loader(master, workers) as loader:
        it = iter(loader)
        workers.feed(WORKER, encode_frame(header("A", 0, last=True), rows(4, 0)))
        batch = next(it)
        [(thread, prepared)] = converted
        assert thread is not threading.current_thread() and thread.name.startswith("dpp-stream")
        assert batch is prepared
        assert batch.dense.dtype == torch.float32 and batch.dense.shape == (4, 1)


@pytest.mark.parametrize("int64_ids", [False, True])
def test_ids_stay_int32_unless_int64_ids(int64_ids: bool) -> None:
    rb = rows(4, 0)
    h = header("A", 0, last=True, num_rows=4)
    frame = FrameEncoder(WireOptions(int32_features=frozenset({"s"}))).encode(h, rb)
    master, workers = fake_master(["A"]), FakeWorkers()
    with make_loader(master, workers, int64_ids=int64_ids) as loader:
        it = iter(loader)
        workers.feed(WORKER, frame)
        batch = next(it)
        want = torch.int64 if int64_ids else torch.int32
        assert batch.sparse["s"].values.dtype == want and batch.sparse["s"].offsets.dtype == want
        assert batch.sparse["s"].values.tolist() == rb.column("sparse.s").flatten().to_pylist()


def test_drop_last() -> None:
    master, workers = fake_master(["A"]), FakeWorkers()
    with make_loader(master, workers, drop_last=True) as loader:
        it = iter(loader)
        workers.feed(WORKER, encode_frame(header("A", 0, last=True), rows(3, 0)))
        assert list(it) == []


def test_error_frame_raises_in_the_trainer_thread() -> None:
    master, workers = fake_master(["A"]), FakeWorkers()
    with make_loader(master, workers) as loader:
        it = iter(loader)
        workers.feed(WORKER, encode_frame(header("A", 0, error="corrupt parquet page"), None))
        with pytest.raises(WorkerDataError, match="corrupt parquet page"):
            next(it)


def test_background_failure_reraises() -> None:
    master, workers = fake_master(["A"]), FakeWorkers()
    with make_loader(master, workers) as loader:
        it = iter(loader)
        workers.feed(WORKER, DppClientError("stream broke"))
        with pytest.raises(DppClientError, match="stream broke"):
            next(it)


class RejectingStub:
    """A master stub whose CreateSession fails as the real master rejects a spec."""

    def CreateSession(self, req: Any, timeout: float, wait_for_ready: bool) -> Any:
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "features[1].kind: unsupported")


def test_spec_rejection_surfaces_with_the_field() -> None:
    master = GrpcMasterLink("unused:1", 5.0, stub=RejectingStub())  # type: ignore[arg-type]
    with make_loader(master, validate=False) as loader, pytest.raises(SpecRejectedError) as info:
        iter(loader)
    assert info.value.field == "features[1].kind"


def test_a_bad_spec_fails_in_the_constructor() -> None:
    """The line that built the loader fails, not the first iter()."""
    master = GrpcMasterLink("unused:1", 5.0, stub=RejectingStub())  # type: ignore[arg-type]
    with pytest.raises(SpecRejectedError) as info:
        make_loader(master)
    assert info.value.field == "features[1].kind"


def test_validate_runs_once_at_construction_and_creates_nothing() -> None:
    master = fake_master(["A"])
    with make_loader(master) as loader:
        assert master.validated == [loader.spec]
        assert master.requests == []  # no CreateSession, no BeginEpoch
    master = fake_master(["A"])
    with make_loader(master, validate=False) as loader:
        assert master.validated == []
        loader.validate()
        assert master.validated == [loader.spec]


def test_len_is_the_batches_of_an_epoch_from_the_plan() -> None:
    master = fake_master(["A"])
    master.plan = master_pb2.SessionPlan(num_rows=10, num_splits=1)  # SPEC: batch_size 4
    with make_loader(master) as loader:
        assert loader.plan is None
        assert len(loader) == 3  # 4 + 4 + 2
        assert loader.plan is not None and loader.plan.num_rows == 10
    with make_loader(master, drop_last=True) as loader:
        assert len(loader) == 2


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("row_filter", "label = 1", "a row_filter drops rows only workers see"),
        ("sample_rate", 0.5, "sampling drops rows"),
        ("world_size", 2, "ranks share splits by rows"),
    ],
)
def test_len_says_when_it_is_unknown(field: str, value: object, why: str) -> None:
    fields = {"sample_key": "row_id"} if field == "sample_rate" else {}
    spec = dataclasses.replace(SPEC, **{field: value}, **fields)
    loader = DppLoader("unused:1", spec, master_link=fake_master(["A"]), dial_worker=FakeWorkers())
    with loader, pytest.raises(TypeError, match=why):
        len(loader)


# test_unavailable_master_is_retried moved to tests/integration/test_master_link_retry.py: the retry
# is now the gRPC channel's own, so it is tested over a real channel.


def test_stale_epoch_iterator_ends() -> None:
    master, workers = fake_master(["A"]), FakeWorkers()
    with make_loader(master, workers) as loader:
        first = iter(loader)
        workers.feed(WORKER, encode_frame(header("A", 0, epoch=1, last=True), rows(4, 0)))
        second = iter(loader)
        assert list(first) == []
        assert [b.num_rows for b in second] == [4]


def test_closed_loader_refuses_to_iterate() -> None:
    master = fake_master([])
    loader = make_loader(master)
    loader.close()
    assert master.closed.is_set()
    with pytest.raises(DppClientError, match="closed"):
        iter(loader)


def test_rank_outside_world_size() -> None:
    with pytest.raises(ValueError, match=r"rank 1 outside \[0, world_size=1\)"):
        DppLoader("x:1", SPEC, rank=1)


def test_spec_as_mapping() -> None:
    loader = DppLoader("x:1", SPEC.to_dict(), validate=False)
    assert loader.spec == SPEC


def test_stall_watchdog_reproduces_and_warns_on_time() -> None:
    watchdog = StallWatchdog(reproduce_after_s=3.0, warn_every_s=10.0, now=0.0)
    assert watchdog.idle(2.9) == (False, False)
    assert watchdog.idle(3.0) == (True, False)
    assert watchdog.idle(5.9) == (False, False)  # asked 2.9 s ago
    assert watchdog.idle(6.0) == (True, False)
    assert watchdog.idle(10.0) == (True, True)
    watchdog.progress(10.5)
    assert watchdog.idle(13.0) == (False, False)  # quiet for 2.5 s only
    assert watchdog.idle(13.5) == (True, False)


def test_transport_auto_by_default_grpc_on_request_and_a_typo_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DPP_TRANSPORT", raising=False)
    assert DppLoader("x:1", SPEC, validate=False).transport == "auto"
    assert DppLoader("x:1", SPEC, validate=False, transport="grpc").transport == "grpc"
    monkeypatch.setenv("DPP_TRANSPORT", "grpc")
    assert DppLoader("x:1", SPEC, validate=False).transport == "grpc"
    with pytest.raises(ValueError, match=r"transport 'tcp' \(from the argument\)"):
        DppLoader("x:1", SPEC, validate=False, transport="tcp")
