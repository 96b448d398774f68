"""State stays flat (issue 12, goal 3): sessions expire after session_ttl_s, the journal is
compacted (snapshot + empty journal), and replay after either rebuilds the same ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpp_server import journal, state
from dpp_server.errors import LimitError, NotFoundError
from dpp_server.journal import FileJournal
from dpp_server.master import Master, MasterConfig
from tests.helpers.server import make_spec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _busy_session(master: Master, table: str, name: str = "") -> str:
    """A session with a begun epoch, a leased, a produced, a done and a half-acked split."""
    view, _ = master.create_session(make_spec(table, epochs=2), name)
    sid = view.session_id
    split_ids, _ = master.begin_epoch(sid, 0, 0)
    worker = master.register_worker("127.0.0.1:1", 2)
    first = master.acquire_split(worker)
    second = master.acquire_split(worker)
    assert first is not None and second is not None
    master.report_split_progress(worker, sid, 0, 0, first.split.split_id, done=True)
    master.ack_batches(sid, 0, 0, [(split_ids[0], 2, True), (split_ids[1], 1, False)])
    return sid


def _canonical(master: Master) -> list[str]:
    return [journal.encode(u) for u in master._ledger.snapshot()]


def test_snapshot_replays_to_the_same_ledger(small_table: str) -> None:
    master = Master(MasterConfig(journal_compact_updates=0))
    _busy_session(master, small_table, "a")
    _busy_session(master, small_table)
    rebuilt = state.Ledger()
    for update in master._ledger.snapshot():
        rebuilt.apply(update)
    assert [journal.encode(u) for u in rebuilt.snapshot()] == _canonical(master)
    assert rebuilt.sessions_by_name == master._ledger.sessions_by_name


def test_sessions_expire_after_the_ttl_and_a_restart_agrees(
    tmp_path: Path, small_table: str
) -> None:
    clock = FakeClock()
    config = MasterConfig(session_ttl_s=60.0, lease_timeout_s=1e6, journal_compact_updates=0)
    master = Master(config, journal=FileJournal(tmp_path), clock=clock)
    idle = _busy_session(master, small_table, "idle")
    live = _busy_session(master, small_table, "live")
    clock.now += 40
    master.ack_batches(live, 0, 0, [])  # a keepalive: the live session stays
    clock.now += 30
    assert master.expire_sessions() == [idle]
    assert master.sessions_expired == 1
    assert master.session_ids() == [live]
    with pytest.raises(NotFoundError, match="does not exist"):
        master.begin_epoch(idle, 0, 0)
    # Its name is free again; its worker's reports are answered "lease not valid".
    assert not master.report_split_progress("w-x", idle, 0, 0, "any", done=True)
    restarted = Master(config, journal=FileJournal(tmp_path), clock=clock)
    assert restarted.session_ids() == [live]
    assert _canonical(restarted) == _canonical(master)
    again, joined = restarted.create_session(make_spec(small_table, epochs=2), "idle")
    assert not joined and again.session_id != idle
    # After a restart every session gets a fresh TTL (a restart counts as a call).
    clock.now += 59
    assert restarted.expire_sessions() == []
    clock.now += 2
    assert restarted.expire_sessions() == [live, again.session_id]


def test_ttl_zero_never_expires(small_table: str) -> None:
    clock = FakeClock()
    master = Master(MasterConfig(session_ttl_s=0), clock=clock)
    _busy_session(master, small_table)
    clock.now += 1e9
    assert master.expire_sessions() == []


def test_journal_is_compacted_and_replays_snapshot_plus_tail(
    tmp_path: Path, small_table: str
) -> None:
    clock = FakeClock()
    config = MasterConfig(session_ttl_s=10.0, lease_timeout_s=1e6, journal_compact_updates=20)
    master = Master(config, journal=FileJournal(tmp_path), clock=clock)
    for n in range(30):
        _busy_session(master, small_table)
        clock.now += 4  # each session expires 10 s after its last call
        master.expire_sessions()
        if n == 15:
            kept = master.session_ids()
    assert len(master.session_ids()) <= 3
    snapshots = list(tmp_path.glob("snapshot-*.jsonl"))
    assert len(snapshots) == 1  # older snapshots are deleted
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header == {"type": "Header", "snapshot": snapshots[0].stem.removeprefix("snapshot-")}
    # 30 sessions of ~9 updates each were journaled; the files hold a few live ones.
    assert len(lines) - 1 + len(snapshots[0].read_text().splitlines()) - 1 < 80
    restarted = Master(config, journal=FileJournal(tmp_path), clock=clock)
    assert _canonical(restarted) == _canonical(master)
    assert not set(kept) & set(restarted.session_ids())


def test_an_interrupted_compaction_leaves_a_valid_pair(tmp_path: Path, small_table: str) -> None:
    master = Master(MasterConfig(journal_compact_updates=0), journal=FileJournal(tmp_path))
    _busy_session(master, small_table, "a")
    before = _canonical(master)
    # The crash came after the new snapshot was renamed, before the journal was: the
    # snapshot is an orphan (the journal names none), and a .tmp file is left.
    (tmp_path / "snapshot-0123456789ab.jsonl").write_text('{"type":"Header"}\n')
    (tmp_path / "journal.jsonl.tmp").write_text("half")
    restarted = Master(journal=FileJournal(tmp_path))
    assert _canonical(restarted) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.jsonl"]
    # Compacting, then appending, then restarting: snapshot + tail.
    log = FileJournal(tmp_path)
    restarted = Master(MasterConfig(journal_compact_updates=0), journal=log)
    log.compact(restarted._ledger.snapshot())
    _busy_session(restarted, small_table, "b")
    assert log.tail_updates > 0 and log.snapshot_updates > 0
    assert _canonical(Master(journal=FileJournal(tmp_path))) == _canonical(restarted)


def test_a_journal_naming_a_missing_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "journal.jsonl").write_text('{"type":"Header","snapshot":"feedbeef0000"}\n')
    with pytest.raises(ValueError, match=r"snapshot-feedbeef0000.jsonl, which is missing"):
        FileJournal(tmp_path)


def test_a_bad_snapshot_line_is_named(tmp_path: Path, small_table: str) -> None:
    log = FileJournal(tmp_path)
    master = Master(journal=log)
    _busy_session(master, small_table)
    log.compact(master._ledger.snapshot())
    log.close()
    snapshot = next(tmp_path.glob("snapshot-*.jsonl"))
    lines = snapshot.read_text().splitlines()
    lines[2] = '{"type":"EpochBegun","session_id":"s-nope","epoch":0,"rank":0,"split_indices":[]}'
    snapshot.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{snapshot.name} line 3: EpochBegun does not fit"):
        Master(journal=FileJournal(tmp_path))


def test_one_tenant_cannot_hold_more_than_its_sessions_and_others_keep_creating(
    small_table: str,
) -> None:
    clock = FakeClock()
    master = Master(MasterConfig(max_sessions_per_tenant=2, session_ttl_s=60), clock=clock)
    master.create_session(make_spec(small_table), "a", tenant="t1")
    master.create_session(make_spec(small_table), "b", tenant="t1")
    # Joining an existing session takes no new place.
    _, joined = master.create_session(make_spec(small_table), "a", tenant="t1")
    assert joined
    with pytest.raises(LimitError) as refused:
        master.create_session(make_spec(small_table), "c", tenant="t1")
    assert refused.value.limit == "max_sessions_per_tenant"
    assert "tenant 't1' holds 2 live sessions, the limit of 2" in str(refused.value)
    # Another tenant is not affected.
    master.create_session(make_spec(small_table), "c", tenant="t2")
    # Expired sessions free their places.
    clock.now += 61
    master.expire_sessions()
    master.create_session(make_spec(small_table), "c", tenant="t1")
