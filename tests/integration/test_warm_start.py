"""``DppLoader.start()`` on a live cluster: reading begins before the first ``iter()``.

Issue 15, goal 3 (the warm start). A started loader yields exactly what a plain one yields
(same rows, same order in deterministic mode), begins its first epoch once however often
``start()`` is called, has frames queued before the trainer's first ``next()``, resumes a
checkpoint restored after ``start()`` exactly (each row once, none lost), and refuses to start
once closed.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from dpp_client import Batch, DppLoader, SessionSpec
from dpp_client.errors import DppClientError
from dpp_client.master_link import GrpcMasterLink
from dpp_proto import master_pb2
from dpp_proto.auth import load_connection
from dpp_server.local_cluster import LocalCluster
from tests.helpers.specs import resume_spec

pytestmark = [pytest.mark.integration]

EPOCHS = 2
QUEUED_WITHIN_S = 30.0


class CountingLink(GrpcMasterLink):
    """The real gRPC link, recording the epochs of its BeginEpoch calls (and restores)."""

    def __init__(self, address: str) -> None:
        super().__init__(address, connection=load_connection())
        self.begun: list[tuple[int, bool]] = []

    def begin_epoch(
        self, request: master_pb2.BeginEpochRequest
    ) -> master_pb2.BeginEpochResponse | None:
        self.begun.append((request.epoch, request.restore))
        return super().begin_epoch(request)


def _row_ids(batch: Batch) -> list[int]:
    return [int(r) for r in batch.extras["row_id"].tolist()]


def _reference(cluster: LocalCluster, spec: SessionSpec) -> list[list[list[int]]]:
    """Every epoch's batches (row ids) of a plain loader, started by ``iter()``."""
    with DppLoader(cluster.master_address, spec) as loader:
        return [[_row_ids(b) for b in loader] for _ in range(EPOCHS)]


def _wait_queued(loader: DppLoader) -> None:
    """Waits (no assertion on time) until the stream threads received a frame."""
    deadline = time.monotonic() + QUEUED_WITHIN_S
    while loader.stats.bytes_received == 0 and time.monotonic() < deadline:
        time.sleep(0.02)


def test_started_loader_reads_what_a_plain_loader_reads(
    cluster: LocalCluster, small_table: str
) -> None:
    spec = resume_spec(small_table, epochs=EPOCHS)
    reference = _reference(cluster, spec)
    assert all(len(epoch) > 10 for epoch in reference)
    link = CountingLink(cluster.master_address)
    with DppLoader(cluster.master_address, spec, master_link=link).start() as loader:
        assert loader.start() is loader  # idempotent: epoch 0 is not begun again
        assert link.begun == [(0, False)]
        assert loader.session_id and loader.epoch == 0
        _wait_queued(loader)
        # Frames arrived before the trainer's first next(): nothing yielded, nothing stalled.
        before = loader.stats
        assert before.bytes_received > 0
        assert (before.batches, before.stall_s, before.wall_s) == (0, 0.0, 0.0)
        got = [[_row_ids(b) for b in loader] for _ in range(EPOCHS)]
        assert loader.start() is loader  # past the last epoch: nothing more to begin
        assert list(iter(loader)) == []
    assert got == reference
    # Each epoch begun once; epoch 2 (past the last) answered "no such epoch".
    assert sorted(e for e, _ in link.begun) == [0, 1, 2]


@pytest.mark.parametrize(
    ("session_name", "checkpoint_epoch"),
    [("", 0), ("job", 0), ("job", 1)],
    ids=["own-session", "joined-same-epoch", "joined-later-epoch"],
)
def test_restore_after_start_resumes_exactly(
    cluster: LocalCluster, small_table: str, session_name: str, checkpoint_epoch: int
) -> None:
    """The checkpoint is taken mid-epoch; five batches read after it are lost with the
    trainer (the master saw their acknowledgement). The new loader starts, has frames of the
    started epoch queued, then restores: the rest of the epoch comes exactly once."""
    spec = resume_spec(small_table, epochs=EPOCHS)
    reference = _reference(cluster, spec)
    n = len(reference[checkpoint_epoch])
    stop = n // 3
    with DppLoader(cluster.master_address, spec, session_name=session_name) as first:
        for _ in range(checkpoint_epoch):
            list(first)
        it = iter(first)
        kept = [_row_ids(next(it)) for _ in range(stop)]
        state = first.state_dict()
        for _ in range(5):
            next(it)  # read after the checkpoint, then lost with the trainer
    link = CountingLink(cluster.master_address)
    with DppLoader(
        cluster.master_address, spec, session_name=session_name, master_link=link
    ) as second:
        second.start()
        if checkpoint_epoch == 0:  # else start() began the (consumed) epoch 0: nothing comes
            _wait_queued(second)
            assert second.stats.bytes_received > 0
        second.load_state_dict(state)
        assert second.state_dict()["epoch"] == checkpoint_epoch
        rest = [_row_ids(b) for b in second]
        later = [[_row_ids(b) for b in second] for _ in range(checkpoint_epoch + 1, EPOCHS)]
        assert second.session_id == state["session_id"]
    assert kept + rest == reference[checkpoint_epoch]
    assert later == reference[checkpoint_epoch + 1 :]
    rows = Counter(r for batch in kept + rest for r in batch)
    assert set(rows.values()) == {1}  # no row twice
    assert (checkpoint_epoch, True) in link.begun  # the restore went to the master


def test_start_on_a_closed_loader_raises(cluster: LocalCluster, small_table: str) -> None:
    spec = resume_spec(small_table, epochs=EPOCHS)
    loader = DppLoader(cluster.master_address, spec)
    loader.close()
    with pytest.raises(DppClientError, match="DppLoader is closed; create a new one"):
        loader.start()
    started = DppLoader(cluster.master_address, spec).start()
    started.close()
    with pytest.raises(DppClientError, match="DppLoader is closed; create a new one"):
        started.start()
    with pytest.raises(DppClientError, match="DppLoader is closed; create a new one"):
        iter(started)
