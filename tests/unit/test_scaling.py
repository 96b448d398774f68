"""The scaler's hysteresis and the local pool's target choice, as tables of sequences."""

from __future__ import annotations

import pytest

from dpp_server.pool import PoolController, PoolTargets, choose_target
from dpp_server.scaling import Scaler, ScalerConfig, ScalerInput

CFG = ScalerConfig(min_workers=1, max_workers=8, up_after=2, down_after=3)

# Each step: (workers_alive, workers_needed, stall_share, more_workers_help) -> desired after.
SEQUENCES = [
    (
        "module docstring example",
        2,
        [
            ((2, 4, 0.3, True), 2),
            ((2, 4, 0.3, True), 4),
            ((4, 4, 0.3, True), 4),
            ((4, 2, 0.0, False), 4),
            ((4, 1, 0.0, False), 4),
            ((4, 1, 0.0, False), 1),
            ((1, 1, 0.0, False), 1),
        ],
    ),
    (
        "one noisy window does not scale up",
        2,
        [((2, 5, 0.2, True), 2), ((2, 2, 0.01, False), 2), ((2, 5, 0.2, True), 2)],
    ),
    (
        "stall feedback: the model says enough, the trainer still stalls",
        3,
        [((3, 3, 0.2, True), 3), ((3, 3, 0.2, True), 4)],
    ),
    (
        "no feedback when more workers would not help (transfer-bound)",
        3,
        [((3, 3, 0.2, False), 3), ((3, 3, 0.2, False), 3)],
    ),
    (
        "no scale-down while a rank stalls between the thresholds",
        4,
        [((4, 1, 0.03, False), 4)] * 5,
    ),
    (
        "a stall resets the down streak",
        4,
        [
            ((4, 2, 0.0, False), 4),
            ((4, 2, 0.0, False), 4),
            ((4, 2, 0.04, False), 4),
            ((4, 2, 0.0, False), 4),
            ((4, 2, 0.0, False), 4),
            ((4, 2, 0.0, False), 2),
        ],
    ),
    ("clamped to max_workers", 2, [((2, 50, 0.5, True), 2), ((2, 50, 0.5, True), 8)]),
    ("unknown need keeps the count", 3, [((3, None, None, False), 3)] * 4),
]


@pytest.mark.parametrize(
    ("initial", "steps"), [s[1:] for s in SEQUENCES], ids=[s[0] for s in SEQUENCES]
)
def test_scaler_sequences(
    initial: int, steps: list[tuple[tuple[int, int | None, float | None, bool], int]]
) -> None:
    scaler = Scaler(CFG, initial)
    for i, ((alive, needed, stall, helps), expected) in enumerate(steps):
        got = scaler.update(ScalerInput(alive, needed, stall, helps))
        assert got == expected, f"step {i}: desired {got}, expected {expected}"


def test_scaler_config_is_validated() -> None:
    with pytest.raises(ValueError, match="min_workers <= max_workers"):
        ScalerConfig(min_workers=5, max_workers=2)
    with pytest.raises(ValueError, match="stall_low <= stall_high"):
        ScalerConfig(stall_low=0.1, stall_high=0.05)


@pytest.mark.parametrize(
    ("targets", "autoscale", "expected"),
    [
        (PoolTargets(desired=5, operator=0), False, 2),
        (PoolTargets(desired=5, operator=0), True, 5),
        (PoolTargets(desired=5, operator=3), True, 3),
        (PoolTargets(desired=0, operator=0), True, 2),
        (PoolTargets(desired=40, operator=0), True, 6),
        (PoolTargets(desired=0, operator=9), False, 6),
    ],
)
def test_choose_target(targets: PoolTargets, autoscale: bool, expected: int) -> None:
    assert choose_target(targets, autoscale, initial=2, min_workers=1, max_workers=6) == expected


class FakePool:
    def __init__(self, n: int) -> None:
        self.n = n
        self.log: list[str] = []

    def live_count(self) -> int:
        return self.n

    def add_worker(self) -> None:
        self.n += 1
        self.log.append("add")

    def retire_worker(self) -> None:
        self.n -= 1
        self.log.append("retire")


def test_controller_moves_one_worker_per_pass() -> None:
    pool = FakePool(2)
    targets = PoolTargets(desired=0, operator=4)
    controller = PoolController(pool, lambda: targets, autoscale=False, initial=2)
    assert [controller.reconcile_once() for _ in range(3)] == [1, 1, 0]
    targets = PoolTargets(desired=0, operator=0)
    assert [controller.reconcile_once() for _ in range(3)] == [-1, -1, 0]
    assert pool.log == ["add", "add", "retire", "retire"]
