"""The journal's line format: every update type round-trips, old lines still read, and a bad
line is a clear error naming the file and the line. (Recovery of a whole master from a journal
is tested in test_master.py and the chaos tests.)"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from dpp_server import journal, state
from storage import SplitInfo

SPLITS = (
    SplitInfo("s0", "t/ds=1/a.parquet", 100, (0, 1), 200, {"ds": "1"}),
    SplitInfo("s1", "t/ds=2/b.parquet", 50, (3,), 70, {}),
)
ACKS = (state.SplitAck(0, 2, False), state.SplitAck(1, 1, True))
UPDATES: list[state.Update] = [
    state.SessionCreated(
        "sess", "job", b"\x00\x01spec\xff", SPLITS, state.PlanSummary(2, 2, 3, 270, 2, 0.5)
    ),
    state.WorkerRegistered("w-1", "127.0.0.1:5", 2),
    state.WorkerRemoved("w-1"),
    state.EpochBegun("sess", 1, 0, (1, 0)),
    state.SplitLeased("sess", 1, 0, 1, "w-1", 3),
    state.SplitProduced("sess", 1, 0, 1),
    state.BatchesAcked("sess", 1, 0, ACKS),
    state.StreamRestored("sess", 1, 0, ACKS),
    state.LeaseReleased("sess", 1, 0, 0),
    state.SplitStatsReported("sess", 0, 0, 1, b"DPPSTAT1\x00\xff"),
    state.SplitStatsReported("sess", 0, 0, 0, b"", "worker w-1 failed on split s0: boom"),
    state.SessionExpired("sess"),
]


def test_every_update_type_is_covered() -> None:
    assert {type(u) for u in UPDATES} == set(typing.get_args(state.Update))


@pytest.mark.parametrize("update", UPDATES, ids=lambda u: type(u).__name__)
def test_every_update_round_trips_through_a_journal_line(update: state.Update) -> None:
    line = journal.encode(update)
    assert "\n" not in line
    assert journal.decode(line) == update


def test_lines_written_by_the_previous_encoder_still_read() -> None:
    # Written by the hand-written encoder this format replaced: the format did not change.
    line = (
        '{"type":"SessionCreated","session_id":"sess","session_name":"","spec_bytes":"AAE=",'
        '"splits":[{"split_id":"s0","path":"p","file_size":1,"row_groups":[0,1],"num_rows":5,'
        '"partition":{"ds":"1"}}],"plan":{"num_splits":1,"num_files":1,"num_row_groups":2,'
        '"num_rows":5,"num_partitions":1,"planning_seconds":0.5}}'
    )
    update = journal.decode(line)
    assert update == state.SessionCreated(
        "sess",
        "",
        b"\x00\x01",
        (SplitInfo("s0", "p", 1, (0, 1), 5, {"ds": "1"}),),
        state.PlanSummary(1, 1, 2, 5, 1, 0.5),
    )
    # The one field added since (the owner's tenant) defaults when absent. A field still at its
    # default is not written, so the old line comes back byte for byte; a set one is written.
    assert update.tenant == ""
    assert journal.encode(update) == line
    owned = dataclasses.replace(update, tenant="t1")
    assert journal.encode(owned) == line[:-1] + ',"tenant":"t1"}'
    assert journal.decode(journal.encode(owned)) == owned


def test_file_journal_replays_what_it_appended(tmp_path: Path) -> None:
    first = journal.FileJournal(tmp_path)
    for update in UPDATES:
        first.append(update)
    first.close()
    assert list(journal.FileJournal(tmp_path).replay()) == UPDATES


@pytest.mark.parametrize(
    ("line", "cause"),
    [
        ('{"type":"Nope","worker_id":"w"}', "unknown update type 'Nope'"),
        ('{"type":"WorkerRegistered","worker_id":"w","address":"a"}', "missing field(s)"),
        (
            '{"type":"SplitProduced","session_id":"s","epoch":"x","rank":0,"split_index":1}',
            "SplitProduced.epoch: expected int, got str 'x'",
        ),
        ("[1, 2]", "expected a JSON object"),
        ("not json", "Expecting value"),
    ],
)
def test_a_bad_line_is_a_clear_error(tmp_path: Path, line: str, cause: str) -> None:
    good = journal.encode(UPDATES[1])
    (tmp_path / "journal.jsonl").write_text(f"{good}\n{line}\n")
    with pytest.raises(ValueError, match="line 2 is corrupt") as excinfo:
        list(journal.FileJournal(tmp_path).replay())
    assert cause in str(excinfo.value)


def test_replay_names_the_line_of_an_update_that_does_not_fit(tmp_path: Path) -> None:
    log = journal.FileJournal(tmp_path)
    log.append(state.WorkerRegistered("w-1", "127.0.0.1:1", 1))
    # Well-formed, but for a session the journal never created (edited by hand, say).
    log.append(state.EpochBegun("s-missing", 0, 0, (0, 1)))
    log.close()
    with pytest.raises(ValueError, match=r"journal .*journal.jsonl line 2: EpochBegun does not"):
        state.replay(journal.FileJournal(tmp_path))
