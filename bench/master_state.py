"""Does the master's state stay flat? 10,000 sessions through a real master, with and without
session expiry and journal compaction (issue 12, goal 3).

    python -m bench.master_state [--sessions 10000] [--ttl-s 5] [--compact-updates 10000]

Two master processes (``dpp master`` with a journal, on loopback), side by side on the same
table: **flat** (``--session-ttl-s`` ``--ttl-s``, ``--journal-compact-updates``
``--compact-updates``) and **unbounded** (both 0: sessions never expire, the journal is never
compacted: the behaviour before issue 12). Each gets ``--sessions`` sessions, driven as a
trainer would over gRPC without workers: ``CreateSession`` (named, planned on a small table
of 8 splits), ``BeginEpoch`` for 2 ranks, and ``AckBatches`` per rank that reports every split
done with the loader's ``client_stats``; plus one refused ``AckBatches`` (an unknown session,
with stats) per session. The drives run interleaved in chunks, so machine noise hits both
alike. Reported per master: RSS, ``/metrics`` bytes, journal bytes on disk, sessions held,
then the restart time (SIGKILL, start on the same journal, until the ready file appears:
Python start, imports and replay) and the RSS after it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from dpp_proto import master_pb2, master_pb2_grpc
from dpp_proto.auth import Connection, open_channel
from dpp_server.local_cluster import LocalCluster
from storage import GenConfig, generate_table
from tests.helpers.server import make_spec

TABLE = GenConfig(rows=8_000, days=1, dense=2, sparse=1, row_group_rows=1000, rows_per_file=8000)
WORLD_SIZE = 2


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as response:
        text: str = response.read().decode()
        return text


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


class Driver:
    """Sessions driven through one master, as a trainer's loader would (without workers)."""

    def __init__(self, address: str, table: str, connection: Connection | None) -> None:
        self.stub = master_pb2_grpc.MasterServiceStub(open_channel(address, connection))
        self.spec = make_spec(table, world_size=WORLD_SIZE, target_split_rows=1000)
        self.count = 0

    def session(self) -> None:
        n = self.count
        self.count += 1
        response = self.stub.CreateSession(
            master_pb2.CreateSessionRequest(spec=self.spec, session_name=f"job-{n}"), timeout=30
        )
        sid = response.session_id
        stats = master_pb2.ClientStats(wall_s=1.0, stall_s=0.1, batches=4, rows=4000)
        for rank in range(WORLD_SIZE):
            begun = self.stub.BeginEpoch(
                master_pb2.BeginEpochRequest(session_id=sid, rank=rank, epoch=0), timeout=30
            )
            acks = [
                master_pb2.SplitAck(split_id=s, batches_consumed=1, done=True)
                for s in begun.split_ids
            ]
            self.stub.AckBatches(
                master_pb2.AckBatchesRequest(
                    session_id=sid, rank=rank, epoch=0, acks=acks, client_stats=stats
                ),
                timeout=30,
            )
        # Refused: the session does not exist; its stats must not become a label.
        with contextlib.suppress(grpc.RpcError):
            self.stub.AckBatches(
                master_pb2.AckBatchesRequest(
                    session_id=f"s-gone-{n}", rank=n, epoch=0, client_stats=stats
                ),
                timeout=30,
            )


def measure(cluster: LocalCluster, label: str) -> dict[str, Any]:
    assert cluster.master is not None and cluster.journal_dir is not None
    pid = cluster.master.process.pid
    text = scrape(cluster.master.metrics_address)
    result: dict[str, Any] = {
        "master": label,
        "sessions_held": int(sample(text, "dpp_master_sessions")),
        "sessions_expired": int(sample(text, "dpp_master_sessions_expired_total")),
        "rss_mb": round(rss_mb(pid), 1),
        "metrics_bytes": len(text.encode()),
        "journal_bytes": folder_bytes(cluster.journal_dir),
    }
    started = time.perf_counter()
    cluster.restart_master()  # SIGKILL, then start on the same journal and port
    result["restart_s"] = round(time.perf_counter() - started, 2)
    result["rss_after_restart_mb"] = round(rss_mb(cluster.master.process.pid), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--ttl-s", type=float, default=5.0)
    parser.add_argument("--compact-updates", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("DPP_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="dpp-bench-state-") as tmp:
        table = str(Path(tmp) / "table")
        generate_table(table, TABLE)
        configs = {
            "flat": [
                "--session-ttl-s",
                str(args.ttl_s),
                "--journal-compact-updates",
                str(args.compact_updates),
            ],
            "unbounded": ["--session-ttl-s", "0", "--journal-compact-updates", "0"],
        }
        clusters = {
            name: LocalCluster(
                workers=0, master_args=flags, journal=True, work_dir=str(Path(tmp) / name)
            ).start()
            for name, flags in configs.items()
        }
        try:
            drivers = {
                n: Driver(c.master_address, table, c.connection) for n, c in clusters.items()
            }
            seconds = dict.fromkeys(clusters, 0.0)
            while drivers["flat"].count < args.sessions:
                for name, driver in drivers.items():
                    started = time.perf_counter()
                    for _ in range(min(args.chunk, args.sessions - driver.count)):
                        driver.session()
                    seconds[name] += time.perf_counter() - started
            results = []
            for name, cluster in clusters.items():
                result = measure(cluster, name)
                result["sessions_per_s"] = round(args.sessions / seconds[name], 1)
                results.append(result)
        finally:
            for cluster in clusters.values():
                if cluster.master is not None and cluster.master.alive:
                    cluster.master.process.send_signal(signal.SIGINT)
                cluster.stop()
    flat, unbounded = results
    print(json.dumps({"sessions": args.sessions, "ttl_s": args.ttl_s, "results": results}))
    for key in ("rss_mb", "metrics_bytes", "journal_bytes", "restart_s", "rss_after_restart_mb"):
        ratio = unbounded[key] / flat[key] if flat[key] else float("inf")
        print(f"{key:>22}: flat {flat[key]:>12,}   unbounded {unbounded[key]:>12,}   {ratio:.1f}x")


if __name__ == "__main__":
    main()
