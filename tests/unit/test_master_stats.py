"""A stats session in the master, without transport: a split's sketches count once.

The payloads are real (:func:`dpp_server.produce_stats.sketch_split` on the shared small
table); the clock is fake, so lease expiry needs no sleep.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dpp_proto import spec_pb2
from dpp_server.errors import ConflictError
from dpp_server.journal import FileJournal
from dpp_server.master import LeaseGrant, Master, MasterConfig
from dpp_server.produce import StageTotals
from dpp_server.produce_stats import StatsPipeline, sketch_split
from dpp_server.stats import merge
from dpp_server.stats.report import build_report
from tests.helpers.server import make_spec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stats_spec(table: str, **stats: object) -> spec_pb2.SessionSpec:
    spec = make_spec(table)
    spec.features.add(name="s0", source="sparse_0", kind=spec_pb2.FEATURE_KIND_SPARSE)
    spec.stats.CopyFrom(spec_pb2.StatsOptions(**stats))  # type: ignore[arg-type]
    return spec


def _sketch(master: Master, grant: LeaseGrant) -> bytes:
    view, _ = master.get_session(grant.session_id)
    return sketch_split(StatsPipeline.compile(view.spec, 65_536), grant, StageTotals())


def _run_all(master: Master, worker: str) -> None:
    while (grant := master.acquire_split(worker)) is not None:
        assert master.report_split_stats(
            worker, grant.session_id, 0, 0, grant.split.split_id, _sketch(master, grant)
        )


def test_a_split_counts_once_when_its_worker_is_lost(small_table: str) -> None:
    clock = FakeClock()
    master = Master(MasterConfig(lease_timeout_s=5.0), clock=clock)
    view, _ = master.create_session(_stats_spec(small_table))
    sid = view.session_id
    slow = master.register_worker("127.0.0.1:1", 1)
    lost = master.acquire_split(slow)  # the stream opened with the session: no BeginEpoch
    assert lost is not None
    payload = _sketch(master, lost)

    clock.now += 6.0  # the slow worker misses its heartbeats: its lease goes back
    fast = master.register_worker("127.0.0.1:2", 1)
    _run_all(master, fast)
    late = master.report_split_stats(slow, sid, 0, 0, lost.split.split_id, payload)
    assert late is False  # dropped: the split was sketched again by the lease holder

    result = master.stats_report(sid, boundary_buckets=4)
    assert result.complete and result.splits_done == result.splits_total == 8
    assert result.report is not None and result.report["splits"] == 8
    assert result.report["sparse"]["s0"]["rows"] == 24_000
    assert set(result.boundaries) == {"d0"} and len(result.boundaries["d0"]) == 3
    # A done split takes no second payload, even from a worker holding no lease any more.
    assert not master.report_split_stats(fast, sid, 0, 0, lost.split.split_id, payload)


def test_progress_before_completion_and_errors(small_table: str) -> None:
    master = Master()
    sid = master.create_session(_stats_spec(small_table))[0].session_id
    worker = master.register_worker("127.0.0.1:1", 1)
    first = master.acquire_split(worker)
    assert first is not None
    pending = master.stats_report(sid)
    assert (pending.splits_done, pending.complete, pending.report) == (0, False, None)
    assert master.report_split_progress(
        worker, sid, 0, 0, first.split.split_id, True, "worker w-1 failed on split x: boom"
    )
    _run_all(master, worker)
    failed = master.stats_report(sid)
    assert failed.complete and failed.report is None
    assert failed.errors == ("worker w-1 failed on split x: boom",)


def test_training_and_stats_sessions_do_not_mix(small_table: str) -> None:
    master = Master()
    training = master.create_session(make_spec(small_table))[0].session_id
    with pytest.raises(ConflictError, match="not a stats session"):
        master.stats_report(training)
    master.begin_epoch(training, 0, 0)
    worker = master.register_worker("127.0.0.1:1", 1)
    grant = master.acquire_split(worker)
    assert grant is not None
    with pytest.raises(ConflictError, match="training session"):
        master.report_split_stats(worker, training, 0, 0, grant.split.split_id, b"")


def test_payloads_survive_a_master_restart(small_table: str, tmp_path: Path) -> None:
    """The payloads are journaled with the update that marks their split done."""
    master = Master(journal=FileJournal(tmp_path))
    sid = master.create_session(_stats_spec(small_table, sample_rate=0.5))[0].session_id
    _run_all(master, master.register_worker("127.0.0.1:1", 1))
    before = master.stats_report(sid).report
    restarted = Master(journal=FileJournal(tmp_path)).stats_report(sid).report
    assert before is not None and restarted is not None
    assert _without_kll(restarted) == _without_kll(before)
    # --sample-rate 0.5: about half the rows, the same ones on every production of a split.
    assert 11_000 < before["sparse"]["s0"]["rows"] < 13_000


def test_the_merge_equals_merging_the_split_payloads(small_table: str) -> None:
    master = Master()
    sid = master.create_session(_stats_spec(small_table))[0].session_id
    worker = master.register_worker("127.0.0.1:1", 1)
    payloads = []
    while (grant := master.acquire_split(worker)) is not None:
        payloads.append(_sketch(master, grant))
        master.report_split_stats(worker, sid, 0, 0, grant.split.split_id, payloads[-1])
    report = master.stats_report(sid).report
    assert report is not None
    assert _without_kll(report) == _without_kll(build_report(merge(reversed(payloads))))


def _without_kll(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_kll(v) for k, v in value.items() if k not in ("quantiles", "p50")}
    return value
