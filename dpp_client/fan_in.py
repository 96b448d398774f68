"""The stream fan-in: one StreamBatches stream per worker, merged into one bounded queue.

Each stream goes over the worker's data plane (``data_dial``, :mod:`dpp_proto.data_plane`)
when the worker advertises a data address and the loader allows it, else over gRPC
StreamBatches (``dial``); both are a :class:`StreamCall`, fail with gRPC-shaped errors and are
handled alike below.

Owns the worker streams of one (session, rank): which workers to stream from (a refresher
thread re-lists them through the master), a thread per stream that decodes frames (and
converts whole batches to tensors, off the trainer's thread), and the queue that hands frames
and background errors to the trainer. When the queue is full a stream thread blocks, stops
reading, and gRPC flow control pushes back on its worker. Knows the proto, grpc and Arrow;
must never import ``dpp_server`` or ``storage``.

Protocol, worked example (workers W1, W2; W2 is killed):

1. :meth:`FanIn.sync` with [W1, W2] opens ``StreamBatches(session, rank)`` to each; streams
   stay open across epochs.
2. W2 dies: its stream fails with UNAVAILABLE. The thread waits a :class:`Backoff` delay and
   re-dials, for as long as W2 stays listed (gRPC's own retry cannot re-open a stream that
   already delivered frames). A worker serving its ``max_streams`` already answers
   RESOURCE_EXHAUSTED: re-dialled the same way, with a warning.
3. The refresher's next ``ListWorkers`` no longer lists W2: its stream is cancelled and its
   thread ends. A new W3 is listed: a stream to it is opened.
4. A frame that cannot be decoded, or a non-retryable stream error, is queued as a failure;
   :meth:`FanIn.get` raises it in the trainer's thread, after the frames queued before it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import grpc
import pyarrow as pa

from dpp_client.batch import Batch
from dpp_client.errors import (
    RETRYABLE_CODES,
    DppClientError,
    DppUnavailableError,
    error_from_rpc,
    rpc_code,
)
from dpp_client.frames import decode_frame
from dpp_client.metrics import LoaderCounters
from dpp_proto import master_pb2, worker_pb2
from dpp_proto.auth import Connection, open_channel
from dpp_proto.retry import Backoff, channel_options

__all__ = ["FanIn", "Frame", "GrpcStream", "StreamCall", "WorkerDialer"]

_log = logging.getLogger(__name__)

STREAM_METHOD = "/dpp.v1.WorkerService/StreamBatches"
_CHANNEL_OPTIONS = channel_options(max_receive_bytes=256 << 20, max_send_bytes=16 << 20)
_POLL_S = 0.5  # how often a blocked put re-checks for cancellation


class StreamCall(Protocol):
    """An open StreamBatches call: iterate its raw frames, cancel it, release it."""

    def __iter__(self) -> Iterator[bytes]: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


#: Opens a StreamBatches call to the worker at an address (tests pass a fake).
WorkerDialer = Callable[[str, worker_pb2.StreamBatchesRequest], StreamCall]


class GrpcStream:
    """A StreamBatches call on its own channel (raw-bytes frames, no protobuf copy), with the
    connection's credentials (None: plaintext, for an --insecure cluster)."""

    def __init__(
        self,
        address: str,
        request: worker_pb2.StreamBatchesRequest,
        connection: Connection | None = None,
    ) -> None:
        self._channel = open_channel(address, connection, _CHANNEL_OPTIONS)
        stream = self._channel.unary_stream(
            STREAM_METHOD,
            request_serializer=worker_pb2.StreamBatchesRequest.SerializeToString,
            response_deserializer=None,
        )
        self._call = stream(request)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._call)

    def cancel(self) -> None:
        self._call.cancel()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()


@dataclass
class Frame:
    """A decoded frame; ``prepared`` is its batch already converted when the frame is whole."""

    header: worker_pb2.FrameHeader
    rb: pa.RecordBatch | None
    prepared: Batch | None


@dataclass
class _Failure:
    error: BaseException


class _WorkerStream:
    """One worker's stream thread and its cancellation handles.

    Shared between its stream thread, the refresher and ``close``: ``lock`` guards ``call``
    and the decision to start a new call, so a cancel can never miss a call being started.
    """

    def __init__(self, worker_id: str, address: str, data_address: str = "") -> None:
        self.worker_id = worker_id
        self.address = address
        self.data_address = data_address  # the worker's data plane ("": gRPC only)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.call: StreamCall | None = None
        self.thread: threading.Thread | None = None

    def cancel(self) -> None:
        with self.lock:
            self.stop.set()
            if self.call is not None:
                self.call.cancel()


class FanIn:
    """Streams of every listed worker, merged into one queue for the trainer's thread.

    Thread-safety: ``_lock`` guards ``_streams`` (stream threads are started and stopped only
    under it); each stream's own lock guards its call; the queue and the counters are
    thread-safe. :meth:`get` is for the trainer's thread only.

    Args:
        session_id: the session streamed.
        rank: this trainer's rank.
        batch_size: rows of a whole batch (converted by the stream threads).
        prefetch_batches: frames buffered between the streams and the trainer.
        to_batch: converts (and pins) a whole frame's rows.
        counters: where ``decode_s`` and ``bytes_received`` are added.
        dial: opens a gRPC StreamBatches stream to a worker's address.
        data_dial: opens a stream to a worker's data address (a worker that lists one);
            None: every stream over ``dial``.
        on_end_frame: called from a stream thread with (epoch, split id) once a split's end
            frame is queued (the epoch overlap watches them); must be quick and thread-safe.
    """

    def __init__(
        self,
        *,
        session_id: str,
        rank: int,
        batch_size: int,
        prefetch_batches: int,
        to_batch: Callable[[pa.RecordBatch], Batch],
        counters: LoaderCounters,
        dial: WorkerDialer = GrpcStream,
        data_dial: WorkerDialer | None = None,
        on_end_frame: Callable[[int, str], None] | None = None,
    ) -> None:
        self._data_dial = data_dial
        self._on_end_frame = on_end_frame
        self._request = worker_pb2.StreamBatchesRequest(session_id=session_id, rank=rank)
        self._batch_size = batch_size
        self._to_batch = to_batch
        self._counters = counters
        self._dial = dial
        self._queue: queue.Queue[Frame | _Failure] = queue.Queue(maxsize=prefetch_batches)
        self._lock = threading.Lock()
        self._streams: dict[str, _WorkerStream] = {}
        self._closed = threading.Event()
        self._refresher: threading.Thread | None = None

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def get(self, timeout_s: float) -> Frame | None:
        """The next frame, or None after ``timeout_s`` without one.

        Raises:
            DppClientError: a stream or the refresher failed (the error of that thread).
        """
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, _Failure):
            raise item.error
        return item

    def fail(self, error: BaseException) -> None:
        """Hands an error to the trainer's thread (blocking while the queue is full)."""
        while not self._closed.is_set():
            try:
                self._queue.put(_Failure(error), timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def sync(self, workers: list[master_pb2.WorkerInfo]) -> None:
        """Starts streams for new workers and stops those of workers no longer listed.

        Streams are keyed by address, not worker id: a worker that registers again (after a
        master restart) keeps its stream, so no frame is lost to a needless reconnect.
        """
        listed = {w.address: w.worker_id for w in workers}
        data = {w.address: w.data_address for w in workers}
        with self._lock:
            if self._closed.is_set():
                return
            for address, ws in list(self._streams.items()):
                gone = address not in listed
                if gone or ws.thread is None or not ws.thread.is_alive():
                    if gone:
                        _log.info("worker %s (%s) no longer listed", ws.worker_id, address)
                    ws.cancel()
                    del self._streams[address]
                else:
                    ws.worker_id = listed[address]
                    ws.data_address = data[address]  # used from the next dial on
            for address, worker_id in listed.items():
                if address in self._streams:
                    continue
                ws = _WorkerStream(worker_id, address, data[address])
                ws.thread = threading.Thread(
                    target=self._stream_loop,
                    args=(ws,),
                    name=f"dpp-stream-{address}-r{self._request.rank}",
                    daemon=True,
                )
                self._streams[address] = ws
                ws.thread.start()
        # Threads of dropped workers exit on their own once cancelled; join() waits for the rest.

    def start_refresh(
        self, list_workers: Callable[[], list[master_pb2.WorkerInfo]], interval_s: float
    ) -> None:
        """Re-lists the workers every ``interval_s`` in a thread, and syncs the streams."""
        self._refresher = threading.Thread(
            target=self._refresh_loop,
            args=(list_workers, interval_s),
            name=f"dpp-refresh-r{self._request.rank}",
            daemon=True,
        )
        self._refresher.start()

    def stop(self) -> None:
        """Cancels every stream and the refresher; join them with :meth:`join`."""
        self._closed.set()
        with self._lock:
            streams = list(self._streams.values())
        for ws in streams:
            ws.cancel()

    def join(self, timeout_s: float) -> list[threading.Thread]:
        """Joins every thread; returns those still alive after ``timeout_s`` each."""
        with self._lock:
            threads = [ws.thread for ws in self._streams.values() if ws.thread is not None]
        if self._refresher is not None:
            threads.append(self._refresher)
        for t in threads:
            t.join(timeout_s)
        return [t for t in threads if t.is_alive()]

    def _refresh_loop(
        self, list_workers: Callable[[], list[master_pb2.WorkerInfo]], interval_s: float
    ) -> None:
        failures = 0
        while not self._closed.wait(interval_s):
            try:
                workers = list_workers()
            except DppClientError as exc:
                if self._closed.is_set():
                    return
                if isinstance(exc, DppUnavailableError):  # UNAVAILABLE, ABORTED, deadline
                    failures += 1
                    log = _log.warning if failures % 10 == 1 else _log.debug
                    log("%s; keeping the current streams", exc)
                    continue
                self.fail(exc)
                return
            except Exception as exc:  # e.g. the link closed under the call: surface it
                if not self._closed.is_set():
                    self.fail(exc)
                return
            failures = 0
            self.sync(workers)

    def _stream_loop(self, ws: _WorkerStream) -> None:
        """Streams one worker's frames into the queue, re-dialling while it stays listed."""
        backoff = Backoff(initial_s=0.1, max_s=5.0)
        what = (
            f"StreamBatches(session {self._request.session_id}, rank {self._request.rank}) "
            f"from worker {ws.worker_id} at {ws.address}"
        )
        while not ws.stop.is_set():
            call: StreamCall | None = None
            try:
                with ws.lock:
                    if ws.stop.is_set():
                        return
                    if self._data_dial is not None and ws.data_address:
                        target, plane = ws.data_address, "data plane"
                        call = ws.call = self._data_dial(target, self._request)
                    else:
                        target, plane = ws.address, "gRPC"
                        call = ws.call = self._dial(target, self._request)
                _log.info("streaming from worker %s at %s (%s)", ws.worker_id, target, plane)
                for raw in call:
                    backoff.reset()
                    if not self._forward(raw, ws):
                        return
                _log.info("worker %s at %s ended its stream", ws.worker_id, ws.address)
            except grpc.RpcError as exc:
                if ws.stop.is_set():
                    return
                code = rpc_code(exc)
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    # The worker serves its max_streams already: wait for one to end.
                    _log.warning("%s refused: %s; re-dialling with backoff", what, exc)
                elif code not in RETRYABLE_CODES and code != grpc.StatusCode.CANCELLED:
                    self.fail(error_from_rpc(exc, what))
                    return
                _log.info(
                    "stream from worker %s at %s: %s; re-dialling", ws.worker_id, ws.address, code
                )
            except Exception as exc:  # decode errors and bugs: surface in the trainer
                if not ws.stop.is_set():
                    self.fail(exc)
                return
            finally:
                with ws.lock:
                    ws.call = None
                if call is not None:
                    call.close()
            if not backoff.wait(ws.stop):
                return

    def _forward(self, raw: bytes, ws: _WorkerStream) -> bool:
        """Decodes one frame and queues it; False when the stream should stop."""
        start = time.monotonic()
        header, rb = decode_frame(raw)
        prepared: Batch | None = None
        if rb is not None and rb.num_rows == self._batch_size:
            # Whole frames are delivered unchanged, so convert (and pin) them here, off the
            # trainer's thread. Partial ones are converted after re-batching.
            prepared = self._to_batch(rb)
        self._counters.add(decode_s=time.monotonic() - start, bytes_received=len(raw))
        item = Frame(header, rb, prepared)
        while not ws.stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
            except queue.Full:
                continue
            if header.last_in_split and self._on_end_frame is not None:
                self._on_end_frame(header.epoch, header.split_id)
            return True
        return False
