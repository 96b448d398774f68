"""Fixtures for chaos tests: clusters with fast failover, and an undisturbed reference."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from chaos_helpers import FAST_FAILOVER, ClusterFactory, assert_exactly_once, chaos_spec, signature

from dpp_client import DppLoader
from dpp_server.local_cluster import LocalCluster


@pytest.fixture
def make_cluster() -> Iterator[ClusterFactory]:
    """Starts clusters with fast failover; stops every one at the end of the test."""
    started: list[LocalCluster] = []

    def make(workers: int = 2, **kwargs: Any) -> LocalCluster:
        kwargs.setdefault("master_args", FAST_FAILOVER)
        kwargs.setdefault("worker_args", ["--buffer-mb", "8"])
        cluster = LocalCluster(workers=workers, pipeline_threads=2, **kwargs).start()
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


@pytest.fixture(scope="session")
def reference(small_table: str) -> list[list[tuple[tuple[int, ...], str]]]:
    """The undisturbed deterministic batch sequence of both epochs, from a 1-worker cluster."""
    with (
        LocalCluster(workers=1, pipeline_threads=2) as cluster,
        DppLoader(cluster.master_address, chaos_spec(small_table)) as loader,
    ):
        epochs = [[signature(b) for b in loader] for _ in range(2)]
    for epoch in epochs:
        assert_exactly_once(epoch)
    assert epochs[0] != epochs[1], "epochs must be reshuffled"
    return epochs
