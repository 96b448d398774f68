"""The ``cluster`` fixture: a real master and two real workers as processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dpp_server.local_cluster import LocalCluster


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A fresh cluster per test: one master (short lease timeout so that failover tests run
    fast) and two workers with two pipeline threads each."""
    with LocalCluster(
        workers=2,
        pipeline_threads=2,
        master_args=["--lease-timeout-s", "2", "--heartbeat-interval-s", "0.25"],
        worker_args=["--buffer-mb", "16"],
    ) as c:
        yield c
