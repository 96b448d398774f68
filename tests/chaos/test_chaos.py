"""Chaos: kill workers, the master and the trainer mid-epoch; every row arrives exactly once per
epoch, and in deterministic mode the batch sequence equals an undisturbed run's.

Kills happen at random moments (seeded, so a failure can be replayed): after a random number
of batches, with the workers at whatever point of their splits they are.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Any

import pytest
from chaos_helpers import (
    ROWS,
    ClusterFactory,
    assert_exactly_once,
    chaos_spec,
    run_trainer_until_killed,
    signature,
)

from dpp_client import DppLoader
from dpp_server.local_cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

Reference = list[list[tuple[tuple[int, ...], str]]]


@pytest.mark.parametrize(
    ("seed", "deterministic"),
    [(0, True), (1, True), (2, True), (3, True), (4, False), (5, False)],
)
def test_sigkill_random_workers_mid_epoch(
    make_cluster: ClusterFactory,
    small_table: str,
    reference: Reference,
    seed: int,
    deterministic: bool,
) -> None:
    """Four SIGKILLs per run at random batches (24 kills over the six runs); a new worker
    replaces each dead one."""
    rng = random.Random(seed)
    cluster = make_cluster(workers=3)
    spec = chaos_spec(small_table, deterministic=deterministic, epochs=1)
    kill_at = set(rng.sample(range(1, 30), 4))
    got = []
    with DppLoader(cluster.master_address, spec, prefetch_batches=4) as loader:
        for i, batch in enumerate(loader):
            got.append(signature(batch))
            if i in kill_at:
                victim = rng.choice(cluster.live_workers)
                cluster.kill_worker(victim)
                cluster.add_worker()
    assert_exactly_once(got)
    if deterministic:
        assert got == reference[0]
    else:
        # Arrival order: the rows are compared, not the sequence.
        assert sorted(r for b in got for r in b[0]) == list(range(ROWS))


def test_master_killed_and_restarted_mid_epoch(
    make_cluster: ClusterFactory, small_table: str, reference: Reference
) -> None:
    cluster = make_cluster(workers=2, journal=True)
    got = []
    with DppLoader(cluster.master_address, chaos_spec(small_table)) as loader:
        for epoch in range(2):
            epoch_batches = []
            for i, batch in enumerate(loader):
                epoch_batches.append(signature(batch))
                if epoch == 0 and i == 12:
                    cluster.kill_master()
                    time.sleep(0.5)  # workers and the client see UNAVAILABLE meanwhile
                    cluster.restart_master()
            got.append(epoch_batches)
    assert_exactly_once(got[0])
    assert_exactly_once(got[1])
    assert got == reference


def _read(loader: DppLoader, batches: int) -> list[tuple[tuple[int, ...], str]]:
    """Reads up to ``batches`` batches of the current epoch (an iterator is made per epoch)."""
    out = []
    iterator = iter(loader)
    for batch in iterator:
        out.append(signature(batch))
        if len(out) == batches:
            break
    return out


@pytest.mark.parametrize("restart_cluster", [False, True])
def test_trainer_resumes_from_its_state_dict(
    make_cluster: ClusterFactory,
    small_table: str,
    reference: Reference,
    tmp_path: Any,
    restart_cluster: bool,
) -> None:
    """The trainer checkpoints after 10 batches, reads 5 more (lost: it dies), and a new
    trainer process restores the checkpoint — with the cluster alive, or after the whole
    cluster was stopped and started again from its journal."""
    work_dir = str(tmp_path / "cluster")
    cluster = make_cluster(workers=2, journal=True, work_dir=work_dir)
    spec = chaos_spec(small_table)
    first = DppLoader(cluster.master_address, spec)
    it = iter(first)
    consumed = [signature(next(it)) for _ in range(10)]
    state = first.state_dict()
    lost = [signature(next(it)) for _ in range(5)]
    assert lost == reference[0][10:15]
    first.close()  # the trainer dies; its last 5 batches were never checkpointed
    if restart_cluster:
        cluster.stop()
        cluster = make_cluster(workers=2, journal=True, work_dir=work_dir)
    with DppLoader(cluster.master_address, spec) as second:
        second.load_state_dict(state)
        rest = [signature(b) for b in second]
        epoch1 = [signature(b) for b in second]
    assert consumed + rest == reference[0]
    assert epoch1 == reference[1]


def test_resume_at_mid_epoch_end_of_epoch_and_next_epoch(
    make_cluster: ClusterFactory, small_table: str, reference: Reference
) -> None:
    """torchdata's save/load check: for each point, a fresh loader restored from the state
    taken there continues with exactly the rest of the undisturbed sequence."""
    cluster = make_cluster(workers=2)
    spec = chaos_spec(small_table)
    n0 = len(reference[0])
    flat = reference[0] + reference[1]
    for point in (n0 // 2, n0, "next"):
        with DppLoader(cluster.master_address, spec) as loader:
            seen = []
            it = iter(loader)
            stop = n0 if point == "next" else int(point)
            for batch in it:
                seen.append(signature(batch))
                if len(seen) == stop:
                    break
            if point == "next":
                assert list(it) == []  # the epoch ends: the state is at the next epoch
            state = loader.state_dict()
        with DppLoader(cluster.master_address, spec) as restored:
            restored.load_state_dict(state)
            rest = []
            for _ in range(2):
                rest += [signature(b) for b in restored]
        assert seen + rest == flat, f"resume at {point}"


def test_sigterm_drains_a_worker_without_losing_rows(
    make_cluster: ClusterFactory, small_table: str, reference: Reference
) -> None:
    cluster = make_cluster(workers=2, worker_args=["--buffer-mb", "8", "--drain-timeout-s", "20"])
    got = []
    with DppLoader(cluster.master_address, chaos_spec(small_table, epochs=1)) as loader:
        for i, batch in enumerate(loader):
            got.append(signature(batch))
            if i == 5:
                cluster.kill_worker(0, signal.SIGTERM, wait=False)
    cluster.workers[0].process.wait(30)
    assert cluster.workers[0].process.returncode == 0
    assert "drained" in cluster.workers[0].log_tail(200)
    assert got == reference[0]


def test_ranks_get_equal_batch_counts_and_disjoint_rows(
    make_cluster: ClusterFactory, small_table: str
) -> None:
    """Three ranks, splits of unequal sizes after a row filter: every rank yields the same
    number of batches (DDP never hangs), rows stay disjoint, only a remainder is dropped."""
    cluster = make_cluster(workers=2)
    spec = chaos_spec(
        small_table, world_size=3, deterministic=False, epochs=1, row_filter="dense_1 > 0.5"
    )
    results: dict[int, list[tuple[tuple[int, ...], str]]] = {}
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            with DppLoader(cluster.master_address, spec, rank=rank, session_name="ddp") as loader:
                results[rank] = [signature(b) for b in loader]
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    counts = {r: len(b) for r, b in results.items()}
    assert len(set(counts.values())) == 1, counts
    rows = [r for batches in results.values() for b in batches for r in b[0]]
    assert len(rows) == len(set(rows))
    assert all(len(b[0]) == 700 for batches in results.values() for b in batches[:-1])


def test_one_and_three_workers_give_the_same_sequence(
    make_cluster: ClusterFactory, small_table: str, reference: Reference
) -> None:
    cluster: LocalCluster = make_cluster(workers=3)
    with DppLoader(cluster.master_address, chaos_spec(small_table)) as loader:
        got = [[signature(b) for b in loader] for _ in range(2)]
    assert got == reference


def test_trainer_process_sigkilled_and_restarted(
    make_cluster: ClusterFactory, small_table: str, reference: Reference, tmp_path: Any
) -> None:
    """A real trainer process is SIGKILLed mid-epoch (while it may be between a batch and its
    checkpoint); a new process restores its last checkpoint and finishes the epoch."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    cluster = make_cluster(workers=2)
    checkpoint = str(tmp_path / "ckpt.json")
    script = str(Path(__file__).with_name("trainer_proc.py"))
    command = [sys.executable, script, cluster.master_address, small_table, checkpoint]
    run_trainer_until_killed(command, checkpoint, 12)
    second = subprocess.run(command, timeout=180)
    assert second.returncode == 0
    with open(checkpoint) as f:
        batches = [(tuple(ids), digest) for ids, digest in json.load(f)["batches"]]
    assert_exactly_once(batches)
    assert batches == reference[0]
