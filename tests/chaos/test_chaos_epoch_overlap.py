"""Epoch overlap on a real cluster: the next epoch is begun while the trainer drains the current
one, the batch sequence stays the one-worker reference's (deterministic mode), and workers
SIGKILLed around the boundary lose and repeat no row.

The reference here is taken without overlap (``epoch_overlap=False``, one worker), so the
comparison is between the two ways of beginning epochs, not the overlap against itself.
"""

from __future__ import annotations

import time

import pytest
from chaos_helpers import ROWS, ClusterFactory, assert_exactly_once, chaos_spec, signature

from dpp_client import DppLoader
from dpp_proto import master_pb2, master_pb2_grpc
from dpp_proto.auth import load_connection, open_channel
from dpp_server.local_cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

EPOCHS = 3
Sequence = list[list[tuple[tuple[int, ...], str]]]


@pytest.fixture(scope="module")
def no_overlap_reference(small_table: str) -> Sequence:
    """Every epoch's deterministic batch sequence from one worker, epochs begun on demand."""
    with (
        LocalCluster(workers=1, pipeline_threads=2) as cluster,
        DppLoader(
            cluster.master_address, chaos_spec(small_table, epochs=EPOCHS), epoch_overlap=False
        ) as loader,
    ):
        epochs = [[signature(b) for b in loader] for _ in range(EPOCHS)]
    for epoch in epochs:
        assert_exactly_once(epoch)
    return epochs


def begun_epochs(stub: master_pb2_grpc.MasterServiceStub, session_id: str) -> set[int]:
    """The epochs the master has begun for rank 0 of the session."""
    info = stub.GetSession(master_pb2.GetSessionRequest(session_id=session_id), timeout=10)
    return {p.epoch for p in info.progress if p.rank == 0}


def test_slow_trainer_gets_the_reference_sequence_with_epochs_begun_early(
    make_cluster: ClusterFactory, small_table: str, no_overlap_reference: Sequence
) -> None:
    """Three workers, a trainer that takes 10 ms a batch: when the trainer holds the last
    batch of epoch e, the master has already begun e+1 for it (the workers are producing
    it), and the batches are exactly the reference's."""
    cluster = make_cluster(workers=3)
    got: Sequence = []
    begun_at_last_batch: list[set[int]] = []
    with (
        open_channel(cluster.master_address, load_connection()) as channel,
        DppLoader(cluster.master_address, chaos_spec(small_table, epochs=EPOCHS)) as loader,
    ):
        stub = master_pb2_grpc.MasterServiceStub(channel)
        for _ in range(EPOCHS):
            batches = []
            begun: set[int] = set()
            for batch in loader:
                batches.append(signature(batch))
                time.sleep(0.01)  # the training step
                begun = begun_epochs(stub, loader.session_id)
            got.append(batches)
            begun_at_last_batch.append(begun)
    assert got == no_overlap_reference
    # While the trainer held epoch e's last batch, e+1 was begun already (the last epoch
    # has no successor).
    for epoch, begun in enumerate(begun_at_last_batch[:-1]):
        assert epoch + 1 in begun, (epoch, begun)
    assert EPOCHS not in begun_at_last_batch[-1]


@pytest.mark.parametrize("deterministic", [True, False])
def test_workers_killed_at_the_epoch_boundary_keep_exactly_once(
    make_cluster: ClusterFactory,
    small_table: str,
    no_overlap_reference: Sequence,
    deterministic: bool,
) -> None:
    """A worker is SIGKILLed as the trainer takes the last batches of epoch 0 (epoch 1 is
    being produced by then) and another right after epoch 1 begins; new workers replace
    them. Every epoch still holds every row once (and, deterministic, the reference's
    sequence)."""
    cluster = make_cluster(workers=3)
    n0 = len(no_overlap_reference[0])
    kills = {(0, n0 - 3), (1, 1)}
    got: Sequence = []
    spec = chaos_spec(small_table, epochs=2, deterministic=deterministic)
    with DppLoader(cluster.master_address, spec, prefetch_batches=4) as loader:
        for epoch in range(2):
            batches = []
            for i, batch in enumerate(loader):
                batches.append(signature(batch))
                if (epoch, i) in kills:
                    cluster.kill_worker(cluster.live_workers[0])
                    cluster.add_worker()
            got.append(batches)
    for batches in got:
        assert_exactly_once(batches, ROWS)
    if deterministic:
        assert got == no_overlap_reference[:2]
