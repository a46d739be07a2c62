"""Child processes for the bench: started in their own process group, stopped by that group.

Every wait has a deadline. Ports are picked on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

STOP_TIMEOUT = 10.0


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.05) -> T:
    """Call `predicate` until it returns something truthy; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port outside the kernel's ephemeral range: a port picked from that range can
    be taken as the source port of some outgoing connection (50 ssh clients make plenty)
    before the process meant to listen on it binds it."""
    low, high = _ephemeral_range()
    candidates = [(1025, low - 1), (high + 1, 65535)]
    lo, hi = max(candidates, key=lambda c: c[1] - c[0])
    if hi - lo < 1000:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    rng = random.SystemRandom()

    def pick() -> int | None:
        port = rng.randrange(max(lo, 10_000), hi)
        if port in _handed_out or not port_is_free(port):
            return None
        _handed_out.add(port)  # never twice in one bench, even if its user has not bound it yet
        return port

    return wait_until(pick, 10, "a free port", interval=0)


def free_port_with_twin(offset: int = 10_000, taken: Sequence[int] = ()) -> int:
    """A port whose port + `offset` is free too (SeaweedFS puts gRPC there)."""
    rng = random.SystemRandom()
    busy = set(taken) | {p + offset for p in taken} | {p - offset for p in taken}

    def pick() -> int | None:
        port = rng.randrange(12_000, 22_700)  # both below the ephemeral range
        if port in busy or port + offset in busy:
            return None
        return port if port_is_free(port) and port_is_free(port + offset) else None

    return wait_until(pick, 10, "a free port pair", interval=0)


def accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_bytes()[-32768:].decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class Proc:
    """A long-running child in its own session, output appended to `log_path`."""

    def __init__(self, args: Sequence[str | os.PathLike[str]], log_path: Path, *,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.args = [str(a) for a in args]
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=cwd,
                                          env=dict(env) if env is not None else None,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def wait_ready(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """Wait for `predicate`; fail at once, with the log, if the process exits."""

        def check() -> bool:
            if not self.alive():
                raise RuntimeError(f"{what}: {self.args[0]} exited:\n{self.log_tail()}")
            return bool(predicate())

        try:
            wait_until(check, timeout, what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from None

    def exited(self) -> bool:
        """Whether the leader exited, without reaping it (its pid keeps naming our group)."""
        if self.popen.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def alive(self) -> bool:
        return not self.exited()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the group, SIGKILL it after `timeout`; reap the leader last, so the group
        id cannot be reused while we signal it."""
        if self.popen.returncode is not None:
            return
        if not self.exited():
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                wait_until(self.exited, timeout, f"{self.args[0]} to exit")
            except TimeoutError:
                _signal_group(self.popen.pid, signal.SIGKILL)
                wait_until(self.exited, timeout, f"{self.args[0]} to die")
        _signal_group(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run(args: Sequence[str | os.PathLike[str]], timeout: float, *,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; raise with its output if it fails or times out."""
    command = [str(a) for a in args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, env=dict(env) if env is not None else None)
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode}: {' '.join(command)}\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result
