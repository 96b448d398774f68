"""What the trainer's process pays per 1M rows of the DLRM job, per wire layout and transport.

    python -m bench.client_cpu [--table URI] [--frames 60] [--out bench/results/client_cpu.json]
    python -m bench.client_cpu --only shaped      # the 1 Gbit/s link (root: unshare + tc)

Frames are real: the worker's own :func:`~dpp_server.produce.produce_split` over the table,
encoded with each :class:`~dpp_proto.wire.WireOptions` compared (same rows, one run):

* ``before``: the per-feature layout with int64 ids (what workers sent before issue 15);
* ``packed64``: the packed (KeyedJaggedTensor) layout, ids kept int64 (lever 2 alone);
* ``offsets32``: packed with int32 ids where the op chain bounds them, int32 offsets (the
  default before narrow lengths);
* ``after``: the same with the list lengths as uint8/uint16 where a batch allows (the
  default now);
* ``after+lz4`` / ``after+zstd``: the same with Arrow IPC buffer compression.

Measures (CPU is this process's ``getrusage``, every thread; medians of ``--repeats``):

* ``decode``: ``decode_frame`` + ``batch_from_arrow`` in a loop, no network.
* ``ingest``: the trainer's whole path: a server child process streams the frames; each of
  1, 2 or 4 concurrent streams is read by its own thread that decodes and converts every frame
  (what ``dpp_client.fan_in`` does). Transports:

  - ``grpc`` / ``grpc+tls``: dpp's own StreamBatches: the worker's ``WorkerServicer`` (and,
    with TLS, its ``AuthInterceptor`` with a real token file, mTLS with the cluster's
    certificates from :func:`dpp_server.pki.make_credentials`) and the client's
    ``GrpcStream``;
  - ``socket`` / ``socket+tls``: dpp's data plane (:mod:`dpp_proto.data_plane`): the worker's
    ``FrameServer`` (hello, the same guard, TLS) and the client's ``SocketStream``
    (``recv_into`` into an uninitialized Arrow buffer per frame);
  - ``flight``: Arrow Flight ``do_get``, plaintext; each frame one ``binary`` cell, so the
    frame contract is unchanged; the C++ client reads without the GIL (a bench server, not
    dpp code: the candidate not chosen).

  Both dpp servers drain a real :class:`~dpp_server.worker.FrameBuffer` fed by a thread (the
  frames are made before, outside the measurement) through a stand-in for the worker. The
  server child's own CPU over the run is ``worker_cpu_s_per_m_rows``: the worker's send cost.
* ``batch_size``: the ``after`` layout over grpc at 4096, 16384 and 65536 rows; the per-batch
  fixed cost is the intercept of trainer CPU per frame against rows per frame.
* ``fixed_cost``: the per-batch fixed cost measured over many frames of 256 to 65536 rows
  (about 2M rows per point, sizes alternating within each repeat): trainer CPU per frame of
  ``decode`` (no network) and of ``ingest`` over grpc (1 stream), fitted by least squares to
  ``a + b * rows``; ``a`` is the fixed cost of a batch, ``b`` the cost of a row.
* ``shaped``: the loopback of a fresh network namespace shaped to 1 Gbit/s with ``tc tbf``
  (netem is not available here), grpc, 1 stream: rows/s of ``after`` with and without
  compression.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import multiprocessing
import os
import pickle
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.measure import cpu_s, self_cpu_s
from bench.workloads import workloads
from dpp_client.batch import batch_from_arrow
from dpp_client.frames import decode_frame
from dpp_proto.wire import FrameEncoder, WireOptions
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, StageTotals, produce_split
from dpp_server.spec import Spec, int32_features, spec_from_proto
from storage import Table, parse_filter

LAYOUTS = ("before", "packed64", "offsets32", "after", "after+lz4", "after+zstd")
TRANSPORTS = ("grpc", "grpc+tls", "flight", "socket", "socket+tls")


def wire_options(layout: str, spec: Spec) -> WireOptions:
    if layout == "before":
        return WireOptions(packed=False)
    if layout == "packed64":
        return WireOptions(narrow_lengths=False)
    if layout == "offsets32":
        return WireOptions(int32_features=int32_features(spec), narrow_lengths=False)
    compression = layout.partition("+")[2] or None
    return WireOptions(int32_features=int32_features(spec), compression=compression)


def make_frames(
    table_uri: str, quick: bool, count: int, layout: str = "after", batch_size: int = 4096
) -> list[bytes]:
    """``count`` full-batch frames of the DLRM job, produced by the worker's own
    :func:`~dpp_server.produce.produce_split` and encoded in ``layout``."""
    proto = workloads(quick)["dlrm"].spec(table_uri).to_proto()
    proto.batch_size = batch_size
    spec = spec_from_proto(proto)
    table = Table.open(spec.table_uri)
    row_filter = parse_filter(spec.row_filter, "row_filter")
    session = SessionPipeline.compile(spec, read_batch_rows=65_536)
    session = dataclasses.replace(session, encoder=FrameEncoder(wire_options(layout, spec)))
    frames: list[bytes] = []
    split_rows = max(spec.target_split_rows, batch_size * 2)
    for split in table.plan_splits(split_rows, row_filter=row_filter).splits:
        lease = LeaseGrant(session_id="", epoch=0, rank=0, split=split, start_batch=0)
        for frame in produce_split(session, lease, StageTotals()):
            if decode_frame(frame)[0].num_rows == batch_size:
                frames.append(frame)
                if len(frames) >= count:
                    return frames
    return frames


# -- servers (child processes) ------------------------------------------------------------------


def _serve(transport: str, frames_file: str, repeat: int, port_file: str, creds: str) -> None:
    """Child process: streams the frames ``repeat`` times to each caller."""
    frames: list[bytes] = pickle.loads(Path(frames_file).read_bytes())
    if transport == "flight":
        _serve_flight(frames, repeat, port_file)
    else:
        _serve_dpp(transport, frames, repeat, port_file, creds)


class _BenchWorker:
    """What the worker's stream servers use of a :class:`~dpp_server.worker.Worker`: a
    frame buffer per (session, rank), fed ``repeat`` times with the frames by a thread."""

    stopping = False

    def __init__(self, frames: list[bytes], repeat: int) -> None:
        from dpp_server.worker import FrameBuffer, _ActiveSplits

        self._frames = frames
        self._repeat = repeat
        self._make = lambda: FrameBuffer(64 << 20)
        self._buffers: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        self.streams = _ActiveSplits()

    def buffer(self, session_id: str, rank: int) -> Any:
        with self._lock:
            key = (session_id, rank)
            if key not in self._buffers:
                buffer = self._buffers[key] = self._make()

                def feed() -> None:
                    for _ in range(self._repeat):
                        for frame in self._frames:
                            buffer.put(frame)

                threading.Thread(target=feed, daemon=True).start()
            return self._buffers[key]


def _serve_dpp(
    transport: str, frames: list[bytes], repeat: int, port_file: str, creds: str
) -> None:
    """dpp's StreamBatches servers (gRPC or the data plane), with TLS and tokens or not."""
    from concurrent import futures

    import grpc

    from dpp_server.auth import AuthInterceptor, SecuritySettings, bind, guard_of
    from dpp_server.frame_server import FrameServer
    from dpp_server.pki import Credentials
    from dpp_server.worker_service import GRPC_OPTIONS, WorkerServicer

    if transport.endswith("+tls"):
        files = Credentials.at(Path(creds))
        settings = SecuritySettings(
            tls_cert=str(files.server_cert),
            tls_key=str(files.server_key),
            tls_ca=str(files.ca),
            token_file=str(files.token_file),
        )
    else:
        settings = SecuritySettings(insecure=True)
    tenant = "" if settings.insecure else "local"  # the user's tenant of make_credentials
    guard = guard_of(settings, lambda session_id: tenant)
    worker = _BenchWorker(frames, repeat)
    if transport.startswith("grpc"):
        server = grpc.server(
            futures.ThreadPoolExecutor(8),
            options=GRPC_OPTIONS,
            interceptors=[AuthInterceptor(guard)],
        )
        server.add_generic_rpc_handlers([WorkerServicer(worker).handler()])  # type: ignore[arg-type]
        port = bind(server, "127.0.0.1:0", settings)
        server.start()
    else:
        frame_server = FrameServer(worker, guard, settings)  # type: ignore[arg-type]
        frame_server.start()
        port = frame_server.port
    Path(port_file).write_text(f"127.0.0.1:{port}")
    time.sleep(600)


def _serve_flight(frames: list[bytes], repeat: int, port_file: str) -> None:
    import pyarrow as pa
    import pyarrow.flight as fl

    schema = pa.schema([pa.field("frame", pa.binary())])
    batches = [pa.record_batch([pa.array([f], pa.binary())], schema=schema) for f in frames]

    class Server(fl.FlightServerBase):  # type: ignore[misc]
        def do_get(self, context: Any, ticket: Any) -> Any:
            return fl.GeneratorStream(schema, (b for _ in range(repeat) for b in batches))

    server = Server("grpc://127.0.0.1:0")
    Path(port_file).write_text(f"127.0.0.1:{server.port}")
    server.serve()


# -- clients: each yields the frames of one stream as bytes-like objects --------------------------


def _dpp_frames(transport: str, address: str, stream: int, total: int, creds: str) -> Iterator[Any]:
    """The frames of one dpp stream (``stream`` is its rank), cancelled after ``total``."""
    from dpp_client.fan_in import GrpcStream
    from dpp_client.socket_stream import SocketStream
    from dpp_proto import worker_pb2
    from dpp_proto.auth import load_connection

    connection = None
    if transport.endswith("+tls"):
        connection = load_connection(Path(creds) / "connection.json")
    request = worker_pb2.StreamBatchesRequest(session_id="bench", rank=stream)
    dial = GrpcStream if transport.startswith("grpc") else SocketStream
    call = dial(address, request, connection)
    try:
        for count, raw in enumerate(call, 1):
            yield raw
            if count == total:
                call.cancel()
                return
    finally:
        call.close()


def _flight_frames(address: str) -> Iterator[Any]:
    import pyarrow.flight as fl

    client = fl.FlightClient(f"grpc://{address}")
    try:
        reader = client.do_get(fl.Ticket(b"frames"))
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return
            column = chunk.data.column(0)
            _, offsets_buf, data = column.buffers()
            bounds = struct.unpack_from(f"<{len(column) + 1}i", offsets_buf, column.offset * 4)
            for start, end in itertools.pairwise(bounds):
                yield data.slice(start, end - start)  # zero copy: a view of the received data
    finally:
        client.close()


_SCRATCH = tempfile.TemporaryDirectory(prefix="dpp-client-cpu-")
_FRAME_FILES: dict[tuple[Any, ...], str] = {}


def _frames_file(frame_args: tuple[Any, ...]) -> str:
    """The frames of ``frame_args``, made once per run and pickled for the server children."""
    path = _FRAME_FILES.get(frame_args)
    if path is None:
        path = os.path.join(_SCRATCH.name, f"frames-{len(_FRAME_FILES)}.pickle")
        Path(path).write_bytes(pickle.dumps(make_frames(*frame_args)))
        _FRAME_FILES[frame_args] = path
    return path


def _credentials() -> str:
    """A secured cluster's files (CA, server and client certificates, tokens), made once."""
    from dpp_server.pki import make_credentials

    folder = os.path.join(_SCRATCH.name, "creds")
    if not os.path.exists(folder):
        make_credentials(folder)
    return folder


def measure_ingest(
    transport: str, frame_args: tuple[Any, ...], streams: int, repeat: int
) -> dict[str, float]:
    """The trainer's whole path over ``streams`` concurrent streams of one server child."""
    ctx = multiprocessing.get_context("spawn")
    frames_file = _frames_file(frame_args)
    creds = _credentials()
    total = repeat * frame_args[2] if transport != "flight" else 0
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        child = ctx.Process(
            target=_serve, args=(transport, frames_file, repeat, port_file, creds), daemon=True
        )
        child.start()
        try:
            deadline = time.monotonic() + 180
            while not os.path.exists(port_file) or not Path(port_file).read_text():
                if time.monotonic() > deadline or not child.is_alive():
                    raise RuntimeError(f"the {transport} frame server did not start")
                time.sleep(0.05)
            time.sleep(0.2)
            address = Path(port_file).read_text()
            totals = {"rows": 0, "bytes": 0, "frames": 0}
            lock = threading.Lock()
            errors: list[BaseException] = []

            def run(stream: int) -> None:
                rows = size = frames = 0
                try:
                    if transport == "flight":
                        source = _flight_frames(address)
                    else:
                        source = _dpp_frames(transport, address, stream, total, creds)
                    for raw in source:
                        header, rb = decode_frame(raw)
                        if rb is not None:
                            batch_from_arrow(rb)
                        rows += header.num_rows
                        size += len(raw)
                        frames += 1
                except BaseException as exc:  # surfaced below
                    errors.append(exc)
                with lock:
                    totals["rows"] += rows
                    totals["bytes"] += size
                    totals["frames"] += frames

            threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
            server0 = cpu_s(child.pid)
            cpu0, wall0 = self_cpu_s(), time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            cpu, wall = self_cpu_s() - cpu0, time.perf_counter() - wall0
            server_cpu = cpu_s(child.pid) - server0
            if errors:
                raise errors[0]
        finally:
            child.kill()
            child.join(10)
    rows = totals["rows"]
    return {
        "streams": streams,
        "frames": totals["frames"],
        "rows_per_s": rows / wall,
        "gb_per_s": totals["bytes"] / wall / 1e9,
        "cpu_s_per_m_rows": cpu / rows * 1e6,
        "cpu_ms_per_frame": cpu / totals["frames"] * 1e3,
        "worker_cpu_s_per_m_rows": server_cpu / rows * 1e6,
    }


def measure_decode(frames: list[bytes], rounds: int) -> dict[str, float]:
    for frame in frames:  # warm up
        batch_from_arrow(decode_frame(frame)[1])  # type: ignore[arg-type]
    rows = sum(decode_frame(f)[0].num_rows for f in frames) * rounds
    cpu0 = time.process_time()
    for _ in range(rounds):
        for frame in frames:
            _, rb = decode_frame(frame)
            batch_from_arrow(rb)  # type: ignore[arg-type]
    cpu = time.process_time() - cpu0
    return {
        "us_per_frame": cpu / (rounds * len(frames)) * 1e6,
        "cpu_s_per_m_rows": cpu / rows * 1e6,
    }


FIXED_COST_SIZES = (256, 1024, 4096, 16384, 65536)
_FIXED_COST_ROWS = 2_000_000


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = a + b * x``: (a, b)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var
    return mean_y - slope * mean_x, slope


def measure_fixed_cost(table_uri: str, quick: bool, repeats: int) -> dict[str, Any]:
    """Trainer CPU per frame against rows per frame, decode alone and over grpc."""
    counts = {size: max(4, 4 * 65536 // size) for size in FIXED_COST_SIZES}
    frames = {size: make_frames(table_uri, quick, counts[size], "after", size) for size in counts}
    decode_runs: list[dict[str, Any]] = []
    grpc_runs: list[dict[str, Any]] = []
    for _ in range(repeats):
        for size in FIXED_COST_SIZES:
            rows = size * len(frames[size])
            rounds = max(1, _FIXED_COST_ROWS // rows)
            got = measure_decode(frames[size], rounds)
            decode_runs.append(
                {"batch_size": size, **got, "rows_per_cpu_s": 1e6 / got["cpu_s_per_m_rows"]}
            )
            args = (table_uri, quick, counts[size], "after", size)
            grpc_runs.append({"batch_size": size, **measure_ingest("grpc", args, 1, rounds)})
    out: dict[str, Any] = {}
    for name, runs, per_frame in (
        ("decode", decode_runs, "us_per_frame"),
        ("grpc", grpc_runs, "cpu_ms_per_frame"),
    ):
        grouped = _group(runs, ("batch_size",))
        scale = 1.0 if per_frame == "us_per_frame" else 1e3
        fixed_us, per_row_us = _fit(
            [(float(g["batch_size"]), g[per_frame] * scale) for g in grouped]
        )
        out[name] = {"runs": grouped, "fixed_us_per_batch": fixed_us, "us_per_row": per_row_us}
    return out


def pick(result: dict[str, Any], layout: str, transport: str, streams: int) -> dict[str, Any]:
    """One ``ingest`` entry of a :func:`run` result."""
    for entry in result["ingest"]:
        if (entry["layout"], entry["transport"], entry["streams"]) == (layout, transport, streams):
            return dict(entry)
    raise KeyError((layout, transport, streams))


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def run(
    table_uri: str,
    quick: bool,
    frames: int,
    repeats: int,
    only: set[str],
    transports: tuple[str, ...] = TRANSPORTS,
    ingest_layouts: tuple[str, ...] = ("before", "after"),
    stream_counts: tuple[int, ...] = (1, 2, 4),
    progress: str = "",
) -> dict[str, Any]:
    out: dict[str, Any] = {"table": table_uri, "frames": frames, "repeats": repeats}
    if "layouts" in only:
        layouts: dict[str, Any] = {}
        made = {layout: make_frames(table_uri, quick, frames, layout) for layout in LAYOUTS}
        decodes: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
        for _ in range(repeats):  # alternate layouts within each repeat (a noisy machine)
            for layout, encoded in made.items():
                decodes[layout].append(measure_decode(encoded, 5))
        for layout, encoded in made.items():
            rows = sum(decode_frame(f)[0].num_rows for f in encoded)
            layouts[layout] = {
                "bytes_per_row": sum(len(f) for f in encoded) / rows,
                "decode": _median(decodes[layout]),
            }
        out["layouts"] = layouts
    if "ingest" in only:
        ingest: list[dict[str, Any]] = []
        for streams in stream_counts:
            for _ in range(repeats):  # alternate layouts and transports within each repeat
                for layout in ingest_layouts:
                    for transport in transports:
                        args = (table_uri, quick, frames, layout, 4096)
                        got = _retried(
                            functools.partial(
                                measure_ingest, transport, args, streams, max(1, 4 // streams)
                            )
                        )
                        ingest.append({"layout": layout, "transport": transport, **got})
                        if progress:
                            Path(progress).write_text(json.dumps(ingest, indent=1) + "\n")
        out["ingest"] = _group(ingest, ("layout", "transport", "streams"))
    if "batch_size" in only:
        sizes: list[dict[str, Any]] = []
        for _ in range(repeats):
            for size in (4096, 16384, 65536):
                count = max(3, frames * 4096 // size)
                args = (table_uri, quick, count, "after", size)
                got = measure_ingest("grpc", args, 1, repeat=2)
                sizes.append({"batch_size": size, **got})
        grouped = _group(sizes, ("batch_size",))
        points = [(float(g["batch_size"]), g["cpu_ms_per_frame"]) for g in grouped]
        slope = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
        out["batch_size"] = {
            "runs": grouped,
            "fixed_cost_ms_per_batch": points[0][1] - slope * points[0][0],
            "cost_us_per_row": slope * 1e3,
        }
    if "fixed_cost" in only:
        out["fixed_cost"] = measure_fixed_cost(table_uri, quick, repeats)
    if "shaped" in only:
        out["shaped"] = measure_shaped(table_uri, quick, frames, repeats)
    return out


def _retried(measure: Callable[[], dict[str, float]], attempts: int = 3) -> dict[str, float]:
    """A measurement, tried again when the loaded machine made a connection time out."""
    for attempt in range(attempts):
        try:
            return measure()
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            print(f"measurement failed ({exc!r:.200}); again", file=sys.stderr)
    raise AssertionError("unreachable")


def _group(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return [
        {
            **dict(zip(keys, key, strict=True)),
            **_median([{k: v for k, v in r.items() if k not in keys} for r in rs]),
        }
        for key, rs in groups.items()
    ]


def measure_shaped(table_uri: str, quick: bool, frames: int, repeats: int) -> dict[str, Any]:
    """Runs ``--inner-shaped`` in a new network namespace whose loopback is shaped."""
    script = (
        "ip link set lo up && tc qdisc add dev lo root tbf rate 1gbit burst 128kb latency 50ms "
        f"&& exec {sys.executable} -m bench.client_cpu --inner-shaped --table {table_uri} "
        f"--frames {frames} --repeats {repeats}" + (" --quick" if quick else "")
    )
    done = subprocess.run(
        ["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"skipped": f"needs root, unshare and tc: {done.stderr.strip()[-300:]}"}
    return dict(json.loads(done.stdout))


def inner_shaped(table_uri: str, quick: bool, frames: int, repeats: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for _ in range(repeats):
        for layout in ("before", "after", "after+lz4", "after+zstd"):
            got = measure_ingest("grpc", (table_uri, quick, frames, layout, 4096), 1, repeat=1)
            runs.append({"layout": layout, **got})
    return {"link": "tbf rate 1gbit burst 128kb latency 50ms", "runs": _group(runs, ("layout",))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", default="/tmp/dpp-bench/dlrm-300000-13d26s-seed0")
    parser.add_argument("--quick", action="store_true", help="--table is the quick table")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only",
        default="layouts,ingest,batch_size,shaped",
        help="comma-separated parts: layouts, ingest, batch_size, fixed_cost, shaped",
    )
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="ingest: which")
    parser.add_argument("--ingest-layouts", default="before,after", help="ingest: which")
    parser.add_argument("--streams", default="1,2,4", help="ingest: concurrent stream counts")
    parser.add_argument("--out", default="", help="also write the JSON here")
    parser.add_argument("--inner-shaped", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner_shaped:
        print(json.dumps(inner_shaped(args.table, args.quick, args.frames, args.repeats)))
        return
    result = run(
        args.table,
        args.quick,
        args.frames,
        args.repeats,
        set(args.only.split(",")),
        tuple(args.transports.split(",")),
        tuple(args.ingest_layouts.split(",")),
        tuple(int(n) for n in args.streams.split(",")),
        progress=args.out + ".partial" if args.out else "",
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
