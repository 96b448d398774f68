"""Resuming from a checkpoint on a live cluster never waits on the loader's liveness net.

Issue 18, rule 2. A trainer reads part of an epoch, checkpoints, reads on (those batches are
lost: it dies) and closes; a new loader restores the checkpoint. Before the worker's frame
buffer had one consumer at a time, the dead trainer's stream kept taking the first frames of
the splits the restore had re-leased, and 13 of 25 resumes waited the 10 s
``reproduce_after_s`` net for them. Here every one of 25 resumes must yield its first batch
within 2 s, the liveness net must never fire, and the rows must be exactly those of the
undisturbed epoch, each once.
"""

from __future__ import annotations

import logging
import time

import pytest

from dpp_client import Batch, DppLoader
from dpp_server.local_cluster import LocalCluster
from tests.helpers.specs import resume_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESUMES = 25
FIRST_BATCH_WITHIN_S = 2.0


def _row_ids(batch: Batch) -> list[int]:
    return [int(r) for r in batch.extras["row_id"].tolist()]


def test_every_resume_yields_its_first_batch_at_once(
    cluster: LocalCluster, small_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = resume_spec(small_table)
    with DppLoader(cluster.master_address, spec) as loader:
        reference = [_row_ids(b) for b in loader]
    n = len(reference)
    assert n > 10
    caplog.set_level(logging.WARNING, logger="dpp_client.loader")
    waits_s = []
    for i in range(RESUMES):
        stop = 1 + (i * 7) % (n - 2)  # checkpoints spread over the epoch
        with DppLoader(cluster.master_address, spec) as first:
            it = iter(first)
            kept = [_row_ids(next(it)) for _ in range(stop)]
            state = first.state_dict()
            for _ in range(min(5, n - stop - 1)):
                next(it)  # read after the checkpoint, then lost with the trainer
        with DppLoader(cluster.master_address, spec) as second:
            second.load_state_dict(state)
            started = time.monotonic()
            it = iter(second)
            head = next(it)
            waits_s.append(time.monotonic() - started)
            rest = [_row_ids(head)] + [_row_ids(b) for b in it]
        assert kept + rest == reference, f"resume {i} at batch {stop}"
    slow = [(i, round(s, 2)) for i, s in enumerate(waits_s) if s > FIRST_BATCH_WITHIN_S]
    assert slow == [], f"resumes whose first batch took over {FIRST_BATCH_WITHIN_S} s"
    net = [
        r.getMessage() for r in caplog.records if "asking the master to produce" in r.getMessage()
    ]
    assert net == [], "the liveness net fired during a resume"
