"""Process accounting for the benchmarks: CPU seconds and peak RSS of this process and of
every process it started (workers, DataLoader workers, Ray's raylet and workers), from /proc.

Owns :class:`ProcessSampler`. Linux only; no psutil needed (a bench must run on a bare venv).
Peak RSS is the kernel's high-water mark (``VmHWM``), so a sample every ``interval_s`` still
sees the true peak of every process alive at one of the samples; CPU is ``utime + stime``.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def peak_rss_mb(pid: int | str = "self") -> float:
    """The high-water mark of a process's resident set, in MB (0 when it is gone)."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds a process used so far (0 when it is gone)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def self_cpu_s() -> float:
    """CPU seconds of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _name(pid: int) -> str:
    cmdline = _read(f"/proc/{pid}/cmdline").split("\0")
    args = [a for a in cmdline if a]
    if not args:
        return _read(f"/proc/{pid}/comm").strip() or str(pid)
    if "-m" in args and args.index("-m") + 1 < len(args):
        rest = args[args.index("-m") + 1 :]
        return " ".join(rest[:2])
    return os.path.basename(args[0])[:40]


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, grandchildren, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if not stat:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@dataclass
class _Seen:
    name: str
    peak_rss_mb: float = 0.0
    cpu_first_s: float = 0.0
    cpu_last_s: float = 0.0


@dataclass
class ProcessSampler:
    """Samples every process below this one in a background thread.

    Call :meth:`mark` when the timed section starts (CPU used before it is not counted) and
    :meth:`stop` when it ends. Shared between the caller and its thread: ``_lock`` guards
    ``_seen``.
    """

    interval_s: float = 0.2
    _seen: dict[int, _Seen] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ProcessSampler:
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def mark(self) -> None:
        """Starts the timed section: CPU counts from here."""
        self._sample()
        with self._lock:
            for seen in self._seen.values():
                seen.cpu_first_s = seen.cpu_last_s

    def stop(self) -> list[dict[str, object]]:
        """Ends sampling; returns one record per process seen: role, peak RSS, CPU."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        with self._lock:
            return [
                {
                    "pid": pid,
                    "role": seen.name,
                    "peak_rss_mb": round(seen.peak_rss_mb, 1),
                    "cpu_s": round(seen.cpu_last_s - seen.cpu_first_s, 3),
                }
                for pid, seen in sorted(self._seen.items())
            ]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        for pid in descendants(os.getpid()):
            rss, cpu = peak_rss_mb(pid), cpu_s(pid)
            with self._lock:
                seen = self._seen.get(pid)
                if seen is None:
                    seen = self._seen[pid] = _Seen(_name(pid))
                seen.peak_rss_mb = max(seen.peak_rss_mb, rss)
                seen.cpu_last_s = max(seen.cpu_last_s, cpu)


class Timer:
    """Wall and this-process CPU time of a section."""

    def __enter__(self) -> Timer:
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self._wall0 = time.perf_counter()
        self._cpu0 = self_cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall0
        self.cpu_s = self_cpu_s() - self._cpu0
