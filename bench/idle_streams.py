"""Does a live session keep its rate while a worker holds many idle client streams?

    python -m bench.idle_streams [--idle 256] [--rows 200000] [--rounds 3]

One real master and one real worker (processes on 127.0.0.1, ``--max-streams`` above
``--idle``). Each round reads one epoch of a generated table with a real ``DppLoader``
twice, side by side: alone, and with ``--idle`` open StreamBatches calls of a session nobody
consumes (each holds a worker server thread). Reported: rows/s of each (median over
rounds) and their ratio, plus how long a stream past the worker's capacity waits for its
answer (RESOURCE_EXHAUSTED at once, instead of queueing unserved).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import grpc

from dpp_client import DppLoader, Feature, Op, SessionSpec
from dpp_proto import master_pb2, master_pb2_grpc, worker_pb2
from dpp_proto.auth import Connection, open_channel
from dpp_server.local_cluster import LocalCluster
from storage import GenConfig, generate_table
from tests.helpers.server import make_spec


def _epoch_rows_per_s(master: str, table: str, connection: Connection | None) -> float:
    spec = SessionSpec(
        table_uri=table,
        features=(
            Feature("d0", "dense", "dense_0", (Op("fill_null", {"value": 0.0}),)),
            *(Feature(f"s{i}", "sparse", f"sparse_{i}") for i in range(4)),
        ),
        batch_size=1024,
        epochs=1,
    )
    with DppLoader(master, spec, connection=connection) as loader:
        started = time.perf_counter()
        rows = sum(batch.num_rows for batch in loader)
        return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=256)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = f"{tmp}/t"
        generate_table(table, GenConfig(rows=args.rows, days=1, dense=1, sparse=4, seed=1))
        with LocalCluster(
            workers=1, pipeline_threads=2, worker_args=["--max-streams", str(args.idle)]
        ) as cluster:
            # The idle streams belong to a real session (the worker asks its master who owns a
            # session before it serves a stream) with a rank each that nobody ever consumes.
            master = master_pb2_grpc.MasterServiceStub(
                open_channel(cluster.master_address, cluster.connection)
            )
            idle_session = master.CreateSession(
                master_pb2.CreateSessionRequest(spec=make_spec(table, world_size=args.idle + 9))
            ).session_id
            channel = open_channel(cluster.workers[0].address, cluster.connection)
            stream = channel.unary_stream(
                "/dpp.v1.WorkerService/StreamBatches",
                request_serializer=worker_pb2.StreamBatchesRequest.SerializeToString,
                response_deserializer=None,
            )
            alone, crowded = [], []
            for _ in range(args.rounds):
                alone.append(_epoch_rows_per_s(cluster.master_address, table, cluster.connection))
                idle = [
                    stream(worker_pb2.StreamBatchesRequest(session_id=idle_session, rank=i))
                    for i in range(args.idle)
                ]
                time.sleep(1.0)
                crowded.append(_epoch_rows_per_s(cluster.master_address, table, cluster.connection))
                for call in idle:
                    call.cancel()
                time.sleep(1.0)
            # Capacity: max_streams + 8 spare; one more is answered at once.
            idle = [
                stream(worker_pb2.StreamBatchesRequest(session_id=idle_session, rank=i))
                for i in range(args.idle + 8)
            ]
            time.sleep(2.0)
            started = time.perf_counter()
            try:
                last = args.idle + 8
                request = worker_pb2.StreamBatchesRequest(session_id=idle_session, rank=last)
                next(iter(stream(request, timeout=60)))
                refused = "served"
            except grpc.RpcError as exc:
                refused = exc.code().name  # type: ignore[attr-defined]
            refused_s = time.perf_counter() - started
            for call in idle:
                call.cancel()
            channel.close()
    result = {
        "idle_streams": args.idle,
        "alone_rows_per_s_median": statistics.median(alone),
        "with_idle_rows_per_s_median": statistics.median(crowded),
        "ratio": statistics.median(crowded) / statistics.median(alone),
        "over_capacity": refused,
        "over_capacity_answer_s": refused_s,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
