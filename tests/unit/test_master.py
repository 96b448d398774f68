"""The master's logic without any transport: planning, epochs, leases, expiry, joining."""

from __future__ import annotations

import pytest

from dpp_server import state
from dpp_server.cache import output_digest
from dpp_server.errors import ConflictError, NotFoundError, OutOfRangeError, SpecError
from dpp_server.master import Master, MasterConfig
from dpp_server.records import StageSeconds, WorkerCounters
from storage import TableNotFoundError
from tests.helpers.server import make_spec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def master(clock: FakeClock) -> Master:
    return Master(MasterConfig(lease_timeout_s=5.0), clock=clock)


def test_create_session_plans_every_row(master: Master, small_table: str) -> None:
    view, joined = master.create_session(make_spec(small_table))
    assert not joined
    # 24k rows, 4 files of 3 row groups (2k rows); toward 4k rows: runs of 2 + 1 row groups.
    assert view.plan.num_rows == 24_000
    assert view.plan.num_files == 4
    assert view.plan.num_splits == 8
    assert view.spec.batch_size == 1000


def test_partition_filter_prunes_before_planning(master: Master, small_table: str) -> None:
    view, _ = master.create_session(make_spec(small_table, partition_filter="ds = '2026-01-01'"))
    assert view.plan.num_rows == 12_000
    assert view.plan.num_partitions == 1


def test_bad_specs_name_the_field(master: Master, small_table: str) -> None:
    with pytest.raises(SpecError) as info:
        master.create_session(make_spec(small_table, batch_size=0))
    assert info.value.field == "batch_size"
    bad = make_spec(small_table)
    bad.features[0].source = "nope"
    with pytest.raises(SpecError) as info:
        master.create_session(bad)
    assert info.value.field == "features[0].source"
    with pytest.raises(TableNotFoundError):
        master.create_session(make_spec(small_table + "-missing"))


def test_join_by_name_and_conflict(master: Master, small_table: str) -> None:
    first, joined = master.create_session(make_spec(small_table), "job")
    second, joined_again = master.create_session(make_spec(small_table), "job")
    assert (joined, joined_again) == (False, True)
    assert first.session_id == second.session_id
    with pytest.raises(ConflictError, match="different spec"):
        master.create_session(make_spec(small_table, seed=9), "job")


def test_epochs_leases_and_completion(master: Master, small_table: str) -> None:
    view, _ = master.create_session(make_spec(small_table, epochs=2))
    sid = view.session_id
    split_ids, epochs = master.begin_epoch(sid, 0, 0)
    assert epochs == 2 and len(split_ids) == 8 and len(set(split_ids)) == 8
    assert master.begin_epoch(sid, 0, 0)[0] == split_ids  # idempotent
    worker = master.register_worker("127.0.0.1:1", 2)
    leased = []
    while (grant := master.acquire_split(worker)) is not None:
        leased.append(grant.split.split_id)
        assert master.report_split_progress(
            worker, sid, grant.epoch, grant.rank, grant.split.split_id, done=True
        )
    assert leased == split_ids
    _, streams = master.get_session(sid)
    # Produced is not done: the splits stay the worker's until the trainer acknowledges them.
    assert [(s.splits_done, s.splits_leased) for s in streams] == [(0, 8)]
    master.ack_batches(sid, 0, 0, [(split_id, 4, True) for split_id in split_ids])
    _, streams = master.get_session(sid)
    assert [(s.epoch, s.splits_done, s.splits_pending) for s in streams] == [(0, 8, 0)]
    with pytest.raises(OutOfRangeError, match="epoch 2 is past the last"):
        master.begin_epoch(sid, 0, 2)
    with pytest.raises(OutOfRangeError, match="rank 1"):
        master.begin_epoch(sid, 1, 0)
    with pytest.raises(NotFoundError, match="create it with CreateSession"):
        master.begin_epoch("s-nope", 0, 0)


def test_shuffled_epochs_differ_but_are_seeded(master: Master, small_table: str) -> None:
    a, _ = master.create_session(make_spec(small_table, epochs=2, shuffle=True, seed=3))
    b, _ = master.create_session(make_spec(small_table, epochs=2, shuffle=True, seed=3))
    a0, a1 = master.begin_epoch(a.session_id, 0, 0)[0], master.begin_epoch(a.session_id, 0, 1)[0]
    b0 = master.begin_epoch(b.session_id, 0, 0)[0]
    assert a0 == b0
    assert a0 != a1 and sorted(a0) == sorted(a1)


def test_ranks_are_disjoint_and_cover_all(master: Master, small_table: str) -> None:
    view, _ = master.create_session(make_spec(small_table, world_size=3))
    shares = [set(master.begin_epoch(view.session_id, r, 0)[0]) for r in range(3)]
    assert all(shares)
    assert not (shares[0] & shares[1] or shares[0] & shares[2] or shares[1] & shares[2])
    assert len(shares[0] | shares[1] | shares[2]) == view.plan.num_splits


def test_silent_worker_loses_its_leases(master: Master, clock: FakeClock, small_table: str) -> None:
    view, _ = master.create_session(make_spec(small_table))
    sid = view.session_id
    split_ids, _ = master.begin_epoch(sid, 0, 0)
    w1 = master.register_worker("127.0.0.1:1", 1)
    w2 = master.register_worker("127.0.0.1:2", 1)
    grant = master.acquire_split(w1)
    assert grant is not None and grant.split.split_id == split_ids[0]
    clock.now += 3
    assert master.heartbeat(w2, StageSeconds(read_s=1.0), WorkerCounters(rows_out=5))
    clock.now += 3  # w1 silent for 6 s > 5 s timeout; w2 heard from 3 s ago
    assert master.expire_workers() == [w1]
    assert not master.heartbeat(w1, StageSeconds(), WorkerCounters())
    # The released split goes back to the front: w2 gets it next.
    again = master.acquire_split(w2)
    assert again is not None and again.split.split_id == split_ids[0]
    # w1's late report is refused: the lease is w2's now.
    assert not master.report_split_progress(w1, sid, 0, 0, split_ids[0], done=True)
    with pytest.raises(NotFoundError, match="register again"):
        master.acquire_split(w1)
    workers = master.list_workers()
    assert [(w.worker_id, w.counters.rows_out) for w, _ in workers] == [(w2, 5)]


def test_full_streams_are_skipped(master: Master, small_table: str) -> None:
    view, _ = master.create_session(make_spec(small_table))
    master.begin_epoch(view.session_id, 0, 0)
    worker = master.register_worker("127.0.0.1:1", 1)
    assert master.acquire_split(worker, skip=[(view.session_id, 0)]) is None
    assert master.acquire_split(worker) is not None


def test_journal_replay_rebuilds_the_ledger(clock: FakeClock, small_table: str) -> None:
    journal = state.MemoryJournal()
    master = Master(journal=journal, clock=clock)
    view, _ = master.create_session(make_spec(small_table), "job")
    master.begin_epoch(view.session_id, 0, 0)
    worker = master.register_worker("127.0.0.1:1", 1)
    grant = master.acquire_split(worker)
    assert grant is not None
    master.report_split_progress(worker, view.session_id, 0, 0, grant.split.split_id, True)
    master.ack_batches(view.session_id, 0, 0, [(grant.split.split_id, 2, True)])
    second = master.acquire_split(worker)
    assert second is not None
    master.ack_batches(view.session_id, 0, 0, [(second.split.split_id, 1, False)])
    rebuilt = Master(journal=journal, clock=clock)
    _, streams = rebuilt.get_session(view.session_id)
    assert [(s.splits_done, s.splits_pending, s.splits_leased) for s in streams] == [(1, 6, 1)]
    assert rebuilt.create_session(make_spec(small_table), "job")[1] is True
    # The worker is known after the restart, so it keeps its lease while it heartbeats.
    assert rebuilt.heartbeat(worker, StageSeconds(), WorkerCounters())
    clock.now += 100
    rebuilt.expire_workers()
    rebuilt.ack_batches(view.session_id, 0, 0, [])  # the rank's keepalive: it is still here
    third = rebuilt.acquire_split(rebuilt.register_worker("127.0.0.1:9", 1))
    # The dropped worker's split resumes after the acknowledged batch.
    assert third is not None and third.split.split_id == second.split.split_id
    assert third.start_batch == 1


def test_equivalent_specs_join_the_same_session(master: Master, small_table: str) -> None:
    first, _ = master.create_session(make_spec(small_table, epochs=0), "job")
    second, joined = master.create_session(make_spec(small_table, epochs=1), "job")
    assert joined and first.session_id == second.session_id


def test_produced_but_unacknowledged_splits_return_when_their_worker_dies(
    master: Master, clock: FakeClock, small_table: str
) -> None:
    view, _ = master.create_session(make_spec(small_table))
    sid = view.session_id
    split_ids, _ = master.begin_epoch(sid, 0, 0)
    w1 = master.register_worker("127.0.0.1:1", 1)
    grant = master.acquire_split(w1)
    assert grant is not None and grant.split.split_id == split_ids[0]
    master.report_split_progress(w1, sid, 0, 0, grant.split.split_id, done=True)
    master.ack_batches(sid, 0, 0, [(grant.split.split_id, 3, False)])
    clock.now += 10
    w2 = master.register_worker("127.0.0.1:2", 1)
    again = master.acquire_split(w2)  # w1 expired: its frames may have died with it
    assert again is not None and again.split.split_id == grant.split.split_id
    assert again.start_batch == 3


def test_unregister_hands_back_at_once(master: Master, small_table: str) -> None:
    view, _ = master.create_session(make_spec(small_table))
    master.begin_epoch(view.session_id, 0, 0)
    w1 = master.register_worker("127.0.0.1:1", 1)
    grant = master.acquire_split(w1)
    assert grant is not None
    master.unregister_worker(w1)
    w2 = master.register_worker("127.0.0.1:2", 1)
    again = master.acquire_split(w2)
    assert again is not None and again.split == grant.split
    assert [w.worker_id for w, _ in master.list_workers()] == [w2]


def test_restore_replaces_the_recorded_consumption(master: Master, small_table: str) -> None:
    view, _ = master.create_session(make_spec(small_table))
    sid = view.session_id
    split_ids, _ = master.begin_epoch(sid, 0, 0)
    worker = master.register_worker("127.0.0.1:1", 1)
    for _ in range(3):
        assert master.acquire_split(worker) is not None
    master.ack_batches(sid, 0, 0, [(split_ids[0], 2, True), (split_ids[1], 2, False)])
    # The trainer's checkpoint is older: split 0 had 1 batch consumed, nothing else.
    master.begin_epoch(sid, 0, 0, restore=[(split_ids[0], 1, False)])
    _, streams = master.get_session(sid)
    assert (streams[0].splits_done, streams[0].splits_leased) == (0, 0)
    first = master.acquire_split(worker)
    assert first is not None and first.split.split_id == split_ids[0]
    assert first.start_batch == 1


def test_deterministic_sessions_lease_within_a_window(master: Master, small_table: str) -> None:
    spec = make_spec(small_table, deterministic=True, max_splits_in_flight=2)
    view, _ = master.create_session(spec)
    split_ids, _ = master.begin_epoch(view.session_id, 0, 0)
    worker = master.register_worker("127.0.0.1:1", 1)
    first, second = master.acquire_split(worker), master.acquire_split(worker)
    assert first is not None and second is not None
    assert [first.split.split_id, second.split.split_id] == split_ids[:2]
    assert master.acquire_split(worker) is None  # two in flight, none consumed
    master.ack_batches(view.session_id, 0, 0, [(split_ids[0], 2, True)])
    third = master.acquire_split(worker)
    assert third is not None and third.split.split_id == split_ids[2]


def test_equal_batches_limit_is_the_minimum_over_ranks(master: Master, small_table: str) -> None:
    view, _ = master.create_session(make_spec(small_table, world_size=2))
    sid = view.session_id
    master.begin_epoch(sid, 0, 0)
    master.begin_epoch(sid, 1, 0)
    assert master.ack_batches(sid, 0, 0, [], batches_received=7) == (0, False)  # rank 1 unheard
    assert master.ack_batches(sid, 1, 0, [], batches_received=4) == (4, False)
    assert master.ack_batches(sid, 0, 0, [], batches_received=12, received_all=True) == (4, False)
    assert master.ack_batches(sid, 1, 0, [], batches_received=11, received_all=True) == (11, True)


def test_file_journal_survives_a_restart_and_a_torn_line(
    tmp_path: object, clock: FakeClock, small_table: str
) -> None:
    from pathlib import Path

    from dpp_server.journal import FileJournal

    directory = Path(str(tmp_path)) / "journal"
    first = Master(journal=FileJournal(directory), clock=clock)
    view, _ = first.create_session(make_spec(small_table, epochs=2), "job")
    split_ids, _ = first.begin_epoch(view.session_id, 0, 0)
    first.ack_batches(view.session_id, 0, 0, [(split_ids[0], 2, True)])
    with open(directory / "journal.jsonl", "a") as f:
        f.write('{"type": "BatchesAck')  # a crash in the middle of a write
    second = Master(journal=FileJournal(directory), clock=clock)
    again, streams = second.get_session(view.session_id)
    assert again.plan == view.plan and again.spec == view.spec
    assert [(s.epoch, s.splits_done) for s in streams] == [(0, 1)]
    assert second.begin_epoch(view.session_id, 0, 0)[0] == split_ids


@pytest.mark.parametrize("uri", ["data/ctr", "file://data/ctr", "~/ctr"])
def test_relative_local_table_uri_is_refused(master: Master, uri: str) -> None:
    with pytest.raises(SpecError, match="is a relative local path") as info:
        master.create_session(make_spec(uri))
    assert info.value.field == "table_uri"


def test_splits_go_to_the_worker_that_caches_them_without_starving_others(
    master: Master, small_table: str
) -> None:
    view, _ = master.create_session(make_spec(small_table))
    sid = view.session_id
    split_ids, _ = master.begin_epoch(sid, 0, 0)
    digest = output_digest(view.spec)
    warm = master.register_worker("127.0.0.1:1", 1)
    cold = master.register_worker("127.0.0.1:2", 1)
    held = [split_ids[5], split_ids[2], split_ids[7]]
    assert master.heartbeat(warm, StageSeconds(), WorkerCounters(), {digest: held})
    assert master.heartbeat(cold, StageSeconds(), WorkerCounters(), {})
    # Another spec's cache (another digest) does not count.
    assert master.heartbeat(cold, StageSeconds(), WorkerCounters(), {"0" * 16: split_ids})

    def take(worker: str) -> str:
        grant = master.acquire_split(worker)
        assert grant is not None
        return grant.split.split_id

    # The warm worker gets its cached splits first, in the epoch's order.
    assert [take(warm), take(warm)] == [split_ids[2], split_ids[5]]
    # The cold one gets the first split nobody caches, not the warm worker's.
    assert [take(cold), take(cold), take(cold)] == [split_ids[0], split_ids[1], split_ids[3]]
    # None (unchanged) keeps the set; the warm worker has one cached split left.
    assert master.heartbeat(warm, StageSeconds(), WorkerCounters(), None)
    assert take(warm) == split_ids[7]
    # Only splits nobody caches remain: both workers get them.
    assert [take(warm), take(cold)] == [split_ids[4], split_ids[6]]
    assert master.acquire_split(cold) is None


def test_a_cold_worker_takes_cached_splits_when_nothing_else_is_pending(
    master: Master, small_table: str
) -> None:
    view, _ = master.create_session(make_spec(small_table))
    split_ids, _ = master.begin_epoch(view.session_id, 0, 0)
    warm = master.register_worker("127.0.0.1:1", 1)
    cold = master.register_worker("127.0.0.1:2", 1)
    master.heartbeat(warm, StageSeconds(), WorkerCounters(), {output_digest(view.spec): split_ids})
    taken = []
    while (grant := master.acquire_split(cold)) is not None:
        taken.append(grant.split.split_id)
    assert taken == split_ids  # all cached elsewhere: no starvation, epoch order
