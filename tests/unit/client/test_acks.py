"""The acknowledger against a fake master link: what it sends, when, and the equal-batches
verdict it derives from the answers. No sockets, no sleeps."""

from __future__ import annotations

import pytest
from fakes import FakeMasterLink

from dpp_client.acks import Acknowledger, Verdict
from dpp_client.assembler import Consumption
from dpp_client.errors import DppUnavailableError
from dpp_client.metrics import LoaderStats
from dpp_proto import master_pb2

STATS = LoaderStats(batches=3, rows=12, bytes_received=100, stall_s=0.5, decode_s=0.1, wall_s=2)


def make(
    link: FakeMasterLink, world_size: int = 1, interval_s: float | None = 3600.0
) -> Acknowledger:
    acks = Acknowledger(link, "s1", 1, world_size, interval_s, lambda: STATS)
    acks.begin_epoch(3, 0)
    return acks


def test_flush_sends_what_was_consumed() -> None:
    link = FakeMasterLink([])
    acks = make(link)
    acks.consumed({"A": Consumption(2, 0, False), "B": Consumption(1, 0, True)})
    acks.received(5, False)
    acks.flush()
    request = link.acks.get_nowait()
    assert (request.session_id, request.rank, request.epoch) == ("s1", 1, 3)
    assert [(a.split_id, a.batches_consumed, a.done) for a in request.acks] == [
        ("A", 2, False),
        ("B", 1, True),
    ]
    assert request.batches_received == 5 and not request.received_all
    assert request.client_stats.rows == 12
    acks.flush()  # nothing new: a single rank sends nothing
    assert link.acks.empty()


def test_failed_send_keeps_the_acks_for_the_next_try() -> None:
    link = FakeMasterLink([])
    link.ack_failures = 1
    acks = make(link)
    acks.consumed({"A": Consumption(2, 0, False)})
    with pytest.raises(DppUnavailableError):
        acks.flush()
    acks.consumed({"B": Consumption(1, 0, False)})
    acks.flush()
    request = link.acks.get_nowait()
    assert sorted((a.split_id, a.batches_consumed) for a in request.acks) == [("A", 2), ("B", 1)]


def test_thread_sends_reproduce_requests_at_once() -> None:
    link = FakeMasterLink([])
    acks = make(link)  # an hour between ticks: only the wake-up can send
    acks.start("dpp-ack-test")
    try:
        acks.ask_reproduce(["B", "A"])
        request = link.acks.get(timeout=10)
        assert list(request.reproduce) == ["A", "B"]
    finally:
        acks.stop()
        assert acks.join(10) is None


def test_equal_batches_verdict_follows_the_masters_limit() -> None:
    link = FakeMasterLink([])
    acks = make(link, world_size=2)
    assert acks.verdict(0, all_received=False) is Verdict.WAIT  # no limit known yet
    link.ack_response = master_pb2.AckBatchesResponse(batch_limit=2, limit_final=False)
    acks.flush()  # with 2 ranks an ack goes every time, to learn the limit
    assert acks.verdict(1, all_received=False) is Verdict.YIELD
    assert acks.verdict(2, all_received=True) is Verdict.WAIT
    link.ack_response = master_pb2.AckBatchesResponse(batch_limit=2, limit_final=True)
    acks.flush()
    assert acks.verdict(2, all_received=False) is Verdict.WAIT
    assert acks.verdict(2, all_received=True) is Verdict.SURPLUS


def test_a_new_epoch_drops_the_old_limit_and_pending() -> None:
    link = FakeMasterLink([])
    link.ack_response = master_pb2.AckBatchesResponse(batch_limit=5, limit_final=True)
    acks = make(link, world_size=2)
    acks.flush()
    acks.consumed({"A": Consumption(2, 0, False)})
    acks.begin_epoch(4, 0)
    assert acks.verdict(0, all_received=True) is Verdict.WAIT
    link.acks.get_nowait()
    acks.flush()
    assert list(link.acks.get_nowait().acks) == []


def test_acknowledgements_off() -> None:
    link = FakeMasterLink([])
    acks = make(link, interval_s=None)
    acks.start("dpp-ack-test")
    acks.consumed({"A": Consumption(2, 0, False)})
    acks.flush()
    assert link.acks.empty() and acks.join(1) is None
