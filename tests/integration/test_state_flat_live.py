"""The master's state stays flat (issue 12, goal 3), against a real master process with a
journal on loopback: 500 sessions come and go; they expire, the journal is compacted, a
restart replays to the same ledger, /metrics stays bounded, and undecodable requests are
refused with INVALID_ARGUMENT, counted and logged once. (10,000 sessions, with RSS and restart
times beside an unbounded master: ``python -m bench.master_state``.)"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from dpp_proto import master_pb2, master_pb2_grpc
from dpp_proto.auth import load_connection, open_channel
from dpp_server.journal import FileJournal
from dpp_server.local_cluster import LocalCluster
from dpp_server.master import Master, MasterConfig
from dpp_server.monitor import MAX_RANK_SERIES
from storage import GenConfig, generate_table
from tests.helpers.server import make_spec

pytestmark = pytest.mark.integration

SESSIONS = 500
TTL_S = 1.0
COMPACT_UPDATES = 300
TABLE = GenConfig(rows=8_000, days=1, dense=2, sparse=1, row_group_rows=1000, rows_per_file=8000)


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def _splits_by_session(text: str) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    pattern = re.compile(r'^dpp_master_splits\{session="([^"]+)",state="(\w+)"\} (\S+)$')
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            found.setdefault(match[1], {})[match[2]] = float(match[3])
    return found


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _drive(stub: master_pb2_grpc.MasterServiceStub, spec: object, n: int) -> None:
    """One session as a 2-rank trainer drives it (no workers): create, begin, ack all done
    with client stats; and one refused ack with stats for a session that does not exist."""
    sid = stub.CreateSession(
        master_pb2.CreateSessionRequest(spec=spec, session_name=f"job-{n}"), timeout=30
    ).session_id
    stats = master_pb2.ClientStats(wall_s=1.0, batches=4, rows=4000)
    for rank in range(2):
        split_ids = stub.BeginEpoch(
            master_pb2.BeginEpochRequest(session_id=sid, rank=rank, epoch=0), timeout=30
        ).split_ids
        acks = [master_pb2.SplitAck(split_id=s, batches_consumed=1, done=True) for s in split_ids]
        stub.AckBatches(
            master_pb2.AckBatchesRequest(
                session_id=sid, rank=rank, epoch=0, acks=acks, client_stats=stats
            ),
            timeout=30,
        )
    with pytest.raises(grpc.RpcError) as info:
        stub.AckBatches(
            master_pb2.AckBatchesRequest(session_id=f"s-gone-{n}", rank=n, client_stats=stats),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_sessions_expire_journal_compacts_restart_agrees(tmp_path: Path) -> None:
    table = str(tmp_path / "table")
    generate_table(table, TABLE)
    spec = make_spec(table, world_size=2, target_split_rows=1000)
    flags = [
        "--session-ttl-s",
        str(TTL_S),
        "--journal-compact-updates",
        str(COMPACT_UPDATES),
        "--heartbeat-interval-s",
        "0.25",
        "--monitor-interval-s",
        "0.5",
    ]
    with LocalCluster(workers=0, master_args=flags, journal=True) as cluster:
        assert cluster.master is not None and cluster.journal_dir is not None
        channel = open_channel(cluster.master_address, load_connection())
        stub = master_pb2_grpc.MasterServiceStub(channel)
        for n in range(SESSIONS):
            _drive(stub, spec, n)
        before = _scrape(cluster.master.metrics_address)

        # Expiry happened and the journal was compacted: ~9 updates per session were
        # journaled, but the files hold the live sessions only.
        expired = _value(before, "dpp_master_sessions_expired_total")
        held = _value(before, "dpp_master_sessions")
        assert expired + held == SESSIONS and expired >= SESSIONS / 2
        snapshots = list(cluster.journal_dir.glob("snapshot-*.jsonl"))
        assert len(snapshots) == 1
        lines = len((cluster.journal_dir / "journal.jsonl").read_text().splitlines())
        lines += len(snapshots[0].read_text().splitlines())
        assert lines < 9 * SESSIONS / 2, lines
        # No label from a refused request; rank series within the cap.
        assert "s-gone" not in before
        rank_series = sum(line.startswith("dpp_rank_rows_total{") for line in before.splitlines())
        assert 0 < rank_series <= min(MAX_RANK_SERIES, 2 * held)

        # A restart replays snapshot + tail to the same ledger. The offline replay is the
        # ledger on disk; the restarted master shows the same sessions and split counts. (It
        # restarts with a long TTL so that nothing expires before it is scraped: the TTL is a
        # setting, not state, and a restart counts as a call.)
        cluster.kill_master()
        ttl_flag = cluster.master_args.index("--session-ttl-s") + 1
        cluster.master_args[ttl_flag] = "60"
        on_disk = Master(MasterConfig(), journal=FileJournal(cluster.journal_dir))
        offline = {
            sid: dict(zip(("pending", "leased", "done"), _counts(on_disk, sid), strict=True))
            for sid in on_disk.session_ids()
        }
        assert offline and set(offline) <= set(_splits_by_session(before))
        cluster.restart_master()
        after = _splits_by_session(_scrape(cluster.master.metrics_address))
        assert after == offline
        assert "recovered from the journal" in cluster.master.log_tail(200)
        cluster.master_args[ttl_flag] = str(TTL_S)
        cluster.restart_master()

        # Undecodable requests: INVALID_ARGUMENT naming the message, counted, logged once.
        channel = open_channel(cluster.master_address, load_connection())
        for method in ("AckBatches", "BeginEpoch"):
            call = channel.unary_unary(f"/dpp.v1.MasterService/{method}")
            for size in range(1, 21):
                with pytest.raises(grpc.RpcError) as info:
                    call(b"\xff" * size, timeout=10)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert f"the {method} request is not a valid protobuf" in str(info.value.details())
        log = cluster.master.log_path.read_text()
        assert log.count("AckBatches refused (undecodable)") == 1
        assert log.count("BeginEpoch refused (undecodable)") == 1
        assert "Exception deserializing" not in log and "Traceback" not in log

        # Once every session expired, nothing per session is left in /metrics.
        deadline = time.monotonic() + TTL_S + 10
        while _value(_scrape(cluster.master.metrics_address), "dpp_master_sessions") > 0:
            assert time.monotonic() < deadline, "sessions did not expire"
            time.sleep(0.25)
        final = _scrape(cluster.master.metrics_address)
        assert "dpp_rank_rows_total{" not in final and "dpp_master_splits{" not in final
        assert (
            _value(final, 'dpp_master_requests_refused_total{kind="undecodable",rpc="AckBatches"}')
            == 20
        )
        assert len(final) < 20_000, len(final)


def _counts(master: Master, session_id: str) -> tuple[float, float, float]:
    _, streams = master.get_session(session_id)
    return (
        float(sum(s.splits_pending for s in streams)),
        float(sum(s.splits_leased for s in streams)),
        float(sum(s.splits_done for s in streams)),
    )
