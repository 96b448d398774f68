"""How fast the master assigns splits: a synthetic session served to simulated workers.

    python -m bench.master_rate [--splits 100000] [--workers 100] [--grpc-splits 20000]

The session is planned synthetically (``SessionCreated`` with ``--splits`` tiny splits put in
the journal, which the master replays at start), so no table is read. ``--workers`` simulated
workers register, rank 0 begins epoch 0, and then, round-robin over the workers, each takes a
split (``acquire_split``), reports it produced (``report_split_progress``), and the trainer
acknowledges every 100 splits as consumed (``ack_batches``): the whole lease protocol, three
journaled updates per split. Reported: splits assigned per second,

* in-process (the :class:`~dpp_server.master.Master` alone, no gRPC), with the in-memory
  journal and with the fsyncing :class:`~dpp_server.journal.FileJournal` (on this machine's
  disk; its rate is bounded by fsync latency, so it runs a bounded number of splits);
* through the real gRPC service: the master served by ``MasterServer`` in a child process,
  the simulated workers as threads of this process calling ``AcquireSplit`` and
  ``ReportSplitProgress`` over loopback.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dpp_client import Feature, Op, SessionSpec
from dpp_server import state
from dpp_server.journal import FileJournal
from dpp_server.master import Master, MasterConfig
from dpp_server.records import StageSeconds, WorkerCounters
from dpp_server.spec import spec_from_proto, spec_to_proto
from storage import SplitInfo

SESSION_ID = "s-bench"
ACK_EVERY = 100


def synthetic_session(num_splits: int) -> state.SessionCreated:
    """A session of ``num_splits`` one-row-group splits over made-up files."""
    spec = SessionSpec(
        table_uri="/nonexistent/bench-table",
        features=(Feature("d0", "dense", source="dense_0", ops=(Op("log1p"),)),),
        batch_size=1024,
        epochs=1,
    )
    spec_bytes = spec_to_proto(spec_from_proto(spec.to_proto())).SerializeToString(
        deterministic=True
    )
    splits = tuple(
        SplitInfo(
            split_id=f"{i:016x}",
            path=f"/nonexistent/bench-table/part-{i // 1000:05d}.parquet",
            file_size=1 << 20,
            row_groups=(i % 1000,),
            num_rows=1024,
            partition={},
        )
        for i in range(num_splits)
    )
    plan = state.PlanSummary(
        num_splits=num_splits,
        num_files=(num_splits + 999) // 1000,
        num_row_groups=num_splits,
        num_rows=num_splits * 1024,
        num_partitions=0,
        planning_seconds=0.0,
    )
    return state.SessionCreated(SESSION_ID, "", spec_bytes, splits, plan)


def _master(journal: state.Journal, num_splits: int) -> Master:
    journal.append(synthetic_session(num_splits))
    return Master(MasterConfig(lease_timeout_s=3600.0), journal=journal)


def drive_in_process(master: Master, workers: int, limit: int, budget_s: float) -> dict[str, Any]:
    """Serves up to ``limit`` splits round-robin to ``workers`` simulated workers."""
    ids = [master.register_worker(f"127.0.0.1:{10_000 + i}", 2) for i in range(workers)]
    split_ids, _ = master.begin_epoch(SESSION_ID, 0, 0)
    leased = 0
    acks: list[tuple[str, int, bool]] = []
    started = time.perf_counter()
    deadline = started + budget_s
    while leased < limit and time.perf_counter() < deadline:
        worker = ids[leased % workers]
        grant = master.acquire_split(worker)
        if grant is None:
            break
        master.report_split_progress(
            worker, grant.session_id, grant.epoch, grant.rank, grant.split.split_id, True
        )
        acks.append((grant.split.split_id, 1, True))
        leased += 1
        if len(acks) >= ACK_EVERY:
            master.ack_batches(SESSION_ID, 0, 0, acks)
            acks = []
    if acks:
        master.ack_batches(SESSION_ID, 0, 0, acks)
    seconds = time.perf_counter() - started
    return {
        "splits": leased,
        "workers": workers,
        "seconds": seconds,
        "splits_per_s": leased / seconds,
        "session_splits": len(split_ids),
    }


def _serve(num_splits: int, port_file: str, stop: Any) -> None:
    """Child process: a MasterServer over the synthetic session (in-memory journal)."""
    from dpp_server.master_service import MasterServer

    server = MasterServer(_master(state.MemoryJournal(), num_splits))
    server.start()
    with open(port_file, "w") as f:
        f.write(server.address)
    stop.wait()
    server.stop(0.5)


def drive_grpc(num_splits: int, workers: int, threads: int, budget_s: float) -> dict[str, Any]:
    """The same protocol through the gRPC service; ``threads`` client threads share the
    ``workers`` simulated worker ids."""
    import grpc

    from dpp_proto import master_pb2, master_pb2_grpc

    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        child = ctx.Process(target=_serve, args=(num_splits, port_file, stop), daemon=True)
        child.start()
        try:
            deadline = time.monotonic() + 120
            while not os.path.exists(port_file) or not Path(port_file).read_text():
                if time.monotonic() > deadline or not child.is_alive():
                    raise RuntimeError("the master child did not start")
                time.sleep(0.05)
            address = Path(port_file).read_text()
            channel = grpc.insecure_channel(address)
            stub = master_pb2_grpc.MasterServiceStub(channel)
            ids = [
                stub.RegisterWorker(
                    master_pb2.RegisterWorkerRequest(
                        address=f"127.0.0.1:{10_000 + i}", pipeline_threads=2
                    )
                ).worker_id
                for i in range(workers)
            ]
            stub.BeginEpoch(master_pb2.BeginEpochRequest(session_id=SESSION_ID, rank=0, epoch=0))
            counts = [0] * threads
            done = threading.Event()
            end_at = time.perf_counter() + budget_s

            def loop(t: int) -> None:
                i = t
                while not done.is_set() and time.perf_counter() < end_at:
                    worker = ids[i % workers]
                    i += threads
                    resp = stub.AcquireSplit(master_pb2.AcquireSplitRequest(worker_id=worker))
                    if not resp.HasField("lease"):
                        done.set()
                        return
                    lease = resp.lease
                    stub.ReportSplitProgress(
                        master_pb2.ReportSplitProgressRequest(
                            worker_id=worker,
                            session_id=lease.session_id,
                            epoch=lease.epoch,
                            rank=lease.rank,
                            split_id=lease.split.split_id,
                            done=True,
                        )
                    )
                    counts[t] += 1

            started = time.perf_counter()
            pool = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            seconds = time.perf_counter() - started
            channel.close()
        finally:
            stop.set()
            child.join(10)
            if child.is_alive():
                child.kill()
    leased = sum(counts)
    return {
        "splits": leased,
        "workers": workers,
        "client_threads": threads,
        "seconds": seconds,
        "splits_per_s": leased / seconds,
    }


def run(splits: int, workers: int, grpc_splits: int, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results["memory_journal"] = drive_in_process(
        _master(state.MemoryJournal(), splits), workers, splits, budget_s=120
    )
    with tempfile.TemporaryDirectory(dir=os.environ.get("DPP_BENCH_DIR")) as tmp:
        journal = FileJournal(tmp)
        results["file_journal"] = drive_in_process(
            _master(journal, splits), workers, min(splits, 2_000 if quick else 10_000), 30
        )
        results["file_journal"]["fsyncs"] = journal.appended
        journal.close()
    if grpc_splits:
        results["grpc"] = drive_grpc(grpc_splits, workers, threads=8, budget_s=20 if quick else 40)
    # Heartbeats cost the master too; one per worker per second, measured here per call.
    master = _master(state.MemoryJournal(), 10)
    ids = [master.register_worker(f"127.0.0.1:{i}", 2) for i in range(workers)]
    started = time.perf_counter()
    for i in range(20_000):
        master.heartbeat(ids[i % workers], StageSeconds(), WorkerCounters())
    results["heartbeat_us"] = (time.perf_counter() - started) / 20_000 * 1e6
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--grpc-splits", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.splits, args.workers, args.grpc_splits, args.quick), indent=2))


if __name__ == "__main__":
    main()
