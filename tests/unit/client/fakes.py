"""Test-only fakes of the loader's seams: a :class:`~dpp_client.master_link.MasterLink` that
answers from canned data, and a worker dialer whose streams replay frames a test feeds.

No sockets, no sleeps: tests wait on the events and queues these fakes expose.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from dpp_client.errors import DppClientError, DppUnavailableError
from dpp_client.spec import SessionSpec
from dpp_proto import master_pb2, worker_pb2

_END = object()


class FakeMasterLink:
    """A MasterLink from canned data; records every request (``requests``) and every ack
    (``acks``, a queue a test can block on)."""

    def __init__(self, splits: list[str], epochs: int = 2, workers: tuple[str, ...] = ()) -> None:
        self.splits = splits
        self.epochs = epochs
        self.requests: list[Any] = []
        self.acks: queue.Queue[master_pb2.AckBatchesRequest] = queue.Queue()
        self.begun: queue.Queue[int] = queue.Queue()  # epochs asked by BeginEpoch, in order
        self.ack_response = master_pb2.AckBatchesResponse()
        self.ack_failures = 0  # the next N acks fail as if the master were away
        self.create_error: DppClientError | None = None
        self.validate_error: DppClientError | None = None
        self.validated: list[SessionSpec] = []
        self.plan = master_pb2.SessionPlan()
        self.list_error: DppClientError | None = None
        self.known_sessions: set[str] = set()
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self.set_workers(*workers)

    def set_workers(self, *addresses: str) -> None:
        with self._lock:
            self._workers = [
                master_pb2.WorkerInfo(worker_id=f"w-{a}", address=a) for a in addresses
            ]

    def create_session(
        self, spec: SessionSpec, session_name: str
    ) -> master_pb2.CreateSessionResponse:
        self.requests.append(
            master_pb2.CreateSessionRequest(spec=spec.to_proto(), session_name=session_name)
        )
        if self.create_error is not None:
            raise self.create_error
        return master_pb2.CreateSessionResponse(session_id="s1", plan=self.plan)

    def validate_spec(self, spec: SessionSpec, session_name: str) -> None:
        self.validated.append(spec)
        if self.validate_error is not None:
            raise self.validate_error

    def session_exists(self, session_id: str) -> master_pb2.SessionPlan | None:
        return self.plan if session_id in self.known_sessions else None

    def begin_epoch(
        self, request: master_pb2.BeginEpochRequest
    ) -> master_pb2.BeginEpochResponse | None:
        self.requests.append(request)
        self.begun.put(request.epoch)
        if request.epoch >= self.epochs:
            return None
        return master_pb2.BeginEpochResponse(split_ids=self.splits, epochs=self.epochs)

    def ack_batches(self, request: master_pb2.AckBatchesRequest) -> master_pb2.AckBatchesResponse:
        with self._lock:
            if self.ack_failures:
                self.ack_failures -= 1
                raise DppUnavailableError("AckBatches at master fake failed: restarting")
        self.requests.append(request)
        self.acks.put(request)
        return self.ack_response

    def list_workers(self) -> list[master_pb2.WorkerInfo]:
        if self.list_error is not None:
            raise self.list_error
        with self._lock:
            return list(self._workers)

    def close(self) -> None:
        self.closed.set()


class FakeStream:
    """A StreamBatches call replaying its worker's feed until cancelled."""

    def __init__(self, feed: queue.Queue[object]) -> None:
        self._feed = feed
        self.cancelled = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._feed.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    def cancel(self) -> None:
        self.cancelled.set()
        self._feed.put(_END)

    def close(self) -> None:
        pass


class FakeWorkers:
    """A worker dialer: each address has a feed of frames (or errors) that its streams replay.

    Thread-safe: ``_cond`` guards ``_feeds``, ``dials`` and ``streams``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._feeds: dict[str, queue.Queue[object]] = {}
        self.dials: list[tuple[str, worker_pb2.StreamBatchesRequest]] = []
        self.streams: dict[str, list[FakeStream]] = {}

    def _feed(self, address: str) -> queue.Queue[object]:
        with self._cond:
            return self._feeds.setdefault(address, queue.Queue())

    def __call__(self, address: str, request: worker_pb2.StreamBatchesRequest) -> FakeStream:
        stream = FakeStream(self._feed(address))
        with self._cond:
            self.dials.append((address, request))
            self.streams.setdefault(address, []).append(stream)
            self._cond.notify_all()
        return stream

    def feed(self, address: str, *frames: bytes | BaseException) -> None:
        feed = self._feed(address)
        for frame in frames:
            feed.put(frame)

    def wait_dials(self, address: str, count: int, timeout_s: float = 10.0) -> None:
        """Blocks until ``address`` was dialled ``count`` times."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(a == address for a, _ in self.dials) >= count, timeout_s
            )
        assert ok, f"{address} dialled {sum(a == address for a, _ in self.dials)} times"
