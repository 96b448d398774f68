"""The worker cache under failure: a cluster whose workers cache produced splits gives the very
batch sequence of an uncached one, in deterministic mode, across a worker SIGKILL, and
``dpp top`` shows its hit rate."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from chaos_helpers import FAST_FAILOVER, ClusterFactory, assert_exactly_once, chaos_spec, signature

from dpp_client import DppLoader
from dpp_server.top import fetch_status

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

Reference = list[list[tuple[tuple[int, ...], str]]]


def _cache_lookups(master: str, deadline_s: float = 10.0) -> tuple[int, int]:
    """Cluster-wide cache hits and misses, once two monitor windows agree (the last
    heartbeats arrived)."""
    give_up = time.monotonic() + deadline_s
    last = (-1, -1)
    while True:
        workers = fetch_status(master).workers
        now = (sum(w.cache_hits for w in workers), sum(w.cache_misses for w in workers))
        if now == last or time.monotonic() > give_up:
            return now
        last = now
        time.sleep(0.7)


def test_cached_epochs_equal_the_uncached_sequence_across_a_worker_kill(
    make_cluster: ClusterFactory, small_table: str, reference: Reference
) -> None:
    """Epoch 0 fills both workers' caches (misses), epoch 1 reads them back (hits, shuffled
    after the cache); a worker is SIGKILLed mid-epoch 1 and a fresh, empty one replaces it.
    Both epochs equal the reference run's (1 worker, no cache) batch for batch, byte for
    byte."""
    cluster = make_cluster(
        workers=2,
        master_args=[*FAST_FAILOVER, "--monitor-interval-s", "0.3"],
        worker_args=["--buffer-mb", "8", "--cache-mb", "256"],
    )
    got: list[list[tuple[tuple[int, ...], str]]] = []
    with DppLoader(cluster.master_address, chaos_spec(small_table), prefetch_batches=4) as loader:
        for epoch in range(2):
            batches = []
            for i, batch in enumerate(loader):
                batches.append(signature(batch))
                if epoch == 1 and i == 10:
                    cluster.kill_worker(0)
                    cluster.add_worker()
            got.append(batches)
    for epoch in got:
        assert_exactly_once(epoch)
    assert got == reference
    hits, misses = _cache_lookups(cluster.master_address)
    # The live workers' counts (the killed one's went with it): epoch 0 missed, epoch 1 hit
    # at least the survivor's splits, and the new worker missed what it produced.
    assert hits > 0 and misses > 0, (hits, misses)
    top = subprocess.run(
        [sys.executable, "-m", "dpp_server", "top", "--once", "--master", cluster.master_address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert "cache hits" in top.stdout, top.stdout
    shown = re.findall(r"(\d+)% of (\d+)", top.stdout)
    assert (str(round(100 * hits / (hits + misses))), str(hits + misses)) in shown, top.stdout
