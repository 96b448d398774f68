"""The stream fan-in against fake workers and a fake master link: streams opened, re-dialled
and dropped as the worker list changes; frames and errors handed over in order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from client_frames import encode_frame, header, make_rows
from fakes import FakeMasterLink, FakeWorkers

from dpp_client.batch import batch_from_arrow
from dpp_client.errors import DppClientError, SessionNotFoundError
from dpp_client.fan_in import FanIn, Frame
from dpp_client.metrics import LoaderCounters
from dpp_proto import master_pb2
from tests.helpers.rpc import FakeRpcError

pytestmark = pytest.mark.filterwarnings("ignore:The given buffer is not writable:UserWarning")


def worker(address: str) -> master_pb2.WorkerInfo:
    return master_pb2.WorkerInfo(worker_id=f"w-{address}", address=address)


@pytest.fixture
def workers() -> FakeWorkers:
    return FakeWorkers()


@pytest.fixture
def fan_in(workers: FakeWorkers) -> Iterator[FanIn]:
    fan_in = FanIn(
        session_id="s1",
        rank=2,
        batch_size=4,
        prefetch_batches=4,
        to_batch=batch_from_arrow,
        counters=LoaderCounters(),
        dial=workers,
    )
    yield fan_in
    fan_in.stop()
    assert fan_in.join(10) == []


def frame(split: str, seq: int, n: int) -> bytes:
    rows = make_rows(n, dense_dim=1, sparse_names=("s",), row_id_start=seq * 4, seed=seq)
    return encode_frame(header(split, seq), rows)


def get(fan_in: FanIn) -> Frame:
    got = fan_in.get(10)
    assert got is not None
    return got


def test_streams_each_listed_worker(fan_in: FanIn, workers: FakeWorkers) -> None:
    fan_in.sync([worker("a:1"), worker("b:1")])
    workers.feed("a:1", frame("A", 0, 4))
    got = get(fan_in)
    assert got.header.split_id == "A" and got.prepared is not None  # whole: converted
    workers.feed("b:1", frame("B", 0, 3))
    got = get(fan_in)
    assert got.header.split_id == "B" and got.prepared is None  # partial: converted later
    assert {a for a, _ in workers.dials} == {"a:1", "b:1"}
    assert all((r.session_id, r.rank) == ("s1", 2) for _, r in workers.dials)
    assert fan_in.open_streams == 2


def test_refresher_dials_new_workers_and_drops_gone_ones(
    fan_in: FanIn, workers: FakeWorkers
) -> None:
    link = FakeMasterLink([], workers=("a:1",))
    fan_in.sync(link.list_workers())
    fan_in.start_refresh(link.list_workers, 0.001)
    workers.wait_dials("a:1", 1)
    link.set_workers("a:1", "b:1")
    workers.wait_dials("b:1", 1)
    link.set_workers("b:1")
    assert workers.streams["a:1"][0].cancelled.wait(10)
    workers.feed("b:1", frame("B", 0, 4))
    assert get(fan_in).header.split_id == "B"


def test_broken_stream_is_redialled(fan_in: FanIn, workers: FakeWorkers) -> None:
    fan_in.sync([worker("a:1")])
    workers.feed("a:1", frame("A", 0, 4), FakeRpcError(grpc.StatusCode.UNAVAILABLE, "gone"))
    assert get(fan_in).header.batch_seq == 0
    workers.wait_dials("a:1", 2)
    workers.feed("a:1", frame("A", 1, 4))
    assert get(fan_in).header.batch_seq == 1


def test_stream_error_is_raised_in_the_consumer(fan_in: FanIn, workers: FakeWorkers) -> None:
    fan_in.sync([worker("a:1")])
    workers.feed("a:1", frame("A", 0, 4), FakeRpcError(grpc.StatusCode.NOT_FOUND, "no s1"))
    assert get(fan_in).header.batch_seq == 0  # frames queued before the error come first
    with pytest.raises(SessionNotFoundError, match=r"StreamBatches\(session s1, rank 2\).*a:1"):
        fan_in.get(10)


def test_refresher_failure_is_raised_in_the_consumer(fan_in: FanIn) -> None:
    link = FakeMasterLink([])
    link.list_error = DppClientError("ListWorkers at master fake failed: boom")
    fan_in.start_refresh(link.list_workers, 0.001)
    with pytest.raises(DppClientError, match="boom"):
        fan_in.get(10)


def test_get_times_out_empty(fan_in: FanIn, workers: Any) -> None:
    assert fan_in.get(0.001) is None


def test_data_address_preferred_and_grpc_where_a_worker_lists_none(workers: FakeWorkers) -> None:
    grpc_dials = FakeWorkers()
    fan_in = FanIn(
        session_id="s1",
        rank=0,
        batch_size=4,
        prefetch_batches=4,
        to_batch=batch_from_arrow,
        counters=LoaderCounters(),
        dial=grpc_dials,
        data_dial=workers,
    )
    try:
        with_data = master_pb2.WorkerInfo(worker_id="w-a", address="a:1", data_address="a:2")
        fan_in.sync([with_data, worker("b:1")])
        workers.feed("a:2", frame("A", 0, 4))
        grpc_dials.feed("b:1", frame("B", 0, 4))
        assert {get(fan_in).header.split_id for _ in range(2)} == {"A", "B"}
        assert {a for a, _ in workers.dials} == {"a:2"}
        assert {a for a, _ in grpc_dials.dials} == {"b:1"}
    finally:
        fan_in.stop()
        assert fan_in.join(10) == []
