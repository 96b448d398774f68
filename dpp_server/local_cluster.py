"""A local cluster: one master and N workers, each its own process on 127.0.0.1.

Owns process lifecycle for ``dpp up``, the demo and the integration tests (tf.data service's
``TestCluster``): start, read back the bound ports, add a worker, kill one (SIGKILL), stop all.
Children ask Linux (``PR_SET_PDEATHSIG``) to signal them when the process that started them
dies, so a crashed test or a killed ``dpp up`` leaves no process behind. They do it themselves
at start-up (:func:`die_with_parent`, asked through ``DPP_PARENT_PID``) rather than in a
``preexec_fn``: that would force a plain ``fork()`` of a process running gRPC threads, whose fork
handlers can abort the child.

Secured by default, like every dpp cluster: it makes a throwaway CA, certificates and tokens
(:mod:`dpp_server.pki`) in ``<work_dir>/secrets`` (or reuses the folder ``$DPP_LOCAL_CREDENTIALS``
names: the test suite makes one set for all its clusters), starts the master and workers with
mTLS and token files, allows the user's own places as tables (:func:`dpp_server.policy.
local_prefixes`), and writes the user's **connection file** (:attr:`LocalCluster.
connection_file`) once the master's address is known.
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

from dpp_proto.auth import Connection, load_connection

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: A credentials folder (made by :func:`dpp_server.pki.make_credentials`) that local clusters
#: reuse instead of making their own: the test suite sets it once for all its clusters.
CREDENTIALS_ENV = "DPP_LOCAL_CREDENTIALS"


def die_with_parent() -> None:
    """Called at start-up by a child of a LocalCluster (``DPP_PARENT_PID`` set): ask Linux to
    SIGINT us when our parent dies, and exit now if it already has."""
    parent = os.environ.get("DPP_PARENT_PID")
    if not parent:
        return
    try:
        # OSError: no libc.so.6 (not glibc Linux); AttributeError: a libc without prctl.
        failed = ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
        problem = os.strerror(ctypes.get_errno()) if failed else ""
    except (OSError, AttributeError) as exc:
        problem = str(exc)
    if problem:
        logger.warning(
            "cannot ask Linux to stop this process when its parent %s dies (%s): it may "
            "outlive a crashed parent",
            parent,
            problem,
        )
    if os.getppid() != int(parent):
        os._exit(0)


@dataclasses.dataclass
class ClusterProcess:
    """One child process and where it logs."""

    role: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str
    # host:port of the process's /metrics (empty when it serves none).
    metrics_address: str = ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def _wait_or_explain(child: ClusterProcess, sig: int, timeout_s: float) -> None:
    """Waits for ``child`` to exit after ``sig``; if it does not within ``timeout_s``, has it
    write every thread's stack to its log (SIGUSR1, ``faulthandler``), kills it and raises
    with that log's tail, so a process that hangs on the way out says where."""
    try:
        child.process.wait(timeout_s)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(OSError):
        child.process.send_signal(signal.SIGUSR1)
    time.sleep(1.0)
    child.process.kill()
    child.process.wait()
    raise RuntimeError(
        f"{child.role} (pid {child.process.pid}) did not exit within {timeout_s:g} s of "
        f"signal {sig}; its threads and last log lines:\n{child.log_tail(150)}"
    )


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
        journal: bool = False,
        secure: bool = True,
        allow_table: str | None = None,
        allow_endpoint: str = "",
    ) -> None:
        """``secure`` False starts every process with --insecure. ``allow_table``: the
        master's table rules (None: the user's own places, :func:`~dpp_server.policy.
        local_prefixes`); ``allow_endpoint``: storage endpoints specs may name."""
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
        self.journal_dir = self.work_dir / "journal" if journal else None
        self.secure = secure
        self.connection_file: Path | None = None
        self._security_args: dict[str, list[str]] = {"master": [], "worker": []}
        if not secure:
            self._security_args = {"master": ["--insecure"], "worker": ["--insecure"]}
            return
        from dpp_server.pki import Credentials, make_credentials
        from dpp_server.policy import local_prefixes

        shared = os.environ.get(CREDENTIALS_ENV)
        self.credentials = (
            Credentials.at(Path(shared)) if shared else make_credentials(self.work_dir / "secrets")
        )
        rules = local_prefixes() if allow_table is None else allow_table
        policy = ["--allow-table", rules]
        if allow_endpoint:
            policy += ["--allow-endpoint", allow_endpoint]
        self._security_args = {
            "master": [*self.credentials.server_args("master"), *policy],
            "worker": self.credentials.server_args("worker"),
        }

    @property
    def master_address(self) -> str:
        if self.master is None:
            raise RuntimeError("the cluster is not started")
        return self.master.address

    @property
    def connection(self) -> Connection | None:
        """The user's credentials for this cluster (None when insecure)."""
        return load_connection(self.connection_file) if self.connection_file else None

    def start(self) -> LocalCluster:
        self.master = self._spawn_master("0")
        if self.secure:
            self.connection_file = self.work_dir / "connection.json"
            self.credentials.connection_for(self.master.address, self.connection_file)
        for _ in range(self.num_workers):
            self.add_worker()
        return self

    def _spawn_master(self, port: str) -> ClusterProcess:
        args = ["master", "--port", port, *self._security_args["master"], *self.master_args]
        if self.journal_dir is not None:
            args += ["--journal-dir", str(self.journal_dir)]
        return self._spawn("master", args)

    def kill_master(self, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` (SIGKILL by default) to the master and waits for it to exit."""
        if self.master is None:
            raise RuntimeError("the cluster is not started")
        self.master.process.send_signal(sig)
        _wait_or_explain(self.master, sig, 30.0)

    def restart_master(self) -> None:
        """Starts the master again on the same port (and journal, when the cluster keeps
        one), so workers and clients reconnect to the address they know. Kills it first if it
        still runs."""
        if self.master is None:
            raise RuntimeError("the cluster is not started")
        if self.master.alive:
            self.kill_master()
        port = self.master.address.rsplit(":", 1)[1]
        self.master = self._spawn_master(port)

    def add_worker(self, extra_args: Sequence[str] = ()) -> int:
        """Starts one more worker and returns its index in :attr:`workers`."""
        args = [
            "worker",
            "--master",
            self.master_address,
            "--threads",
            str(self.pipeline_threads),
            *self._security_args["worker"],
            *self.worker_args,
            *extra_args,
        ]
        self.workers.append(self._spawn("worker", args))
        return len(self.workers) - 1

    def kill_worker(self, index: int, sig: int = signal.SIGKILL, wait: bool = True) -> None:
        """Sends ``sig`` (SIGKILL by default: no chance to clean up) to one worker; with
        SIGTERM the worker drains first."""
        worker = self.workers[index]
        worker.process.send_signal(sig)
        if wait:
            _wait_or_explain(worker, sig, 60.0)

    @property
    def live_workers(self) -> list[int]:
        return [i for i, w in enumerate(self.workers) if w.alive]

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGINT every process (workers first), wait, then SIGKILL what is left."""
        processes = [w.process for w in self.workers]
        if self.master is not None:
            processes.append(self.master.process)
        for p in processes:
            if p.poll() is None:
                # SIGINT: workers stop without draining, since the whole cluster goes.
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for p in processes:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("process %d did not stop in time; killing it", p.pid)
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
        ready.unlink(missing_ok=True)  # a work_dir may be reused by a later cluster
        command = [sys.executable, "-m", "dpp_server", *args, "--ready-file", str(ready)]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "DPP_PARENT_PID": str(os.getpid())},
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
        announced = json.loads(ready.read_text())
        child.address = announced["address"]
        child.metrics_address = announced.get("metrics_address", "")
        logger.info("%s ready at %s (pid %d)", name, child.address, process.pid)
        return child
