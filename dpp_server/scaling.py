"""The scaler: turns each window's verdict into a desired worker count, with hysteresis.

Pure logic with a little state (the current desired count and two streak counters); no I/O,
no clock. The master's monitor feeds it one :class:`ScalerInput` per sampling window and
exports its answer as the ``dpp_desired_workers`` gauge, which ``dpp up --autoscale`` and a
Kubernetes HorizontalPodAutoscaler follow.

The rule, in order:

    1. The *proposal* is the verdict's ``workers_needed`` (demand / per-worker capacity, with
       headroom), or the current desired count when that is unknown.
    2. Stall feedback: when a rank still stalls above ``stall_high`` and more workers would help,
       but the model says the current pool suffices, propose one more worker (the model
       under-counts, e.g. when workers share cores).
    3. Clamp to ``[min_workers, max_workers]``.
    4. Hysteresis: move up only after ``up_after`` consecutive windows propose more, down only
       after ``down_after`` consecutive windows propose fewer *and* every rank stalls below
       ``stall_low``. Up is quick (a stalled trainer wastes accelerators), down is slow (a
       retired worker's splits restart elsewhere).

A worked example (up_after 2, down_after 3, desired 2):

    window:    1   2   3   4   5   6   7
    proposal:  4   4   4   2   1   1   1     (stall 30% in 1-3, then 0%)
    desired:   2   4   4   4   4   1   1
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ScalerConfig:
    """Settings of the scaler.

    Attributes:
        min_workers: never fewer. At least 1 keeps sessions able to progress.
        max_workers: never more: the budget cap.
        stall_high: a rank stalling above this share counts as input-bound (stall feedback).
        stall_low: the pool only shrinks while every rank stalls below this share. The gap
            between the two thresholds is the dead band that stops flapping.
        up_after: consecutive windows proposing more before scaling up. 1 reacts at once;
            more ignores a single noisy window.
        down_after: consecutive windows proposing fewer before scaling down. Larger is
            steadier but keeps idle workers longer.
    """

    min_workers: int = 1
    max_workers: int = 32
    stall_high: float = 0.05
    stall_low: float = 0.02
    up_after: int = 2
    down_after: int = 6

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError(
                f"scaler needs 0 <= min_workers <= max_workers, got {self.min_workers} and "
                f"{self.max_workers}"
            )
        if not 0 <= self.stall_low <= self.stall_high:
            raise ValueError(
                f"scaler needs 0 <= stall_low <= stall_high, got {self.stall_low} and "
                f"{self.stall_high}"
            )
        if self.up_after < 1 or self.down_after < 1:
            raise ValueError("scaler up_after and down_after must be >= 1")


@dataclasses.dataclass(frozen=True)
class ScalerInput:
    """One window's evidence.

    Attributes:
        workers_alive: live workers now.
        workers_needed: the verdict's estimate (None: unknown).
        stall_share: the worst rank's stall share (None: no rank reported).
        more_workers_help: whether the verdict says workers are the bottleneck.
    """

    workers_alive: int
    workers_needed: int | None
    stall_share: float | None
    more_workers_help: bool


class Scaler:
    """Desired worker count with hysteresis. Not thread-safe: one monitor thread drives it."""

    def __init__(self, config: ScalerConfig | None = None, initial: int = 1) -> None:
        self.config = config or ScalerConfig()
        self.desired = self._clamp(initial)
        self._up_streak = 0
        self._down_streak = 0

    def _clamp(self, n: int) -> int:
        return max(self.config.min_workers, min(self.config.max_workers, n))

    def propose(self, sample: ScalerInput) -> int:
        """Steps 1-3 of the rule: this window's proposal, before hysteresis."""
        cfg = self.config
        proposal = sample.workers_needed if sample.workers_needed is not None else self.desired
        stalled = sample.stall_share is not None and sample.stall_share > cfg.stall_high
        if stalled and sample.more_workers_help and proposal <= sample.workers_alive:
            proposal = sample.workers_alive + 1
        return self._clamp(proposal)

    def update(self, sample: ScalerInput) -> int:
        """Feeds one window and returns the (possibly new) desired count."""
        cfg = self.config
        proposal = self.propose(sample)
        calm = sample.stall_share is None or sample.stall_share < cfg.stall_low
        if proposal > self.desired:
            self._up_streak += 1
            self._down_streak = 0
            if self._up_streak >= cfg.up_after:
                self.desired = proposal
                self._up_streak = 0
        elif proposal < self.desired and calm:
            self._down_streak += 1
            self._up_streak = 0
            if self._down_streak >= cfg.down_after:
                self.desired = proposal
                self._down_streak = 0
        else:
            self._up_streak = self._down_streak = 0
        return self.desired
