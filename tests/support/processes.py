"""Subprocess plumbing shared by the integration helpers.

Everything here is bounded in time: `wait_until` has a deadline, `run` has a timeout, `stop`
escalates from SIGTERM to SIGKILL after a bound. Ports are picked on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

T = TypeVar("T")

DEFAULT_RUN_TIMEOUT = 300.0
STOP_TIMEOUT = 10.0
GRPC_OFFSET = 10_000  # SeaweedFS: every service also listens on port + 10000


class CommandError(RuntimeError):
    """A command exited non-zero or timed out; the message carries its output."""

    def __init__(self, message: str, result: subprocess.CompletedProcess[str] | None = None):
        super().__init__(message)
        self.result = result


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *,
               interval: float = 0.05, on_timeout: Callable[[], str] | None = None) -> T:
    """Call `predicate` until it returns something truthy and return that; raise `TimeoutError`
    naming `what` after `timeout` seconds. `on_timeout` may add diagnostics (a log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP listener could bind `host:port` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for the local end of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


_handed_out: set[int] = set()


def free_port(*, outside_ephemeral: bool = False) -> int:
    """A TCP port on 127.0.0.1 that the kernel just reported free.

    `outside_ephemeral`: picked outside the kernel's ephemeral range, and never handed out
    twice by this process. A port picked from that range can be taken as the source port of
    some outgoing connection (50 ssh clients make plenty) before the process meant to listen
    on it binds it."""
    if outside_ephemeral:
        low, high = ephemeral_range()
        candidates = [(1025, low - 1), (high + 1, 65535)]
        lo, hi = max(candidates, key=lambda c: c[1] - c[0])
        if hi - lo >= 1000:
            return _free_port_in(max(lo, 10_000), hi)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_port_in(low: int, high: int) -> int:
    rng = random.SystemRandom()

    def pick() -> int | None:
        port = rng.randrange(low, high)
        if port in _handed_out or not port_is_free(port):
            return None
        _handed_out.add(port)  # never twice, even if its user has not bound it yet
        return port

    return wait_until(pick, 10, "a free port", interval=0)


def accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port_pair(offset: int = GRPC_OFFSET, low: int = 20_000, high: int = 45_000,
                   exclude: Sequence[int] = (), timeout: float = 10.0) -> int:
    """A port below 65535 - `offset` such that both it and port + `offset` are free (SeaweedFS
    puts each service's gRPC listener at port + 10000)."""
    rng = random.SystemRandom()
    taken = set(exclude) | {p + offset for p in exclude} | {p - offset for p in exclude}

    def pick() -> int | None:
        port = rng.randrange(low, high)
        if port in taken or port + offset in taken:
            return None
        if port_is_free(port) and port_is_free(port + offset):
            return port
        return None

    port = wait_until(pick, timeout, "a free loopback port pair", interval=0)
    assert port is not None
    return port


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file (or a note that there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def run(args: Sequence[str], *, timeout: float = DEFAULT_RUN_TIMEOUT,
        env: Mapping[str, str] | None = None, cwd: Path | None = None, check: bool = True,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with a hard timeout; output is captured as text.

    With `check`, a non-zero exit raises `CommandError` with stdout/stderr in the message."""
    command = [str(a) for a in args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                env=dict(env) if env is not None else None, cwd=cwd,
                                input=input_text,
                                stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = _text(exc.stdout) + _text(exc.stderr)
        raise CommandError(f"timed out after {timeout:.0f}s: {shlex.join(command)}\n"
                           f"{out[-4000:]}") from exc
    if check and result.returncode != 0:
        raise CommandError(f"exit {result.returncode}: {shlex.join(command)}\n"
                           f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}",
                           result)
    return result


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


@dataclass
class Process:
    """A long-running child with its output in `log_path`, in its own session (process group)
    so that `stop` reaches the helpers it spawns (dockerd's containerd, weed's services)."""

    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, args: Sequence[str | Path], log_path: Path, *,
              env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Process:
        proc = cls([str(a) for a in args], log_path, dict(env) if env is not None else None, cwd)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc.popen = subprocess.Popen(proc.args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=proc.env, cwd=cwd,
                                          start_new_session=True)
        return proc

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        """Still running (an exited child is left unreaped, so its pid stays ours)."""
        return self.popen is not None and self.popen.returncode is None and not _exited(self.pid)

    def returncode(self) -> int | None:
        """The exit code (negative signal number if killed) once exited, else None; does not
        reap, so `stop` can still clean up the group."""
        if self.popen is None:
            return None
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.popen.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def wait_ready(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """Wait for `predicate`, failing fast (with the log tail) if the process exits."""

        def check() -> bool:
            if not self.alive():
                raise RuntimeError(f"{what}: process exited with {self.returncode()}; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            return bool(predicate())

        wait_until(check, timeout, what,
                   on_timeout=lambda: f"log {self.log_path}:\n{self.log_tail()}")

    def kill(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGKILL the process group at once (a crash); returns the exit code."""
        popen = self.popen
        if popen is None or popen.returncode is not None:
            return popen.returncode if popen else None
        _signal_group(popen.pid, signal.SIGKILL)
        wait_until(lambda: _exited(popen.pid), timeout, "the killed process to exit")
        return popen.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout` s; returns the exit code.

        The leader is reaped only at the end, so until then its pid (= the group id) cannot be
        reused and signalling the group reaches only processes this object started."""
        popen = self.popen
        if popen is None:
            return None
        if popen.returncode is not None:
            return popen.returncode
        if not _exited(popen.pid):
            _signal_group(popen.pid, signal.SIGTERM)
            try:
                wait_until(lambda: _exited(popen.pid), timeout, "the process to exit")
            except TimeoutError:
                _signal_group(popen.pid, signal.SIGKILL)
                wait_until(lambda: _exited(popen.pid), timeout, "the killed process to exit")
        # Leftovers in the group (the leader is a zombie, so the group id is still ours).
        _signal_group(popen.pid, signal.SIGKILL)
        return popen.wait(timeout)


def _exited(pid: int) -> bool:
    """Whether our child `pid` has exited, without reaping it (WNOWAIT)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal the process group we created with start_new_session (pgid == leader's pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a process we started by other means (a pidfile), SIGKILL after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_until(gone, timeout, f"pid {pid} to exit")
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_feeding(args: Sequence[str], feed: Callable[[BinaryIO], object], *,
                timeout: float = DEFAULT_RUN_TIMEOUT, env: Mapping[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """Run a command whose stdin `feed` writes (streaming, e.g. a tar made on the fly);
    a non-zero exit or the timeout raise `CommandError` with the output."""
    command = [str(a) for a in args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                env=dict(env) if env is not None else None)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError), proc.stdin:
                feed(proc.stdin)
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(command, proc.returncode,
                                             out.read().decode(errors="replace"),
                                             err.read().decode(errors="replace"))
    if result.returncode != 0:
        raise CommandError(f"exit {result.returncode}: {shlex.join(command)}\n"
                           f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}",
                           result)
    return result
