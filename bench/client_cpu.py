"""What the trainer's process pays per 1M rows, split into receiving the bytes and the rest.

    python -m bench.client_cpu [--table URI] [--frames 200]

* ``receive``: a bare gRPC server (a child process) streams real DLRM frames with the same
  raw-bytes method dpp uses; this process only iterates the stream and drops each message.
  That is the floor any gRPC client pays to get the bytes into Python.
* ``decode``: ``decode_frame`` + ``batch_from_arrow`` on the same frames, in a loop in this
  process without gRPC: the client's own work beyond receiving (header parse, Arrow IPC
  read, the zero-copy tensor views).

CPU is this process's ``getrusage`` (every thread), divided by the rows the frames hold.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.measure import self_cpu_s
from bench.workloads import workloads
from dpp_client.batch import batch_from_arrow
from dpp_client.frames import decode_frame
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, StageTotals, produce_split
from dpp_server.spec import spec_from_proto
from storage import Table, parse_filter

_METHOD = "/bench.Frames/Stream"


def make_frames(table_uri: str, quick: bool, count: int) -> list[bytes]:
    """``count`` full-batch frames of the DLRM job, produced by the worker's own
    :func:`~dpp_server.produce.produce_split`."""
    spec = spec_from_proto(workloads(quick)["dlrm"].spec(table_uri).to_proto())
    table = Table.open(spec.table_uri)
    row_filter = parse_filter(spec.row_filter, "row_filter")
    session = SessionPipeline.compile(spec, read_batch_rows=65_536)
    frames: list[bytes] = []
    for split in table.plan_splits(spec.target_split_rows, row_filter=row_filter).splits:
        lease = LeaseGrant(session_id="", epoch=0, rank=0, split=split, start_batch=0)
        for frame in produce_split(session, lease, StageTotals()):
            if decode_frame(frame)[0].num_rows == spec.batch_size:
                frames.append(frame)
                if len(frames) >= count:
                    return frames
    return frames


def _serve(table_uri: str, quick: bool, count: int, repeat: int, port_file: str) -> None:
    """Child process: streams the frames ``repeat`` times to each caller."""
    from concurrent import futures

    import grpc

    frames = make_frames(table_uri, quick, count)

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(repeat):
            yield from frames

    handler = grpc.method_handlers_generic_handler(
        "bench.Frames",
        {"Stream": grpc.unary_stream_rpc_method_handler(stream)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(port_file).write_text(f"127.0.0.1:{port}")
    server.wait_for_termination(timeout=300)


def measure_receive(table_uri: str, quick: bool, count: int, repeat: int) -> dict[str, float]:
    import grpc

    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        child = ctx.Process(
            target=_serve, args=(table_uri, quick, count, repeat, port_file), daemon=True
        )
        child.start()
        try:
            deadline = time.monotonic() + 120
            while not os.path.exists(port_file):
                if time.monotonic() > deadline or not child.is_alive():
                    raise RuntimeError("the frame server did not start")
                time.sleep(0.05)
            address = Path(port_file).read_text()
            channel = grpc.insecure_channel(
                address, options=[("grpc.max_receive_message_length", 256 << 20)]
            )
            call = channel.unary_stream(_METHOD, response_deserializer=None)
            cpu0, wall0 = self_cpu_s(), time.perf_counter()
            received = messages = 0
            for message in call(b""):
                received += len(message)
                messages += 1
            cpu, wall = self_cpu_s() - cpu0, time.perf_counter() - wall0
            channel.close()
        finally:
            child.kill()
            child.join(10)
    rows = messages * 4096
    return {
        "frames": messages,
        "mb": received / 1e6,
        "gb_per_s": received / wall / 1e9,
        "cpu_s_per_m_rows": cpu / rows * 1e6,
    }


def measure_decode(frames: list[bytes], rounds: int) -> dict[str, float]:
    for frame in frames:  # warm up
        batch_from_arrow(decode_frame(frame)[1])  # type: ignore[arg-type]
    cpu0 = time.process_time()
    for _ in range(rounds):
        for frame in frames:
            _, rb = decode_frame(frame)
            batch_from_arrow(rb)  # type: ignore[arg-type]
    cpu = time.process_time() - cpu0
    rows = rounds * len(frames) * 4096
    return {
        "frames": rounds * len(frames),
        "us_per_frame": cpu / (rounds * len(frames)) * 1e6,
        "cpu_s_per_m_rows": cpu / rows * 1e6,
    }


def run(table_uri: str, quick: bool, frames: int) -> dict[str, Any]:
    encoded = make_frames(table_uri, quick, frames)
    return {
        "frame_mb": len(encoded[0]) / 1e6,
        "receive": measure_receive(table_uri, quick, frames, repeat=2 if quick else 4),
        "decode": measure_decode(encoded, rounds=5 if quick else 20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", default="/tmp/dpp-bench/dlrm-300000-13d26s-seed0")
    parser.add_argument("--quick", action="store_true", help="--table is the quick table")
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    print(json.dumps(run(args.table, args.quick, args.frames), indent=2))


if __name__ == "__main__":
    main()
