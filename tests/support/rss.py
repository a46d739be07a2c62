"""Peak resident memory of processes, sampled from a thread.

A thread (not a coroutine) samples, so a busy event loop in the measured process cannot hide
a peak. One pid (default: this process) or several; with `tree`, their descendants too
(sshd forks a monitor and a child per connection), summed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence

import psutil


def process_tree(roots: Sequence[int]) -> list[psutil.Process]:
    """The processes `roots` and all their descendants that still exist."""
    procs: list[psutil.Process] = []
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            procs.append(root)
            procs.extend(root.children(recursive=True))
    return procs


class PeakRss:
    """Samples resident memory every `interval` seconds while used as a context manager:
    `baseline` is the first sample, `peak` the largest, `growth` the difference. A process
    that has ended counts 0. `largest` is the peak of any one process alone (with worker
    processes, the one doing the work)."""

    def __init__(self, pids: int | Sequence[int] | None = None, interval: float = 0.05, *,
                 tree: bool = False) -> None:
        if pids is None:
            pids = os.getpid()
        self.roots = [pids] if isinstance(pids, int) else list(pids)
        self.tree = tree
        self.interval = interval
        self._processes = [] if tree else [psutil.Process(pid) for pid in self.roots]
        self.baseline = 0
        self.peak = 0
        self.largest = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        """Resident bytes now, summed over the processes."""
        return sum(self._per_process())

    def _per_process(self) -> list[int]:
        sizes = []
        for proc in process_tree(self.roots) if self.tree else self._processes:
            with contextlib.suppress(psutil.Error):
                sizes.append(int(proc.memory_info().rss))
        return sizes

    def sample(self) -> int:
        sizes = self._per_process()
        rss = sum(sizes)
        self.peak = max(self.peak, rss)
        self.largest = max(self.largest, *sizes, 0)
        self.samples += 1
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> PeakRss:
        self.baseline = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()
