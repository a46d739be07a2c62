"""The life of a server the suite runs itself (dockerd, containerd, distribution).

A `Daemon` lives in `workdir` (its log is `workdir/<log_name>`) and keeps its sockets in a
fresh run directory under /tmp, since unix socket paths must stay short. `_launch` starts it
and waits until it answers, stopping it if it does not; `stop` ends its process group
(SIGTERM, then SIGKILL) and removes the run directory.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

from tests.support.processes import STOP_TIMEOUT, Process


class Daemon:
    log_name = "daemon.log"
    rundir_prefix = "daemon-"
    stop_timeout = STOP_TIMEOUT

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.rundir: Path | None = None
        self.process: Process | None = None
        self.startup_seconds: float | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / self.log_name

    def start(self, timeout: float = 30.0) -> Self:
        raise NotImplementedError

    def _make_rundir(self) -> Path:
        self.rundir = Path(tempfile.mkdtemp(prefix=self.rundir_prefix, dir="/tmp"))
        return self.rundir

    def _launch(self, args: Sequence[str | Path], ready: Callable[[], object], timeout: float,
                what: str, env: Mapping[str, str] | None = None) -> None:
        """Start `args` in `workdir` and wait until `ready()`; stop everything if that fails."""
        started = time.monotonic()
        self.process = Process.start(args, self.log_path, env=env, cwd=self.workdir)
        try:
            self.process.wait_ready(ready, timeout, what)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process else "(not started)"

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout` (default `stop_timeout`);
        then remove the run directory."""
        if self.process is not None:
            self.process.stop(self.stop_timeout if timeout is None else timeout)
            self.process = None
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
