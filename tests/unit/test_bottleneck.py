"""The bottleneck verdict: tables of windows and the verdict each must give."""

from __future__ import annotations

import pytest

from dpp_server.bottleneck import (
    ClusterWindow,
    Kind,
    RankWindow,
    VerdictConfig,
    WorkerWindow,
    analyze,
)


def worker(i: int = 0, rows: int = 10_000, threads: int = 2, **stage_s: float) -> WorkerWindow:
    return WorkerWindow(f"w{i}", threads, stage_s, rows_out=rows, bytes_out=rows * 100)


def rank(rows: int, stall_s: float, wall_s: float = 10.0, r: int = 0) -> RankWindow:
    return RankWindow("s-1", r, rows=rows, stall_s=stall_s, wall_s=wall_s)


# Each case: (name, window, expected kind, expected workers_needed, phrases in the text).
CASES = [
    (
        "module docstring example: cpu-bound in transform",
        ClusterWindow(
            10.0,
            [
                worker(
                    rows=60_000, read=4, transform=12, batch=1, serialize=1, wait_consumer=1, idle=1
                )
            ],
            [rank(60_000, stall_s=4.0)],
        ),
        Kind.WORKER_CPU_BOUND,
        2,
        ["workers CPU-bound in transform", "about 1 more worker", "40% stall"],
    ),
    (
        "storage reads dominate",
        ClusterWindow(
            10.0,
            [worker(i, rows=20_000, read=15, transform=3, serialize=1, idle=1) for i in range(2)],
            [rank(40_000, stall_s=5.0)],
        ),
        Kind.STORAGE_BOUND,
        5,  # capacity 40 000 rows / 38 busy s x 2 threads; demand 4 000 / 0.5 x 1.1 headroom
        ["storage reads dominate", "79%", "more workers would remove", "50% stall"],
    ),
    (
        "trainer-bound: 4 of 6 workers idle",
        ClusterWindow(
            10.0,
            [worker(i, rows=5_000, transform=3, wait_consumer=15, idle=2) for i in range(6)],
            [rank(30_000, stall_s=0.1)],
        ),
        Kind.TRAINER_BOUND,
        2,
        ["trainer-bound: 4 of 6 workers are idle", "trainer stall 1%"],
    ),
    (
        "transfer-bound: workers wait on a slow stream while the trainer stalls",
        ClusterWindow(
            10.0,
            [worker(i, rows=10_000, transform=4, wait_consumer=14, idle=2) for i in range(2)],
            [RankWindow("s-1", 0, rows=20_000, stall_s=3.0, wall_s=10.0, decode_s=6.0)],
        ),
        Kind.TRANSFER_BOUND,
        None,
        ["transfer-bound", "more workers will not help", "60% of wall time"],
    ),
    (
        "split-starved: idle workers and a stalled trainer",
        ClusterWindow(
            10.0,
            [worker(i, rows=5_000, transform=6, idle=14) for i in range(2)],
            [rank(10_000, stall_s=3.0)],
            splits_pending=0,
        ),
        Kind.SPLIT_STARVED,
        None,
        ["split-starved", "0 splits pending", "target_split_rows"],
    ),
    (
        "balanced",
        ClusterWindow(
            10.0,
            [worker(i, rows=10_000, transform=16, wait_consumer=2, idle=2) for i in range(2)],
            [rank(20_000, stall_s=0.2)],
        ),
        Kind.BALANCED,
        2,
        ["balanced", "trainer stall 2%", "80% busy"],
    ),
    (
        "no rank figures, workers saturated",
        ClusterWindow(10.0, [worker(rows=10_000, read=2, transform=17, idle=1)]),
        Kind.WORKERS_SATURATED,
        None,
        ["95% busy", "stall is unknown"],
    ),
    (
        "no rank figures, workers wait on the consumer",
        ClusterWindow(
            10.0, [worker(i, rows=10_000, transform=4, wait_consumer=16) for i in range(3)]
        ),
        Kind.TRAINER_BOUND,
        1,
        ["trainer-bound: 2 of 3 workers are idle", "no trainer figures"],
    ),
    (
        "idle cluster",
        ClusterWindow(10.0, [worker(rows=0, idle=20)]),
        Kind.IDLE,
        None,
        ["no session is consuming"],
    ),
    (
        "no workers while a rank waits",
        ClusterWindow(10.0, [], [rank(0, stall_s=10.0)], splits_pending=3),
        Kind.NO_WORKERS,
        1,
        ["no live workers", "dpp scale"],
    ),
]


@pytest.mark.parametrize(
    ("window", "kind", "needed", "phrases"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_verdict(window: ClusterWindow, kind: Kind, needed: int | None, phrases: list[str]) -> None:
    verdict = analyze(window)
    assert verdict.kind == kind, verdict.text
    if needed is not None:
        assert verdict.workers_needed == needed, verdict
    for phrase in phrases:
        assert phrase in verdict.text, (phrase, verdict.text)


def test_shares_and_rates() -> None:
    window = ClusterWindow(
        4.0,
        [worker(0, rows=8_000, read=2, transform=4, idle=2), worker(1, rows=4_000, read=2, idle=6)],
    )
    verdict = analyze(window)
    assert verdict.rows_per_s == pytest.approx(3_000)
    assert verdict.bytes_per_s == pytest.approx(300_000)
    assert verdict.stage_shares["read"] == pytest.approx(4 / 16)
    assert verdict.stage_shares["idle"] == pytest.approx(8 / 16)
    assert sum(verdict.stage_shares.values()) == pytest.approx(1.0)
    # 12 000 rows in 8 busy thread-seconds, 2 threads per worker.
    assert verdict.capacity_per_worker == pytest.approx(3_000)


def test_demand_caps_the_stall_share() -> None:
    # A trainer stalled 100% would mean infinite demand; the cap keeps it finite.
    window = ClusterWindow(10.0, [worker(rows=1_000, transform=19, idle=1)], [rank(1_000, 10.0)])
    verdict = analyze(window, VerdictConfig(max_stall_for_demand=0.8))
    assert verdict.demand_rows_per_s == pytest.approx(100 / 0.2)
    assert verdict.workers_needed is not None and verdict.workers_needed >= 1


def test_the_worst_rank_is_named_among_several() -> None:
    window = ClusterWindow(
        10.0,
        [worker(rows=20_000, transform=19, idle=1)],
        [rank(10_000, 0.1, r=0), rank(10_000, 3.0, r=1)],
    )
    verdict = analyze(window)
    assert verdict.stall_share == pytest.approx(0.3)
    assert "rank 1's 30% stall" in verdict.text
