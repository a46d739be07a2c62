"""What the server side costs: CPU seconds and resident memory of a stack's processes.

A stack's processes are its root pids and all their descendants (sshd forks a monitor and
an unprivileged child per connection). CPU counts the time of every process alive at the
start or the end, plus the children the roots reaped in between (`children_user` and
`children_system` include them). RSS is summed over the processes and sampled every
100 ms in a thread; the peak is reported (shared pages of forked sshd children are counted
once per process, which slightly favours sshreg's single process).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import psutil

from tests.support.rss import PeakRss, process_tree

SAMPLE_INTERVAL = 0.1


def _cpu(proc: psutil.Process) -> float | None:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def _reaped(roots: list[int]) -> float:
    total = 0.0
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.children_user + times.children_system
    return total


def _snapshot(roots: list[int]) -> dict[tuple[int, float], float]:
    """CPU seconds per process, keyed by (pid, create_time) so a reused pid is a new key."""
    result: dict[tuple[int, float], float] = {}
    for proc in process_tree(roots):
        with contextlib.suppress(psutil.Error):
            cpu = _cpu(proc)
            if cpu is not None:
                result[(proc.pid, proc.create_time())] = cpu
    return result


class CpuMeter:
    """CPU seconds used by a set of process trees between `start()` and `stop()`."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self._before: dict[tuple[int, float], float] = {}
        self._reaped_before = 0.0

    def start(self) -> None:
        self._before = _snapshot(self.roots)
        self._reaped_before = _reaped(self.roots)

    def stop(self) -> float:
        after = _snapshot(self.roots)
        used = sum(cpu - self._before.get(key, 0.0) for key, cpu in after.items())
        return used + _reaped(self.roots) - self._reaped_before


@dataclass
class Measured:
    """One timed transfer: wall seconds, bytes, server CPU seconds, server peak RSS (summed
    over its processes, and of the largest one alone)."""

    seconds: float
    nbytes: int
    cpu: float
    peak_rss: int
    process_rss: int

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu / (self.nbytes / (1 << 30)) if self.nbytes else 0.0


class Measure:
    """`with Measure(pids) as m: ...; m.result(nbytes)` times a block and meters the server."""

    def __init__(self, roots: list[int]) -> None:
        self.cpu = CpuMeter(roots)
        self.sampler = PeakRss(roots, SAMPLE_INTERVAL, tree=True)
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> Measure:
        self.sampler.__enter__()
        self.cpu.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started
        self.cpu_seconds = self.cpu.stop()
        self.sampler.__exit__()

    def result(self, nbytes: int) -> Measured:
        return Measured(self.seconds, nbytes, self.cpu_seconds, self.sampler.peak,
                        self.sampler.largest)
