"""The bottleneck verdict: where a cluster's time goes, and what to do about it.

Pure logic: one sampling window of figures in (per-worker stage seconds and rows, per-rank
stall), one :class:`Verdict` out (a kind, one sentence, the workers the demand needs). No I/O,
no clock, no grpc, no prometheus: :mod:`dpp_server.monitor` takes the windows, and the
:class:`~dpp_server.scaling.Scaler` turns ``workers_needed`` into a desired count.

The model, in numbers (one worker with 2 pipeline threads, a 10 s window):

    1. The worker's threads had 20 thread-seconds: read 4, transform 12, batch 1, serialize 1,
       wait_consumer 1, idle 1. Busy (the work stages) = 18 s, a 90% share: the workers are
       saturated, and transform is 12/18 = 67% of their work.
    2. They produced 60 000 rows: 60 000 / 18 = 3 333 rows per busy thread-second, so a fully
       busy worker makes 2 x 3 333 = 6 667 rows/s (its *capacity*).
    3. The one rank consumed the same 60 000 rows, and stalled 40% of the window. Without stalls
       the trainer would take 6 000 / (1 - 0.4) = 10 000 rows/s (the *demand*).
    4. Workers needed = ceil(10 000 x 1.1 headroom / 6 667) = 2: "workers CPU-bound in
       transform: about 1 more worker would remove the trainer's 40% stall".

Glossary: *stall share* is the fraction of a rank's wall time spent waiting in ``next()``;
*busy* is the share of worker thread time in the work stages (read, filter, transform, batch,
serialize), against ``wait_consumer`` (a full buffer: the consumer is slow) and ``idle`` (no
split to lease).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence

WORK_STAGES = ("read", "filter", "transform", "batch", "serialize")
WAIT_STAGES = ("wait_consumer", "idle")
STAGES = WORK_STAGES + WAIT_STAGES


class Kind(enum.StrEnum):
    """The verdict's kinds: a bounded set, so they may label a metric."""

    NO_WORKERS = "no-workers"
    IDLE = "idle"
    WORKER_CPU_BOUND = "worker-cpu-bound"
    STORAGE_BOUND = "storage-bound"
    SPLIT_STARVED = "split-starved"
    TRANSFER_BOUND = "transfer-bound"
    TRAINER_BOUND = "trainer-bound"
    BALANCED = "balanced"
    WORKERS_SATURATED = "workers-saturated"


@dataclasses.dataclass(frozen=True)
class WorkerWindow:
    """One worker over a window: seconds per stage (keys of :data:`STAGES`) summed over its
    pipeline threads, and what it produced."""

    worker_id: str
    threads: int
    stage_s: Mapping[str, float]
    rows_out: int
    bytes_out: int = 0


@dataclasses.dataclass(frozen=True)
class RankWindow:
    """One rank of one session over a window, as its loader measured it."""

    session_id: str
    rank: int
    rows: int
    stall_s: float
    wall_s: float
    decode_s: float = 0.0

    @property
    def stall_share(self) -> float:
        return min(1.0, self.stall_s / self.wall_s) if self.wall_s > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class ClusterWindow:
    """Everything one verdict looks at. ``ranks`` holds only ranks that reported during the
    window; empty when no client reports its figures (the verdict then says so)."""

    window_s: float
    workers: Sequence[WorkerWindow]
    ranks: Sequence[RankWindow] = ()
    splits_pending: int = 0


@dataclasses.dataclass(frozen=True)
class VerdictConfig:
    """Thresholds of the verdict.

    Attributes:
        stall_high: a rank stalling more than this share is input-bound. Lower reacts to small
            stalls (and adds workers for them); higher tolerates more lost trainer time.
        busy_high: workers whose work stages take more than this share of their thread time are
            saturated.
        wait_high: a wait stage (consumer or idle) above this share explains a stall.
        dominant_share: a stage taking at least this share of the work is named as dominant.
        headroom: extra capacity asked for above the measured demand, so that a small rise
            in demand does not stall the trainer at once; more headroom costs idle workers.
        max_stall_for_demand: the stall share is capped here when estimating demand
            (``consumed / (1 - stall)`` grows without bound as the stall nears 1).
    """

    stall_high: float = 0.05
    busy_high: float = 0.7
    wait_high: float = 0.3
    dominant_share: float = 0.5
    headroom: float = 0.1
    max_stall_for_demand: float = 0.8


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Where the time goes, as one sentence and the numbers behind it.

    Attributes:
        kind: the bottleneck's kind.
        text: one sentence: where the time goes and what to do.
        stage_shares: share of all worker thread time per stage (sums to 1 when measured).
        rows_per_s: rows produced per second by all workers.
        bytes_per_s: frame bytes produced per second by all workers.
        stall_share: the worst rank's stall share; None when no rank reported.
        capacity_per_worker: rows/s a fully busy worker makes; None when nothing was produced.
        demand_rows_per_s: rows/s the ranks would take without stalls; None when unknown.
        workers_needed: workers that demand needs (headroom included); None when unknown.
        more_workers_help: whether adding workers would reduce the stall.
    """

    kind: Kind
    text: str
    stage_shares: Mapping[str, float]
    rows_per_s: float
    bytes_per_s: float
    stall_share: float | None
    capacity_per_worker: float | None
    demand_rows_per_s: float | None
    workers_needed: int | None
    more_workers_help: bool


def _pct(x: float) -> str:
    return f"{round(100 * x)}%"


def _workers(n: int) -> str:
    return f"{n} worker" if n == 1 else f"{n} workers"


def analyze(window: ClusterWindow, config: VerdictConfig | None = None) -> Verdict:
    """Judges one window. See the module docstring for the model."""
    cfg = config or VerdictConfig()
    n = len(window.workers)
    span = max(window.window_s, 1e-9)
    stage_totals = {s: sum(w.stage_s.get(s, 0.0) for w in window.workers) for s in STAGES}
    measured = sum(stage_totals.values())
    shares = {s: (t / measured if measured > 0 else 0.0) for s, t in stage_totals.items()}
    busy_s = sum(stage_totals[s] for s in WORK_STAGES)
    busy = busy_s / measured if measured > 0 else 0.0
    rows = sum(w.rows_out for w in window.workers)
    rows_per_s = rows / span
    bytes_per_s = sum(w.bytes_out for w in window.workers) / span

    ranks = [r for r in window.ranks if r.wall_s > 0]
    stall = max((r.stall_share for r in ranks), default=None)
    worst = max(ranks, key=lambda r: r.stall_share) if ranks else None

    capacity: float | None = None
    if rows > 0 and busy_s > 0 and n > 0:
        mean_threads = sum(w.threads for w in window.workers) / n
        capacity = rows / busy_s * max(mean_threads, 1.0)

    # Demand: what the ranks would consume without stalls. Without rank figures, a pool that
    # mostly waits on its consumer makes exactly what is consumed.
    demand: float | None = None
    if ranks:
        for r in ranks:
            consumed = r.rows / span
            demand = (demand or 0.0) + consumed / (
                1.0 - min(r.stall_share, cfg.max_stall_for_demand)
            )
    elif n and shares["wait_consumer"] >= cfg.wait_high:
        demand = rows_per_s

    needed: int | None = None
    if demand is not None and capacity:
        needed = max(1, math.ceil(demand * (1.0 + cfg.headroom) / capacity))

    def verdict(kind: Kind, text: str, helps: bool = False) -> Verdict:
        return Verdict(
            kind=kind,
            text=text,
            stage_shares=shares,
            rows_per_s=rows_per_s,
            bytes_per_s=bytes_per_s,
            stall_share=stall,
            capacity_per_worker=capacity,
            demand_rows_per_s=demand,
            workers_needed=needed,
            more_workers_help=helps,
        )

    if n == 0:
        if ranks or window.splits_pending:
            needed = 1
            return verdict(
                Kind.NO_WORKERS,
                "no live workers: the session cannot make progress; start workers "
                "(dpp scale N, or dpp worker --master ...)",
                helps=True,
            )
        return verdict(Kind.NO_WORKERS, "no live workers and no session consuming")
    if rows == 0 and not any(r.rows for r in ranks) and (stall is None or stall < 0.5):
        return verdict(Kind.IDLE, f"idle: no session is consuming; {_workers(n)} wait for work")

    work = {s: stage_totals[s] for s in WORK_STAGES}
    top_stage = max(work, key=lambda s: work[s])
    top_share = work[top_stage] / busy_s if busy_s > 0 else 0.0
    more = max(0, (needed or n) - n)
    who = f"rank {worst.rank}'s" if worst is not None and len(ranks) > 1 else "the trainer's"
    stall_txt = _pct(stall) if stall is not None else ""

    if stall is not None and stall >= cfg.stall_high:
        if busy >= cfg.busy_high:
            remedy = (
                f"about {more} more {'worker' if more == 1 else 'workers'} would remove "
                f"{who} {stall_txt} stall"
                if more
                else f"add workers to remove {who} {stall_txt} stall"
            )
            if top_stage == "read" and top_share >= cfg.dominant_share:
                return verdict(
                    Kind.STORAGE_BOUND,
                    f"storage reads dominate ({_pct(top_share)} of worker time): {remedy}, "
                    "or read less (partition filters, fewer columns, larger row groups)",
                    helps=True,
                )
            return verdict(
                Kind.WORKER_CPU_BOUND,
                f"workers CPU-bound in {top_stage} ({_pct(top_share)} of their work): {remedy}",
                helps=True,
            )
        if shares["wait_consumer"] >= cfg.wait_high:
            decode = max((r.decode_s / r.wall_s for r in ranks if r.wall_s > 0), default=0.0)
            return verdict(
                Kind.TRANSFER_BOUND,
                f"transfer-bound: workers wait on the stream {_pct(shares['wait_consumer'])} of "
                f"their time while {who} stall is {stall_txt}: the network or the client's "
                f"decoding ({_pct(decode)} of wall time) is the limit; more workers will not help",
            )
        if shares["idle"] >= cfg.wait_high:
            return verdict(
                Kind.SPLIT_STARVED,
                f"split-starved: workers idle {_pct(shares['idle'])} of their time with "
                f"{window.splits_pending} splits pending while {who} stall is {stall_txt}: "
                "the plan has too few splits to keep them busy (lower target_split_rows)",
            )
        return verdict(
            Kind.WORKER_CPU_BOUND,
            f"input-bound: {who} stall is {stall_txt} with workers {_pct(busy)} busy, "
            f"{top_stage} the largest stage; about {more} more "
            f"{'worker' if more == 1 else 'workers'} would help",
            helps=True,
        )

    waiting = shares["wait_consumer"] + shares["idle"]
    if waiting >= cfg.wait_high and (stall is not None or shares["wait_consumer"] >= cfg.wait_high):
        spare = max(0, n - (needed if needed is not None else n))
        head = f"trainer-bound: {spare} of {n} workers are idle" if spare else "trainer-bound"
        tail = f"trainer stall {stall_txt}" if stall is not None else "no trainer figures"
        return verdict(
            Kind.TRAINER_BOUND,
            f"{head} (workers wait {_pct(waiting)} of their time; {tail})",
        )
    if stall is None:
        if busy >= cfg.busy_high:
            return verdict(
                Kind.WORKERS_SATURATED,
                f"workers {_pct(busy)} busy, {top_stage} the largest stage "
                f"({_pct(top_share)} of their work); no trainer figures reported, so the stall "
                "is unknown",
            )
        return verdict(
            Kind.BALANCED,
            f"workers {_pct(busy)} busy; no trainer figures reported, so the stall is unknown",
        )
    return verdict(
        Kind.BALANCED,
        f"balanced: trainer stall {stall_txt}, workers {_pct(busy)} busy; no change needed",
    )
