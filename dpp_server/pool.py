"""The local worker pool of ``dpp up``: keeps as many worker processes as the master asks for.

Owns the reconcile loop only. Every ``interval_s`` the :class:`PoolController` reads the
master's ``GetClusterStatus`` and picks a target: the operator's (``dpp scale N`` called
``SetWorkerTarget``), else the autoscaler's ``desired_workers`` with ``--autoscale``, else the
count ``dpp up`` started with. It then adds worker processes, or retires the newest ones by
graceful drain (SIGTERM: the worker stops taking splits, finishes those in hand, unregisters and
leaves). A worker process that died is replaced, since only live ones are counted.

Why a control RPC on the master rather than a control file: ``dpp scale`` then needs only the
master's address (which ``dpp up`` prints), works from any host, and the same target is visible
in ``dpp top`` and as ``dpp_master_operator_target_workers``.

A worked example (``dpp up --workers 2``, then ``dpp scale 3``, then ``dpp scale 0``):

    1. The controller reads target 0 from the master: no operator target, no autoscale, so
       the target is 2; two workers live: nothing to do.
    2. ``dpp scale 3`` sets the operator target 3; the next pass starts one worker.
    3. ``dpp scale 0`` clears it; the next pass retires the newest worker (SIGTERM, drain).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dpp_proto.auth import Connection
    from dpp_server.local_cluster import LocalCluster

logger = logging.getLogger(__name__)


class WorkerPool(Protocol):
    """Processes the controller starts and retires (:class:`LocalClusterPool`)."""

    def live_count(self) -> int: ...

    def add_worker(self) -> None: ...

    def retire_worker(self) -> None: ...


class LocalClusterPool:
    """A :class:`~dpp_server.local_cluster.LocalCluster`'s workers as a pool. Indices of
    ``cluster.workers`` stay stable: retired and dead workers stay listed, not alive."""

    def __init__(self, cluster: LocalCluster, drain_timeout_s: float = 60.0) -> None:
        self.cluster = cluster
        self.drain_timeout_s = drain_timeout_s

    def live_count(self) -> int:
        return sum(1 for w in self.cluster.workers if w.alive)

    def add_worker(self) -> None:
        self.cluster.add_worker()

    def retire_worker(self) -> None:
        """Retires the newest live worker by graceful drain: SIGTERM makes it stop taking
        splits, finish those in hand and unregister; SIGKILL only after the drain timeout."""
        live = [w for w in self.cluster.workers if w.alive]
        if not live:
            return
        process = live[-1].process
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.drain_timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("worker pid %d did not drain in time; killing it", process.pid)
            process.kill()
            process.wait()


@dataclasses.dataclass(frozen=True)
class PoolTargets:
    """What the master says: the autoscaler's and the operator's counts (0: none)."""

    desired: int
    operator: int


def choose_target(
    targets: PoolTargets, autoscale: bool, initial: int, min_workers: int, max_workers: int
) -> int:
    """The operator's count wins; then the autoscaler's (with ``autoscale``); then ``initial``.
    Clamped to ``[min_workers, max_workers]``."""
    if targets.operator > 0:
        target = targets.operator
    elif autoscale and targets.desired > 0:
        target = targets.desired
    else:
        target = initial
    return max(min_workers, min(max_workers, target))


class PoolController:
    """Reconciles a pool towards the master's target in a daemon thread. The pool is touched
    only from that thread (LocalCluster is not thread-safe)."""

    def __init__(
        self,
        pool: WorkerPool,
        fetch: Callable[[], PoolTargets],
        *,
        autoscale: bool,
        initial: int,
        min_workers: int = 1,
        max_workers: int = 32,
        interval_s: float = 2.0,
    ) -> None:
        self._pool = pool
        self._fetch = fetch
        self.autoscale = autoscale
        self.initial = initial
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconcile_once(self) -> int:
        """One pass: returns the change made (+ added, - retired). At most one worker is
        added or retired per pass, so a retire's drain finishes before the next decision."""
        target = choose_target(
            self._fetch(), self.autoscale, self.initial, self.min_workers, self.max_workers
        )
        live = self._pool.live_count()
        if live < target:
            self._pool.add_worker()
            logger.info("pool: %d -> %d workers (target %d): started one", live, live + 1, target)
            return 1
        if live > target:
            self._pool.retire_worker()
            logger.info("pool: %d -> %d workers (target %d): retired one", live, live - 1, target)
            return -1
        return 0

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.reconcile_once()
                except Exception:
                    logger.exception("reconciling the worker pool failed; will retry")

        self._thread = threading.Thread(target=loop, name="dpp-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60.0)


def master_targets(
    master_address: str, timeout_s: float = 5.0, connection: Connection | None = None
) -> Callable[[], PoolTargets]:
    """Reads the targets from a master's ``MonitorService.GetClusterStatus`` (``connection``:
    an admin's credentials; None: plaintext)."""
    from dpp_proto import master_pb2, master_pb2_grpc
    from dpp_proto.auth import open_channel

    stub = master_pb2_grpc.MonitorServiceStub(open_channel(master_address, connection))

    def fetch() -> PoolTargets:
        status = stub.GetClusterStatus(master_pb2.GetClusterStatusRequest(), timeout=timeout_s)
        return PoolTargets(desired=status.desired_workers, operator=status.operator_target)

    return fetch


def start_local_controller(
    cluster: LocalCluster,
    *,
    autoscale: bool,
    initial: int,
    min_workers: int,
    max_workers: int,
    interval_s: float = 2.0,
) -> PoolController:
    """The controller of ``dpp up``, started."""
    controller = PoolController(
        LocalClusterPool(cluster),
        master_targets(cluster.master_address, connection=cluster.connection),
        autoscale=autoscale,
        initial=initial,
        min_workers=min_workers,
        max_workers=max_workers,
        interval_s=interval_s,
    )
    controller.start()
    return controller
