"""The memory budget: how --memory-mb becomes sizes, and a row group that cannot fit."""

from __future__ import annotations

import pytest

from dpp_server.budget import BASE_MB, MemoryPlan
from storage import Table
from storage.errors import RowGroupTooLargeError
from storage.reader import scan_split


def test_plan_divides_the_budget_and_refuses_one_below_the_base() -> None:
    plan = MemoryPlan.of(512, 2, 256 << 20)
    working = (512 - BASE_MB) << 20
    assert plan.buffer_bytes == working // 4
    assert plan.thread_bytes == (working - working // 4) // 2
    assert plan.max_batch_bytes == plan.thread_bytes // 8
    assert MemoryPlan.of(512, 1, 8 << 20).buffer_bytes == 8 << 20  # --buffer-mb stays a cap
    assert MemoryPlan.of(0, 2, 64 << 20) == MemoryPlan(0, 64 << 20, 0)
    with pytest.raises(ValueError, match=r"--memory-mb 100 leaves -60 MB .* at least 192 MB"):
        MemoryPlan.of(100, 1, 64 << 20)


def test_read_batches_shrink_to_the_budget_and_a_large_row_group_is_refused(
    small_table: str,
) -> None:
    table = Table.open(small_table)
    split = table.plan_splits(4000).splits[0]
    columns = ["row_id", "dense_0", "sparse_0", "sparse_1"]

    def batches(**limits: int) -> list[int]:
        scan = scan_split(
            split,
            filesystem=table.filesystem,
            columns=columns,
            row_filter=None,
            batch_rows=2000,
            **limits,
        )
        return [b.num_rows for b in scan]

    whole = batches()
    assert max(whole) == 2000 and sum(whole) == split.num_rows
    small = batches(max_batch_bytes=20_000)
    assert sum(small) == split.num_rows and max(small) == 1024  # the least decode step
    with pytest.raises(RowGroupTooLargeError) as refused:
        batches(max_row_group_bytes=1000)
    message = str(refused.value)
    assert split.path in message and f"row group {split.row_groups[0]}" in message
    assert "MB of compressed column chunks" in message and "--memory-mb" in message
