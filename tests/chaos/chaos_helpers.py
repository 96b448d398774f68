"""Shared pieces of the chaos tests: the spec, batch signatures, the exactly-once check."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpp_client import Batch, Feature, Op, SessionSpec
from dpp_server.local_cluster import LocalCluster

FAST_FAILOVER = ["--lease-timeout-s", "1.0", "--heartbeat-interval-s", "0.2"]
ROWS = 24_000


def chaos_spec(table: str, **overrides: Any) -> SessionSpec:
    """700-row batches over 2000-row row groups: most splits end in a short batch, so the
    client's re-batching across splits is exercised too."""
    fields: dict[str, Any] = {
        "table_uri": table,
        "features": (
            Feature(
                "d0",
                "dense",
                source="dense_0",
                ops=(Op("fill_null", {"value": 0.0}), Op("clamp", {"min": 0.0}), Op("log1p")),
            ),
            Feature(
                "s0",
                "sparse",
                source="sparse_0",
                ops=(Op("first_x", {"x": 8}), Op("sigrid_hash", {"max_value": 5000})),
            ),
        ),
        "label": "label",
        "passthrough": ("row_id",),
        "batch_size": 700,
        "target_split_rows": 2000,
        "epochs": 2,
        "seed": 13,
        "shuffle": True,
        "deterministic": True,
        "max_splits_in_flight": 4,
    }
    fields.update(overrides)
    return SessionSpec(**fields)


def signature(batch: Batch) -> tuple[tuple[int, ...], str]:
    """What makes two batches the same: their row ids in order, and their bytes."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(batch.dense.numpy().tobytes())
    digest.update(batch.sparse["s0"].values.numpy().tobytes())
    digest.update(batch.sparse["s0"].offsets.numpy().tobytes())
    if batch.labels is not None:
        digest.update(batch.labels.numpy().tobytes())
    return tuple(batch.extras["row_id"].tolist()), digest.hexdigest()


def assert_exactly_once(batches: list[tuple[tuple[int, ...], str]], rows: int = ROWS) -> None:
    seen: dict[int, int] = {}
    for row_ids, _ in batches:
        for row_id in row_ids:
            seen[row_id] = seen.get(row_id, 0) + 1
    repeated = [r for r, n in seen.items() if n > 1]
    missing = rows - len(seen)
    assert not repeated, f"{len(repeated)} rows delivered more than once, e.g. {repeated[:5]}"
    assert missing == 0, f"{missing} rows never delivered"


ClusterFactory = Callable[..., LocalCluster]


def run_trainer_until_killed(command: list[str], checkpoint: str, batches: int) -> None:
    """Starts a trainer process (``trainer_proc.py``), SIGKILLs it once its checkpoint holds
    ``batches`` batches (it may be between a batch and its checkpoint then)."""
    first = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with open(checkpoint) as f:
                if len(json.load(f)["batches"]) >= batches:
                    break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert not Path(checkpoint + ".done").exists(), "the trainer finished before the kill"
