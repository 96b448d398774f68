"""A throwaway one-node Ceph cluster with radosgw: a production S3 implementation on loopback.

Used by ``test_s3.py`` beside moto's server. All state lives in one temporary folder (the OSD
keeps objects in memory: ``memstore``), nothing needs systemd or Docker, and every daemon runs
in the foreground as a child of the test process. Start takes about 15 s, stop about 8 s.
The recipe (and why each setting is there) is in ``shared/reference/ceph-s3-local.md``;
``make test`` installs the Debian packages ``ceph-mon ceph-osd radosgw ceph-common``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

BINARIES = (
    "ceph-authtool",
    "monmaptool",
    "ceph-mon",
    "ceph-osd",
    "ceph",
    "radosgw",
    "radosgw-admin",
)


@dataclass(frozen=True)
class Radosgw:
    """A running endpoint: its URL and one user's keys."""

    endpoint: str
    key: str
    secret: str


def missing_binaries() -> list[str]:
    """The Ceph programs this machine lacks (empty when radosgw can run)."""
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(root: Path, mon_port: int, rgw_port: int) -> str:
    run = root / "run"
    return f"""[global]
fsid = {uuid.uuid4()}
mon host = v1:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
osd objectstore = memstore
memstore device bytes = 2147483648
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
osd class update on start = false
osd crush update on start = false
run dir = {run}
admin socket = {run}/$name.asok
pid file = {run}/$name.pid
log file = {root}/log/$name.log
mon cluster log file = {root}/log/cluster.log
mon data = {root}/mon/$cluster-$id
osd data = {root}/osd/$cluster-$id
keyring = {root}/keyring

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
"""


class _Daemons:
    """The cluster's processes, stopped in reverse start order (rgw, osd, mon)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.root / "log" / f"{args[0]}.out", "ab")  # noqa: SIM115 - kept by Popen
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


def _run(conf: Path, *args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        [*args, "-c", str(conf)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def _wait(
    what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float
) -> None:
    """Polls ``ready`` until true; fails early when ``process`` dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready in {timeout:.0f} s")
        time.sleep(0.3)


@contextlib.contextmanager
def radosgw(root: Path) -> Iterator[Radosgw]:
    """Starts mon, osd and radosgw under ``root``, creates a user, yields the endpoint."""
    for folder in ("run", "log", "mon", "osd", "rgw"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    mon_port, rgw_port = _free_port(), _free_port()
    conf = root / "ceph.conf"
    conf.write_text(_config(root, mon_port, rgw_port))
    daemons = _Daemons(root)
    try:
        keyring = str(root / "keyring")
        _run(conf, "ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.")
        _run(
            conf,
            "monmaptool",
            "--create",
            "--addv",
            "a",
            f"[v1:127.0.0.1:{mon_port}]",
            "--fsid",
            _fsid(conf),
            str(root / "monmap"),
        )
        _run(conf, "ceph-mon", "--mkfs", "-i", "a", "--monmap", str(root / "monmap"))
        mon = daemons.start("ceph-mon", "-f", "-i", "a", "-c", str(conf))
        _wait("ceph-mon", lambda: _ok(conf, "ceph", "mon", "stat"), mon, 30)
        osd_uuid = str(uuid.uuid4())
        osd_id = _run(conf, "ceph", "osd", "new", osd_uuid).strip()
        (root / "osd" / f"ceph-{osd_id}").mkdir()
        _run(conf, "ceph-osd", "--mkfs", "-i", osd_id, "--osd-uuid", osd_uuid)
        _run(conf, "ceph", "osd", "crush", "add-bucket", "node", "host")
        _run(conf, "ceph", "osd", "crush", "move", "node", "root=default")
        _run(conf, "ceph", "osd", "crush", "add", f"osd.{osd_id}", "1.0", "host=node")
        osd = daemons.start("ceph-osd", "-f", "-i", osd_id, "-c", str(conf))
        _wait("ceph-osd", lambda: "1 up" in _out(conf, "ceph", "osd", "stat"), osd, 60)
        rgw = daemons.start("radosgw", "-f", "-n", "client.rgw", "-c", str(conf))
        endpoint = f"http://127.0.0.1:{rgw_port}"
        _wait("radosgw", lambda: _http_ok(endpoint), rgw, 90)
        key, secret = "dpp-test-key", "dpp-test-secret"
        _run(
            conf,
            "radosgw-admin",
            "user",
            "create",
            "--uid=dpp",
            "--display-name=dpp",
            f"--access-key={key}",
            f"--secret={secret}",
        )
        yield Radosgw(endpoint=endpoint, key=key, secret=secret)
    finally:
        daemons.stop()


def _fsid(conf: Path) -> str:
    for line in conf.read_text().splitlines():
        if line.startswith("fsid = "):
            return line.split(" = ", 1)[1]
    raise RuntimeError(f"{conf} has no fsid")


def _ok(conf: Path, *args: str) -> bool:
    try:
        _run(conf, *args, "--connect-timeout", "5", timeout=10)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


def _out(conf: Path, *args: str) -> str:
    try:
        return _run(conf, *args, "--connect-timeout", "5", timeout=10)
    except (RuntimeError, subprocess.TimeoutExpired):
        return ""


def _http_ok(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


if __name__ == "__main__":  # manual check: python tests/integration/radosgw.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, radosgw(Path(tmp)) as gw:
        print(gw, "pid", os.getpid())
