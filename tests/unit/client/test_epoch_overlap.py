"""Epoch overlap: the next epoch is begun once every frame of the current one is queued, never
twice, never past the last epoch; the assembler's aside bound. Fake master and workers: no
sockets, no processes, no sleeps (tests block on the fakes' queues)."""

from __future__ import annotations

import dataclasses
import queue
from typing import Any

import pytest
from client_frames import encode_frame, header, make_rows
from fakes import FakeMasterLink, FakeWorkers

from dpp_client import DppLoader, Feature, SessionSpec
from dpp_client.assembler import EpochAssembler
from dpp_client.epoch_overlap import EpochOverlap
from dpp_proto import master_pb2

pytestmark = pytest.mark.filterwarnings("ignore:The given buffer is not writable:UserWarning")

WORKER = "fake-worker:1"


def spec(epochs: int) -> SessionSpec:
    return SessionSpec(
        table_uri="/t",
        features=(Feature("dense_0", "dense"), Feature("s", "sparse")),
        label="label",
        batch_size=4,
        epochs=epochs,
    )


def rows(n: int, start: int) -> Any:
    return make_rows(n, dense_dim=1, sparse_names=("s",), row_id_start=start, seed=start)


def make_loader(master: FakeMasterLink, workers: FakeWorkers, **kwargs: Any) -> DppLoader:
    return DppLoader(
        "unused:1",
        spec(master.epochs),
        worker_refresh_s=0.01,
        rpc_timeout_s=5.0,
        master_link=master,
        dial_worker=workers,
        **kwargs,
    )


def epoch_frames(epoch: int, base: int) -> list[bytes]:
    """Two splits of two full batches each (rows base..base+15)."""
    return [
        encode_frame(header("A", 0, epoch=epoch), rows(4, base)),
        encode_frame(header("A", 1, epoch=epoch, last=True), rows(4, base + 4)),
        encode_frame(header("B", 0, epoch=epoch), rows(4, base + 8)),
        encode_frame(header("B", 1, epoch=epoch, last=True), rows(4, base + 12)),
    ]


def begun(master: FakeMasterLink) -> list[int]:
    return [r.epoch for r in master.requests if isinstance(r, master_pb2.BeginEpochRequest)]


def test_next_epoch_begins_while_the_trainer_is_still_in_this_one() -> None:
    master = FakeMasterLink(["A", "B"], epochs=3, workers=(WORKER,))
    workers = FakeWorkers()
    with make_loader(master, workers) as loader:
        it = iter(loader)
        assert master.begun.get(timeout=5) == 0
        workers.feed(WORKER, *epoch_frames(0, 0))
        first = next(it)
        # Every end frame of epoch 0 is queued: epoch 1 is begun before the trainer reaches
        # the rest of epoch 0 (three batches are still unread).
        assert master.begun.get(timeout=5) == 1
        rest = [b.extras["row_id"].tolist()[0] for b in it]
        assert [first.extras["row_id"].tolist()[0], *rest] == [0, 4, 8, 12]
        workers.feed(WORKER, *epoch_frames(1, 100))
        assert [b.extras["row_id"].tolist()[0] for b in loader] == [100, 104, 108, 112]
        assert master.begun.get(timeout=5) == 2
        workers.feed(WORKER, *epoch_frames(2, 200))
        assert [b.extras["row_id"].tolist()[0] for b in loader] == [200, 204, 208, 212]
        assert list(loader) == []  # past the last epoch: asked, and empty
    # Each epoch is begun once (1 and 2 early, by the overlap); 3 is past the last: asked
    # by iter() only.
    assert begun(master) == [0, 1, 2, 3]


def test_without_overlap_an_epoch_begins_only_when_the_trainer_asks() -> None:
    master = FakeMasterLink(["A", "B"], epochs=2, workers=(WORKER,))
    workers = FakeWorkers()
    with make_loader(master, workers, epoch_overlap=False) as loader:
        it = iter(loader)
        workers.feed(WORKER, *epoch_frames(0, 0))
        assert len(list(it)) == 4
        assert begun(master) == [0]
        workers.feed(WORKER, *epoch_frames(1, 100))
        assert len(list(loader)) == 4
    assert begun(master) == [0, 1]


def test_deterministic_order_is_unchanged_by_overlap() -> None:
    """Epoch 1's frames arrive interleaved with epoch 0's tail and out of split order: the
    trainer still gets epoch 0 whole, then epoch 1 in the epoch's split order."""
    master = FakeMasterLink(["A", "B"], epochs=2, workers=(WORKER,))
    workers = FakeWorkers()
    loader = DppLoader(
        "unused:1",
        dataclasses.replace(spec(2), deterministic=True),
        worker_refresh_s=0.01,
        master_link=master,
        dial_worker=workers,
    )
    with loader:
        it = iter(loader)
        e0, e1 = epoch_frames(0, 0), epoch_frames(1, 100)
        workers.feed(WORKER, e0[2], e0[3], e0[0], e1[2], e1[3], e0[1], e1[0], e1[1])
        assert [b.extras["row_id"].tolist()[0] for b in it] == [0, 4, 8, 12]
        assert [b.extras["row_id"].tolist()[0] for b in loader] == [100, 104, 108, 112]


def test_overlap_waits_for_every_split_and_skips_done_ones() -> None:
    link = FakeMasterLink(["A", "B", "C"], epochs=3)
    overlap = EpochOverlap(link, "s1", 0)
    overlap.ended(1, "A")  # an early end frame of epoch 1, before epoch 1 is watched
    overlap.watch(0, ["A", "B"], epochs=3)  # C was done already (a restored checkpoint)
    overlap.ended(0, "A")
    overlap.ended(0, "A")  # a duplicate
    overlap.ended(2, "B")  # of a later epoch: remembered, not counted
    assert link.begun.empty()
    overlap.ended(0, "B")
    assert link.begun.get(timeout=5) == 1
    response = overlap.take(1, timeout_s=5)
    assert response is not None and list(response.split_ids) == ["A", "B", "C"]
    assert overlap.take(1, timeout_s=5) is None  # taken once
    overlap.watch(1, ["A", "B", "C"], epochs=3)  # A's end frame came before: B, C awaited
    overlap.ended(1, "B")
    assert link.begun.empty()
    overlap.ended(1, "C")
    assert link.begun.get(timeout=5) == 2
    overlap.watch(2, ["A", "B", "C"], epochs=3, again=["B"])
    for split_id in "ABC":
        overlap.ended(2, split_id)
    assert overlap.close(5) is None
    with pytest.raises(queue.Empty):
        link.begun.get_nowait()  # epoch 2 is the last: nothing begun early


def test_overlap_reset_forgets_an_early_epoch() -> None:
    link = FakeMasterLink(["A"], epochs=3)
    overlap = EpochOverlap(link, "s1", 0)
    overlap.watch(0, ["A"], epochs=3)
    overlap.ended(0, "A")
    assert link.begun.get(timeout=5) == 1
    overlap.reset()  # a checkpoint was restored
    assert overlap.take(1, timeout_s=5) is None


def test_assembler_keeps_a_bounded_aside_and_names_what_it_dropped() -> None:
    asm: EpochAssembler[None] = EpochAssembler(4, max_aside_frames=2)
    asm.begin_epoch(0, ["A"])
    for seq in range(3):
        asm.push(header("X", seq, epoch=1), rows(4, 4 * seq))
    asm.push(header("Y", 0, epoch=1, last=True), rows(4, 50))
    assert asm.frames_aside == 2 and asm.aside_dropped == 2
    assert asm.take_aside_dropped(1) == ["X", "Y"]
    assert asm.take_aside_dropped(1) == []
    ready = asm.begin_epoch(1, ["X", "Y"])
    assert [r.rb.column("extra.row_id")[0].as_py() for r in ready] == [0, 4]
    assert asm.frames_aside == 0


def test_loader_asks_again_for_splits_dropped_from_the_aside() -> None:
    """A failure left epoch 0 incomplete while epoch 1's frames kept coming: past the aside
    bound they are dropped, and requested again when epoch 1 begins."""
    master = FakeMasterLink(["A", "B"], epochs=2, workers=(WORKER,))
    workers = FakeWorkers()
    with make_loader(master, workers, prefetch_batches=1) as loader:
        it = iter(loader)
        e0, e1 = epoch_frames(0, 0), epoch_frames(1, 100)
        # Epoch 0's B#1 is lost; epoch 1's frames come in front of it.
        workers.feed(WORKER, e0[0], e0[1], e0[2], *e1, e0[3])
        assert [b.extras["row_id"].tolist()[0] for b in it] == [0, 4, 8, 12]
        second = iter(loader)
        ack = master.acks.get(timeout=5)
        while not ack.reproduce:
            ack = master.acks.get(timeout=5)
        assert ack.epoch == 1 and list(ack.reproduce) == ["A", "B"]
        workers.feed(WORKER, *e1)  # produced again; what was kept aside is a duplicate
        assert [b.extras["row_id"].tolist()[0] for b in second] == [100, 104, 108, 112]
