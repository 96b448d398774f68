"""The worker pipeline without transport: a real Master behind an in-process link."""

from __future__ import annotations

import collections
import threading

import pytest

from dpp_client.frames import decode_frame
from dpp_server.master import Master
from dpp_server.worker import FrameBuffer, Worker, WorkerConfig
from tests.helpers.server import InProcessLink, make_spec


def test_frame_buffer_blocks_producers_when_full() -> None:
    buffer = FrameBuffer(max_bytes=10)
    assert buffer.put(b"x" * 2)
    assert buffer.full() is False  # a frame like the largest so far (2 bytes) fits
    assert buffer.get(0.01) == b"x" * 2
    buffer.put(b"x" * 8)
    # full() and put() agree: another 8-byte frame would wait, so the worker skips this stream.
    assert buffer.full() is True
    done = threading.Event()
    waiting = threading.Event()
    condition_wait = buffer._cond.wait

    def observed_wait(timeout: float | None = None) -> bool:
        waiting.set()  # the producer holds no frame in yet and is about to block
        return condition_wait(timeout)

    buffer._cond.wait = observed_wait  # type: ignore[method-assign]

    def produce() -> None:
        buffer.put(b"y" * 8)  # 16 > 10: waits until the first frame is taken
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    assert waiting.wait(10.0), "the producer never waited for room"
    assert not done.is_set()
    assert buffer.fill()[0] == 8
    assert buffer.get(1.0) == b"x" * 8
    assert done.wait(2.0)
    assert buffer.get(1.0) == b"y" * 8
    assert buffer.get(0.01) is None
    thread.join()


def test_frame_buffer_gives_frames_to_the_newest_stream_only() -> None:
    """A trainer that died leaves its stream waiting in get(); once the resumed trainer's
    stream attaches, the old one takes nothing (its frames would be lost with it)."""
    buffer = FrameBuffer(max_bytes=100)
    old = buffer.attach()
    new = buffer.attach()
    assert not buffer.is_consumer(old) and buffer.is_consumer(new)
    buffer.put(b"f0")
    assert buffer.get(0.01, old) is None  # superseded: returns at once, takes nothing
    assert buffer.get(0.01, new) == b"f0"


def test_frame_buffer_wakes_a_superseded_waiter_at_once() -> None:
    buffer = FrameBuffer(max_bytes=100)
    old = buffer.attach()
    got: list[bytes | None] = []
    thread = threading.Thread(target=lambda: got.append(buffer.get(30.0, old)))
    thread.start()
    buffer.attach()
    thread.join(5.0)  # without the wake-up it would wait the whole 30 s
    assert not thread.is_alive() and got == [None]


def test_frame_buffer_a_dead_stream_takes_nothing_and_unget_keeps_the_order() -> None:
    buffer = FrameBuffer(max_bytes=100)
    token = buffer.attach()
    buffer.put(b"f0")
    buffer.put(b"f1")
    assert buffer.get(0.01, token, alive=lambda: False) is None
    assert buffer.fill()[0] == 4
    frame = buffer.get(0.01, token, alive=lambda: True)
    assert frame == b"f0"
    buffer.unget(frame)  # the RPC ended at the yield: the next consumer gets it first
    assert [buffer.get(0.01), buffer.get(0.01)] == [b"f0", b"f1"]
    assert buffer.fill()[0] == 0


def test_a_producer_waiting_on_an_abandoned_buffer_is_released_and_its_wait_measured() -> None:
    now = [100.0]
    buffer = FrameBuffer(max_bytes=10, clock=lambda: now[0])
    lease = object()
    assert buffer.put(b"x" * 8, lease)  # type: ignore[arg-type]
    waited: list[float] = []
    outcome: list[bool] = []
    producer = threading.Thread(
        target=lambda: outcome.append(buffer.put(b"y" * 8, lease, waited.append))  # type: ignore[arg-type]
    )
    producer.start()
    while not waited:  # reported while still waiting, not only once put returns
        producer.join(0.01)
    assert producer.is_alive() and all(w > 0 for w in waited)
    assert buffer.idle_s() == 0.0  # nobody attached yet, but the frame just arrived
    now[0] += 31.0
    assert buffer.idle_s() == 31.0
    assert buffer.close() == [lease]  # the lease whose frames were dropped, once
    producer.join(5.0)
    assert outcome == [False] and buffer.fill() == (0, 0.0) and buffer.get(0.0) is None


def test_an_attached_consumer_with_nothing_to_take_is_not_idle() -> None:
    now = [0.0]
    buffer = FrameBuffer(max_bytes=10, clock=lambda: now[0])
    buffer.attach()
    now[0] += 1000.0
    assert buffer.idle_s() == 0.0
    buffer.put(b"x")
    now[0] += 5.0
    assert buffer.idle_s() == 5.0  # a frame waits and the attached stream does not take it
    assert buffer.get(0.0) == b"x"
    buffer.detach()
    now[0] += 7.0
    assert buffer.idle_s() == 7.0


@pytest.mark.parametrize("batch_size", [1000, 1500, 7000])
def test_worker_produces_every_row_once_in_numbered_batches(
    small_table: str, batch_size: int
) -> None:
    master = Master()
    view, _ = master.create_session(make_spec(small_table, batch_size=batch_size))
    split_ids, _ = master.begin_epoch(view.session_id, 0, 0)
    worker = Worker(InProcessLink(master), "inproc:0", WorkerConfig(pipeline_threads=2))
    worker.start()
    try:
        buffer = worker.buffer(view.session_id, 0)
        seqs: dict[str, list[int]] = collections.defaultdict(list)
        ended: dict[str, int] = {}
        row_ids: list[int] = []
        while len(ended) < len(split_ids):
            frame = buffer.get(10.0)
            assert frame is not None, "the worker stalled"
            header, rows = decode_frame(frame)
            assert not header.error
            if header.last_in_split:
                ended[header.split_id] = header.batch_seq
                assert rows is None
                continue
            assert rows is not None and rows.num_rows == header.num_rows <= batch_size
            seqs[header.split_id].append(header.batch_seq)
            row_ids.extend(rows.column("extra.row_id").to_pylist())
    finally:
        worker.stop()
    assert sorted(row_ids) == list(range(24_000))
    for split_id, last in ended.items():
        assert seqs[split_id] == list(range(last))  # numbered 0..n-1 in order, then the end
    _, streams = master.get_session(view.session_id)
    # Produced, not yet done: each split stays with the worker until the trainer acknowledges.
    assert (streams[0].splits_leased, streams[0].splits_done) == (len(split_ids), 0)
    seconds, counters = worker.stats()
    assert counters.rows_out == 24_000 and counters.splits_done == len(split_ids)
    assert seconds.read_s > 0 and seconds.transform_s > 0 and seconds.serialize_s > 0


def test_a_failing_split_sends_an_error_frame_and_the_worker_goes_on(
    small_table: str,
) -> None:
    master = Master()
    view, _ = master.create_session(make_spec(small_table, batch_size=1000))
    split_ids, _ = master.begin_epoch(view.session_id, 0, 0)
    link = InProcessLink(master)
    # Sabotage one split: pretend planning saw a different file size.
    session = master._ledger.sessions[view.session_id]
    broken = session.splits[0]
    session.splits = (
        type(broken)(
            split_id=broken.split_id,
            path=broken.path,
            file_size=broken.file_size + 1,
            row_groups=broken.row_groups,
            num_rows=broken.num_rows,
            partition=broken.partition,
        ),
        *session.splits[1:],
    )
    worker = Worker(link, "inproc:0", WorkerConfig(pipeline_threads=1))
    worker.start()
    try:
        buffer = worker.buffer(view.session_id, 0)
        errors, ended = [], set()
        while len(ended) < len(split_ids):
            frame = buffer.get(10.0)
            assert frame is not None
            header, _ = decode_frame(frame)
            if header.last_in_split:
                ended.add(header.split_id)
            if header.error:
                errors.append(header.error)
    finally:
        worker.stop()
    assert len(errors) == 1
    assert broken.split_id in errors[0] and broken.path in errors[0]
    assert "was rewritten" in errors[0]
