"""A local cluster: one master and N workers, each its own process on 127.0.0.1.

Owns process lifecycle for ``dpp up``, the demo and the integration tests (tf.data service's
``TestCluster``): start, read back the bound ports, add a worker, kill one (SIGKILL), stop all.
Children are started with ``PR_SET_PDEATHSIG`` so that they die with the process that started
them: a crashed test or a killed ``dpp up`` leaves no process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM us when our parent dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclasses.dataclass
class ClusterProcess:
    """One child process and where it logs."""

    role: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def write_ready_file(path: str, address: str, **extra: str) -> None:
    """Announces a bound address to whoever started us (atomically: write, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"address": address, "pid": os.getpid(), **extra}, f)
    os.replace(tmp, path)


class LocalCluster:
    """Starts and stops a master and workers as child processes. Not thread-safe: drive it
    from one thread."""

    def __init__(
        self,
        workers: int = 2,
        *,
        pipeline_threads: int = 2,
        master_args: Sequence[str] = (),
        worker_args: Sequence[str] = (),
        work_dir: str | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.num_workers = workers
        self.pipeline_threads = pipeline_threads
        self.master_args = list(master_args)
        self.worker_args = list(worker_args)
        self.ready_timeout_s = ready_timeout_s
        self._tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="dpp-cluster-")
        self.work_dir = Path(work_dir or self._tmp.name)  # type: ignore[union-attr]
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.master: ClusterProcess | None = None
        self.workers: list[ClusterProcess] = []
        self._seq = 0

    @property
    def master_address(self) -> str:
        if self.master is None:
            raise RuntimeError("the cluster is not started")
        return self.master.address

    def start(self) -> LocalCluster:
        self.master = self._spawn("master", ["master", "--port", "0", *self.master_args])
        for _ in range(self.num_workers):
            self.add_worker()
        return self

    def add_worker(self, extra_args: Sequence[str] = ()) -> int:
        """Starts one more worker and returns its index in :attr:`workers`."""
        args = [
            "worker",
            "--master",
            self.master_address,
            "--threads",
            str(self.pipeline_threads),
            *self.worker_args,
            *extra_args,
        ]
        self.workers.append(self._spawn("worker", args))
        return len(self.workers) - 1

    def kill_worker(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` (SIGKILL by default: no chance to clean up) to one worker."""
        worker = self.workers[index]
        worker.process.send_signal(sig)
        worker.process.wait(30)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every process (workers first), wait, then SIGKILL what is left."""
        processes = [w.process for w in self.workers]
        if self.master is not None:
            processes.append(self.master.process)
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in processes:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("process %d ignored SIGTERM; killing it", p.pid)
                p.kill()
                p.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, role: str, args: list[str]) -> ClusterProcess:
        self._seq += 1
        name = f"{role}-{self._seq}"
        ready = self.work_dir / f"{name}.ready.json"
        log_path = self.work_dir / f"{name}.log"
        command = [sys.executable, "-m", "dpp_server", *args, "--ready-file", str(ready)]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + self.ready_timeout_s
        child = ClusterProcess(role, process, log_path, "")
        while not ready.exists():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {process.returncode} before it was ready:\n"
                    f"{child.log_tail()}"
                )
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError(
                    f"{name} was not ready after {self.ready_timeout_s}s:\n{child.log_tail()}"
                )
            time.sleep(0.05)
        child.address = json.loads(ready.read_text())["address"]
        logger.info("%s ready at %s (pid %d)", name, child.address, process.pid)
        return child
