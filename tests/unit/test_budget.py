"""The memory budget: how --memory-mb becomes sizes, and a row group that cannot fit."""

from __future__ import annotations

import pytest

from dpp_server.budget import (
    BASE_MB,
    BATCH_FACTOR,
    BUFFER_SHARE,
    DEFAULT_MEMORY_MB,
    MIN_THREAD_MB,
    THREAD_FIXED_MB,
    MemoryPlan,
    prepare_environment,
)
from storage import Table
from storage.errors import RowGroupTooLargeError
from storage.reader import scan_split


def test_plan_divides_the_budget_and_refuses_one_too_small_for_its_threads() -> None:
    mb = 1 << 20
    plan = MemoryPlan.of(512, 2, 256 << 20)
    working = (512 - BASE_MB) * mb
    assert plan.buffer_bytes == working // BUFFER_SHARE
    assert plan.thread_bytes == (working - working // BUFFER_SHARE) // 2
    assert plan.max_batch_bytes == (plan.thread_bytes - THREAD_FIXED_MB * mb) // BATCH_FACTOR
    assert plan.max_row_group_bytes == plan.thread_bytes // 2
    assert MemoryPlan.of(512, 1, 8 << 20).buffer_bytes == 8 << 20  # --buffer-mb stays a cap
    assert MemoryPlan.of(0, 2, 64 << 20) == MemoryPlan(0, 64 << 20, 0)
    # 256 MB fits one pipeline thread (the goal's budget), with the least frame buffers.
    small = MemoryPlan.of(256, 1, 256 << 20)
    assert small.thread_bytes >= MIN_THREAD_MB * mb and small.buffer_bytes >= 8 * mb
    assert small.buffer_bytes + small.thread_bytes == (256 - BASE_MB) * mb
    # Two threads do not fit in 256 MB: refused, naming the least budget that works.
    with pytest.raises(ValueError, match=r"--memory-mb 256 is too small for 2 pipeline") as e:
        MemoryPlan.of(256, 2, 256 << 20)
    least = int(str(e.value).split("give at least ")[1].split(" MB")[0])
    MemoryPlan.of(least, 2, 256 << 20)  # the least budget named works ...
    with pytest.raises(ValueError):
        MemoryPlan.of(least - 1, 2, 256 << 20)  # ... and is the least
    with pytest.raises(ValueError, match=r"--memory-mb 100 .* fewer --pipeline-threads"):
        MemoryPlan.of(100, 1, 64 << 20)


def test_a_worker_command_gets_the_allocator_settings_before_they_load() -> None:
    env: dict[str, str] = {}
    assert prepare_environment(["worker", "--master", "x:1", "--memory-mb", "512"], env)
    assert env["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"
    assert env["_RJEM_MALLOC_CONF"].startswith("dirty_decay_ms:0")
    kept = {"JE_ARROW_MALLOC_CONF": "dirty_decay_ms:1000"}  # an operator's own setting stays
    assert prepare_environment(["worker", "--memory-mb=256"], kept)
    assert kept["JE_ARROW_MALLOC_CONF"] == "dirty_decay_ms:1000"
    for argv, environ in (
        (["worker", "--memory-mb", "0"], {}),  # no budget: freed pages kept for reuse
        (["worker"], {"DPP_MEMORY_MB": "0"}),
        (["worker"], {}),  # the default: no budget
    ):
        assert not prepare_environment(argv, environ)
        assert environ.get("MIMALLOC_PURGE_DELAY") == "-1"
        assert "ARROW_DEFAULT_MEMORY_POOL" not in environ
    master: dict[str, str] = {}
    assert not prepare_environment(["master"], master) and not master  # workers only
    assert DEFAULT_MEMORY_MB == 0


def test_read_batches_shrink_to_the_budget_and_a_large_row_group_is_refused(
    small_table: str,
) -> None:
    table = Table.open(small_table)
    split = table.plan_splits(4000).splits[0]
    columns = ["row_id", "dense_0", "sparse_0", "sparse_1"]

    def batches(max_batch_bytes: int = 0, max_row_group_bytes: int = 0) -> list[int]:
        scan = scan_split(
            split,
            filesystem=table.filesystem,
            columns=columns,
            row_filter=None,
            batch_rows=2000,
            max_batch_bytes=max_batch_bytes,
            max_row_group_bytes=max_row_group_bytes,
        )
        return [b.num_rows for b in scan]

    whole = batches()
    assert max(whole) == 2000 and sum(whole) == split.num_rows
    small = batches(max_batch_bytes=20_000)
    assert sum(small) == split.num_rows and max(small) == 512  # the least decode step
    with pytest.raises(RowGroupTooLargeError) as refused:
        batches(max_row_group_bytes=1000)
    message = str(refused.value)
    assert split.path in message and f"row group {split.row_groups[0]}" in message
    assert "MB of column chunks decompressed" in message and "--memory-mb" in message
