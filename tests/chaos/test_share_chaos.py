"""Shared production across jobs (spec ``share``) under failure: three jobs on one spec each
get every row exactly once per epoch, in the undisturbed sequence, while one trainer process
is SIGKILLed and resumed from its checkpoint; a slow job falls back to its own production
without holding the fast one back; a job on another spec is not grouped."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from chaos_helpers import (
    ClusterFactory,
    assert_exactly_once,
    chaos_spec,
    run_trainer_until_killed,
    signature,
)

from dpp_client import DppLoader
from dpp_client.spec import Feature, Op

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

Signatures = list[tuple[tuple[int, ...], str]]
Reference = list[Signatures]
ROWS = 24_000


def _counter(address: str, name: str) -> float:
    """A worker's counter from its /metrics (0 before it was first counted)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def _total(cluster: Any, name: str) -> float:
    return sum(_counter(w.metrics_address, name) for w in cluster.workers if w.alive)


def test_three_sharing_jobs_each_get_every_row_once_across_a_trainer_kill(
    make_cluster: ClusterFactory, small_table: str, reference: Reference, tmp_path: Path
) -> None:
    """Three jobs with ``share`` on one spec, no disk cache (so only the share window shares):
    jobs 0 and 1 read two epochs in threads; job 2 is a trainer process SIGKILLed mid-epoch and
    restarted on its checkpoint. Every job's every epoch is the undisturbed reference, byte for
    byte, and the workers read the table far less than three separate jobs would."""
    cluster = make_cluster(workers=2, worker_args=["--buffer-mb", "8"])
    spec = chaos_spec(small_table, share=True)
    results: dict[int, Reference] = {}
    errors: list[BaseException] = []

    def job(i: int) -> None:
        try:
            with DppLoader(cluster.master_address, spec, prefetch_batches=4) as loader:
                results[i] = [[signature(b) for b in loader] for _ in range(2)]
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    checkpoint = str(tmp_path / "ckpt.json")
    script = str(Path(__file__).with_name("trainer_proc.py"))
    command = [sys.executable, script, cluster.master_address, small_table, checkpoint, "share"]
    run_trainer_until_killed(command, checkpoint, 12)
    second = subprocess.run(command, timeout=180)
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    assert second.returncode == 0
    with open(checkpoint) as f:
        resumed = [(tuple(ids), digest) for ids, digest in json.load(f)["batches"]]
    assert_exactly_once(resumed)
    assert resumed == reference[0]
    for i in range(2):
        for epoch in results[i]:
            assert_exactly_once(epoch)
        assert results[i] == reference, f"job {i}"
    hits = _total(cluster, "dpp_worker_share_hits_total")
    rows_read = _total(cluster, "dpp_worker_rows_read_total")
    # Separately the three jobs read 5 epochs of 24,000 rows (120,000) and hit nothing.
    # Shared, jobs 0 and 1 run in step: most of their splits are read once, and the trainer
    # joins them wherever the window still holds a split.
    assert hits >= 12, (hits, rows_read)
    # Measured: 24-30 hits, 68,000-78,000 rows read.
    assert rows_read <= 0.75 * 5 * ROWS, (hits, rows_read)


def test_a_slow_sharing_job_falls_back_to_its_own_production(
    make_cluster: ClusterFactory, small_table: str, reference: Reference
) -> None:
    """A fast and a slow job (a trainer sleeping per batch) share one spec through one worker.
    The fast job finishes both epochs while the slow one is early in its first: it was never
    held back. The slow one falls out of the 1 MB window (ten sparse features make a split
    about 1 MB), produces those splits itself, and still gets every row exactly once."""
    cluster = make_cluster(workers=1, worker_args=["--buffer-mb", "16", "--share-window-mb", "1"])
    base = chaos_spec(small_table)
    wide = tuple(
        Feature(f"s{i}", "sparse", source="sparse_0", ops=base.features[1].ops) for i in range(10)
    )
    spec = chaos_spec(small_table, share=True, features=(base.features[0], *wide))
    slow_seen: list[int] = []
    fast_done_at: list[int] = []
    results: dict[str, Reference] = {}
    errors: list[BaseException] = []

    def fast() -> None:
        try:
            with DppLoader(cluster.master_address, spec, prefetch_batches=4) as loader:
                results["fast"] = [[signature(b) for b in loader] for _ in range(2)]
            fast_done_at.append(len(slow_seen))
        except BaseException as exc:
            errors.append(exc)

    def slow() -> None:
        try:
            with DppLoader(cluster.master_address, spec, prefetch_batches=1) as loader:
                epochs = []
                for _ in range(2):
                    batches = []
                    for batch in loader:
                        batches.append(signature(batch))
                        slow_seen.append(batch.num_rows)
                        time.sleep(0.15)
                    epochs.append(batches)
                results["slow"] = epochs
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fast), threading.Thread(target=slow)]
    threads[1].start()
    threads[0].start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    for name in ("fast", "slow"):
        for epoch in results[name]:
            assert_exactly_once(epoch)
        # The same rows and order as the reference (its features differ: compare row ids).
        assert [[ids for ids, _ in e] for e in results[name]] == [
            [ids for ids, _ in e] for e in reference
        ], name
    # The fast job's two epochs ended while the slow one had read under half of its first.
    assert fast_done_at and fast_done_at[0] * 700 < ROWS / 2, fast_done_at
    # The slow job produced splits itself: the window (one split) cannot have kept the fast
    # job's splits for it, so well over the fast job's two epochs were read.
    misses = _total(cluster, "dpp_worker_share_misses_total")
    rows_read = _total(cluster, "dpp_worker_rows_read_total")
    assert misses > 36 and rows_read > 3 * ROWS, (misses, rows_read)


def test_a_sharing_job_on_another_spec_is_not_grouped(
    make_cluster: ClusterFactory, small_table: str, reference: Reference
) -> None:
    """Two jobs set ``share`` but shape different rows (another hash size): they are two
    groups of one, so nothing is served from a share window, and each gets its own rows."""
    cluster = make_cluster(workers=1)
    spec = chaos_spec(small_table, share=True)
    other = chaos_spec(
        small_table,
        share=True,
        features=(
            *spec.features[:1],
            Feature(
                "s0",
                "sparse",
                source="sparse_0",
                ops=(Op("first_x", {"x": 8}), Op("sigrid_hash", {"max_value": 7000})),
            ),
        ),
    )
    results: dict[int, Reference] = {}

    def job(i: int, s: Any) -> None:
        with DppLoader(cluster.master_address, s, prefetch_batches=4) as loader:
            results[i] = [[signature(b) for b in loader] for _ in range(2)]

    threads = [threading.Thread(target=job, args=(i, s)) for i, s in enumerate((spec, other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert results[0] == reference
    for epoch in results[1]:
        assert_exactly_once(epoch)
    assert results[1] != reference  # other hashed ids
    assert _total(cluster, "dpp_worker_share_hits_total") == 0
    assert _total(cluster, "dpp_worker_rows_read_total") == 4 * ROWS
