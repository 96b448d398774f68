"""Does a live session keep its rate while a worker holds many idle client streams?

    python -m bench.idle_streams [--idle 256] [--rows 200000] [--rounds 3]

One real master and one real worker (processes on 127.0.0.1, ``--max-streams`` above
``--idle``). Each round reads one epoch of a generated table with a real ``DppLoader``
twice, side by side: alone, and with ``--idle`` open StreamBatches calls of sessions nobody
produces for (each holds a worker server thread). Reported: rows/s of each (median over
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
from dpp_proto import worker_pb2
from dpp_server.local_cluster import LocalCluster
from storage import GenConfig, generate_table


def _epoch_rows_per_s(master: str, table: str) -> float:
    spec = SessionSpec(
        table_uri=table,
        features=(
            Feature("d0", "dense", "dense_0", (Op("fill_null", {"value": 0.0}),)),
            *(Feature(f"s{i}", "sparse", f"sparse_{i}") for i in range(4)),
        ),
        batch_size=1024,
        epochs=1,
    )
    with DppLoader(master, spec) as loader:
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
            channel = grpc.insecure_channel(cluster.workers[0].address)
            stream = channel.unary_stream(
                "/dpp.v1.WorkerService/StreamBatches",
                request_serializer=worker_pb2.StreamBatchesRequest.SerializeToString,
                response_deserializer=None,
            )
            alone, crowded = [], []
            for _ in range(args.rounds):
                alone.append(_epoch_rows_per_s(cluster.master_address, table))
                idle = [
                    stream(worker_pb2.StreamBatchesRequest(session_id=f"idle-{i}", rank=0))
                    for i in range(args.idle)
                ]
                time.sleep(1.0)
                crowded.append(_epoch_rows_per_s(cluster.master_address, table))
                for call in idle:
                    call.cancel()
                time.sleep(1.0)
            # Capacity: max_streams + 8 spare; one more is answered at once.
            idle = [
                stream(worker_pb2.StreamBatchesRequest(session_id=f"idle-{i}", rank=0))
                for i in range(args.idle + 8)
            ]
            time.sleep(2.0)
            started = time.perf_counter()
            try:
                next(iter(stream(worker_pb2.StreamBatchesRequest(session_id="x"), timeout=60)))
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
