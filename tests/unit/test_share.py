"""Shared production across jobs (spec ``share``): the worker's share window (readers, FIFO
bound, single flight), the master's share groups (the common cursor, not grouping other specs,
never starving a worker), and byte-identical frames whether a split was produced or shared."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from dpp_server.master import LeaseGrant, Master, MasterConfig
from dpp_server.produce import SessionPipeline, StageTotals, produce_split
from dpp_server.share import ShareClaim, ShareWindow
from dpp_server.spec import spec_from_proto
from storage import Table
from tests.helpers.server import make_spec


def _chunks(rows: int) -> tuple[pa.RecordBatch, ...]:
    return (pa.record_batch({"x": pa.array(range(rows), pa.int64())}),)


def _counting() -> tuple[dict[str, int], ShareWindow]:
    counts: dict[str, int] = {}
    window = ShareWindow(1 << 20, lambda k, n: counts.__setitem__(k, counts.get(k, 0) + n))
    return counts, window


def test_an_entry_serves_its_readers_then_goes() -> None:
    counts, window = _counting()
    claim = window.claim("a", readers=2, wait_s=0)
    assert isinstance(claim, ShareClaim)
    chunks = _chunks(100)
    claim.publish(chunks, 800, readers=2)
    assert window.claim("a", readers=1, wait_s=0) == chunks  # B reads: 1 more expected
    assert window.claim("a", readers=0, wait_s=0) == chunks  # C reads: none more
    assert window.stats() == (0, 0)
    assert isinstance(window.claim("a", readers=0, wait_s=0), ShareClaim)  # gone: produce
    assert (counts["share_hits"], counts["share_misses"]) == (2, 2)


def test_a_read_takes_the_lease_count_so_a_later_epoch_keeps_the_entry() -> None:
    _, window = _counting()
    claim = window.claim("a", readers=1, wait_s=0)
    assert isinstance(claim, ShareClaim)
    claim.publish(_chunks(10), 80, readers=1)
    # The producer's own next epoch reads it; the master says B is still expected: kept.
    assert not isinstance(window.claim("a", readers=1, wait_s=0), ShareClaim)
    assert not isinstance(window.claim("a", readers=0, wait_s=0), ShareClaim)  # B
    assert window.stats() == (0, 0)


def test_the_window_evicts_the_oldest_beyond_its_bytes_and_keeps_no_oversized_split() -> None:
    counts: dict[str, int] = {}
    window = ShareWindow(1000, lambda k, n: counts.__setitem__(k, counts.get(k, 0) + n))
    for key in ("a", "b", "c"):
        claim = window.claim(key, readers=1, wait_s=0)
        assert isinstance(claim, ShareClaim)
        claim.publish(_chunks(10), 400, readers=1)
    assert window.stats() == (2, 800)
    assert isinstance(window.claim("a", readers=0, wait_s=0), ShareClaim)  # evicted: produce
    assert not isinstance(window.claim("b", readers=0, wait_s=0), ShareClaim)
    assert counts["share_evictions"] == 1
    big = window.claim("big", readers=3, wait_s=0)
    assert isinstance(big, ShareClaim)
    big.publish(_chunks(10), 5000, readers=3)
    assert window.stats() == (1, 400)  # only c: the oversized split was not kept


def test_single_flight_waits_for_the_producer_and_gives_up_after_the_bound() -> None:
    _, window = _counting()
    claim = window.claim("a", readers=1, wait_s=0)
    assert isinstance(claim, ShareClaim)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(window.claim("a", 0, wait_s=10)))
    waiter.start()
    time.sleep(0.2)
    chunks = _chunks(5)
    claim.publish(chunks, 40, readers=1)
    waiter.join(10)
    assert got == [chunks]  # read the producer's split instead of producing it again
    slow = window.claim("b", readers=1, wait_s=0)
    assert isinstance(slow, ShareClaim)
    started = time.monotonic()
    second = window.claim("b", readers=1, wait_s=0.3)  # the producer is slow: give up
    assert isinstance(second, ShareClaim) and time.monotonic() - started < 5
    slow.abort()
    second.abort()


def _pipeline(uri: str, window: ShareWindow | None, **extra: object) -> SessionPipeline:
    spec = spec_from_proto(make_spec(uri, share=True, **extra))
    return SessionPipeline.compile(spec, read_batch_rows=700, share=window)


def test_shared_frames_equal_produced_ones_for_another_batch_size_and_shuffle(
    small_table: str,
) -> None:
    counts, window = _counting()
    split = Table.open(small_table).plan_splits(4000).splits[1]
    lease = LeaseGrant("a", 0, 0, split, 0, share_readers=1)
    a = _pipeline(small_table, window)
    b = _pipeline(small_table, window, batch_size=300, shuffle=True, seed=7)
    frames_a = list(produce_split(a, lease, StageTotals()))
    frames_b = list(produce_split(b, LeaseGrant("b", 1, 0, split, 2), StageTotals()))
    assert (counts["share_misses"], counts["share_hits"]) == (1, 1)  # produced once
    plain_a = list(produce_split(_pipeline(small_table, None), lease, StageTotals()))
    plain_b = _pipeline(small_table, None, batch_size=300, shuffle=True, seed=7)
    assert frames_a == plain_a
    assert frames_b == list(produce_split(plain_b, LeaseGrant("b", 1, 0, split, 2), StageTotals()))


@pytest.fixture
def master() -> Master:
    return Master(MasterConfig(lease_timeout_s=60.0))


def _session(master: Master, uri: str, **extra: object) -> str:
    view, _ = master.create_session(make_spec(uri, **extra))
    master.begin_epoch(view.session_id, 0, 0)
    return view.session_id


def _lease_for(master: Master, worker: str, session_id: str) -> LeaseGrant:
    """The next lease the worker gets for ``session_id`` (other streams marked full)."""
    others = [(s, 0) for s in master.session_ids() if s != session_id]
    grant = master.acquire_split(worker, skip=others)
    assert grant is not None and grant.session_id == session_id
    return grant


def test_members_follow_each_other_through_the_worker_that_produced(
    master: Master, small_table: str
) -> None:
    """A and B share (B with another seed, shuffle and batch size: one output digest): each
    split the worker produced for one is leased next for the other on that worker, whatever
    B's own order; a second worker takes a split nobody produced yet."""
    a = _session(master, small_table, share=True)
    b = _session(master, small_table, share=True, shuffle=True, seed=5, batch_size=300)
    w1 = master.register_worker("127.0.0.1:1", 1)
    w2 = master.register_worker("127.0.0.1:2", 1)
    first = _lease_for(master, w1, a)
    assert first.share_readers == 1  # B is expected to read it on w1
    other = _lease_for(master, w2, b)  # not a's split: w1 serves that one to B
    assert other.split.split_id != first.split.split_id and other.share_readers == 1
    follow = _lease_for(master, w1, b)
    assert (follow.split.split_id, follow.share_readers) == (first.split.split_id, 0)
    follow = _lease_for(master, w2, a)
    assert (follow.split.split_id, follow.share_readers) == (other.split.split_id, 0)


def test_another_spec_or_no_share_is_not_grouped(master: Master, small_table: str) -> None:
    a = _session(master, small_table, share=True)
    other_rows = _session(master, small_table, share=True, row_filter="label = 1")
    plain = _session(master, small_table)
    worker = master.register_worker("127.0.0.1:1", 1)
    assert _lease_for(master, worker, a).share_readers == 0
    assert master._share.members(a) == frozenset({a})
    assert master._share.members(other_rows) == frozenset({other_rows})
    assert master._share.members(plain) == frozenset()
    assert _lease_for(master, worker, plain).share_readers == 0


def test_a_worker_is_never_starved_by_splits_another_worker_serves(
    master: Master, small_table: str
) -> None:
    """B's every split was produced on w1 for A: w2, asking, defers to no other stream (there
    is none) and takes B's splits anyway, in B's order."""
    _session(master, small_table, share=True)
    b = _session(master, small_table, share=True)
    w1 = master.register_worker("127.0.0.1:1", 1)
    w2 = master.register_worker("127.0.0.1:2", 1)
    produced = []
    while (grant := master.acquire_split(w1, skip=[(b, 0)])) is not None:
        produced.append(grant.split.split_id)
    taken = []
    while (grant := master.acquire_split(w2)) is not None:
        taken.append(grant.split.split_id)
    assert taken == produced  # every split of B, none left pending


def test_members_with_equal_batching_share_the_encoded_frames(small_table: str) -> None:
    """B (same batch size and order as A) gets A's frames readdressed to its own session,
    epoch and rank, byte-identical to encoding them for B, resuming mid-split too; no split
    is produced or batched a second time."""
    counts, window = _counting()
    split = Table.open(small_table).plan_splits(4000).splits[0]
    a = _pipeline(small_table, window, shuffle=True, seed=3)
    b = _pipeline(small_table, window, shuffle=True, seed=3, epochs=4)  # epochs: not in frames
    lease_a = LeaseGrant("s-aaaaaaaaaaaa", 1, 0, split, 0, share_readers=2)
    lease_b = LeaseGrant("s-bbbbbbbbbbbb", 1, 0, split, 0, share_readers=1)
    lease_c = LeaseGrant("s-cccccccccccc", 1, 0, split, 2, share_readers=0)
    frames_a = list(produce_split(a, lease_a, StageTotals()))
    totals = StageTotals()
    frames_b = list(produce_split(b, lease_b, totals))
    frames_c = list(produce_split(b, lease_c, StageTotals()))
    assert totals.counts["rows_read"] == 0 and totals.seconds["transform_s"] == 0
    plain = _pipeline(small_table, None, shuffle=True, seed=3)
    assert frames_a == list(produce_split(plain, lease_a, StageTotals()))
    assert frames_b == list(produce_split(plain, lease_b, StageTotals()))
    assert frames_c == list(produce_split(plain, lease_c, StageTotals()))
    assert frames_b != frames_a and len(frames_b) > 3
    assert counts["share_misses"] == 1 and counts["share_hits"] == 2
    assert window.stats() == (0, 0)  # the last reader (C) dropped both entries
