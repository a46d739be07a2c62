"""The real thing for integration tests: `sshreg serve` as a subprocess, real `ssh` tunnels.

Everything listens on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

READY_LINE = "sshreg ready"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
              interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class ClientKey:
    """An SSH key pair made with ssh-keygen, as a user would have."""

    path: Path
    public: str
    fingerprint: str

    @classmethod
    def generate(cls, directory: Path, name: str, kind: str = "ed25519") -> ClientKey:
        path = directory / name
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@test",
                        "-f", str(path)], check=True, timeout=30)
        public = path.with_suffix(".pub").read_text().strip()
        out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
                             check=True, capture_output=True, text=True, timeout=30).stdout
        return cls(path, public, out.split()[1])

    def line(self, options: str = "") -> str:
        """The authorized_keys line for this key, with options in front if given."""
        return f"{options} {self.public}".strip()


class SshregServer:
    """`python -m sshreg serve` on a free loopback port, with its own keys folder."""

    def __init__(self, workdir: Path, storage: str | None = None, *,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.keys_dir = workdir / "keys"
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage or str(workdir / "data")
        self.port = free_port()
        self.extra_args = extra_args
        self.env = env or {}
        self.log_path = workdir / "sshreg.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def authorized_keys(self) -> Path:
        return self.keys_dir / "authorized_keys"

    def authorize(self, *lines: str) -> None:
        """Replace authorized_keys atomically (as an editor or `sshreg keys` would)."""
        tmp = self.authorized_keys.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.authorized_keys)

    def start(self, timeout: float = 30.0) -> SshregServer:
        command = [sys.executable, "-m", "sshreg", "serve", "--listen", f"127.0.0.1:{self.port}",
                   "--keys", str(self.keys_dir), "--storage", self.storage, *self.extra_args]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by the child's lifetime
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env}, cwd=self.workdir)
        log.close()
        try:
            wait_for(lambda: READY_LINE in self.log() or self.proc.poll() is not None,
                     timeout, "sshreg to start")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"sshreg exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        wait_for(lambda: text in self.log(), timeout, f"{text!r} in the server log")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    # -- ssh -------------------------------------------------------------------------

    def ssh_command(self, key: ClientKey, *args: str, log_level: str = "ERROR") -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(key.path), "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", f"LogLevel={log_level}",
                "-o", "ExitOnForwardFailure=yes", *args]

    def ssh(self, key: ClientKey, *command: str, options: tuple[str, ...] = (),
            timeout: float = 30.0, user: str = "user") -> subprocess.CompletedProcess[str]:
        """Run `ssh [options] host [command]` against the server and wait for it to end."""
        return subprocess.run(self.ssh_command(key, *options, f"{user}@127.0.0.1", *command),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    @contextlib.contextmanager
    def tunnel(self, key: ClientKey, local_port: int | None = None, *,
               target: str = "localhost:80", timeout: float = 20.0) -> Iterator[Tunnel]:
        """`ssh -N -L PORT:localhost:80`, ready once the registry answers through it."""
        port = local_port or free_port()
        proc = subprocess.Popen(
            self.ssh_command(key, "-N", "-L", f"127.0.0.1:{port}:{target}", "user@127.0.0.1"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tunnel = Tunnel(port, proc)
        try:
            wait_for(lambda: tunnel.ready() or proc.poll() is not None, timeout, "the tunnel")
            if proc.poll() is not None:
                raise RuntimeError(f"ssh exited {proc.returncode}: {proc.stderr.read().decode()}")
            yield tunnel
        finally:
            tunnel.close()


@dataclass
class Tunnel:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v2/", timeout=5) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
