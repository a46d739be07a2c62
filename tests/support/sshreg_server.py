"""The real thing for integration tests: `sshreg serve` as a subprocess, real `ssh` tunnels.

`SshregServer(workdir, storage, config={...}, metrics=True)` writes the TOML `config` (a dict of
sections; a list of dicts for `[[mirror]]` tables) to `workdir/sshreg.toml`, adds `[metrics]
listen` on a free loopback port when `metrics` is set, and runs `python -m sshreg serve
--config ...`. What a test can read back from outside the process: `log()`, `audit()` (the
`sshreg.audit` JSON lines), `metrics()` / `metric(name, **labels)` (the Prometheus text of
`/metrics`), the pid for `psutil`.

`S3Store.fresh(seaweedfs, name)` is a storage URL on a fresh prefix of a SeaweedFS bucket, with
the environment sshreg needs to reach it, and views of what sshreg wrote there (blob objects,
multipart uploads left behind, R2's part rule on every completed blob object).

Everything listens on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import psutil

from sshreg.references import Digest
from sshreg.store import paths
from tests.support.processes import free_port, wait_until
from tests.support.seaweedfs import SeaweedFS, assert_r2_object_parts

READY_LINE = "sshreg ready"
AUDIT_MARK = "sshreg.audit: "
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

__all__ = ["ClientKey", "Config", "S3Store", "SshregServer", "Tunnel", "connect", "free_port", "wait_for"]


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> object:
    return wait_until(predicate, timeout, what, interval=interval)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


Config = dict[str, dict[str, Any] | list[dict[str, Any]]]


def toml_text(config: Config) -> str:
    """A TOML document of `[section]` tables with scalar or list values; a section given as a
    list of dicts is written as that many `[[section]]` tables (`[[mirror]]`, `[[retention]]`)."""
    lines: list[str] = []
    for section, value in config.items():
        many = isinstance(value, list)
        for table in value if many else [value]:
            lines.append(f"[[{section}]]" if many else f"[{section}]")
            lines += [f"{key} = {_toml_value(item)}" for key, item in table.items()]
            lines.append("")
    return "\n".join(lines)


def _copy_config(config: Config | None) -> Config:
    """A copy of each table (and of each table of a `[[section]]` list) to change freely."""
    return {section: [dict(t) for t in value] if isinstance(value, list) else dict(value)
            for section, value in (config or {}).items()}


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and not line.startswith("#"):
            labels = {k: v.replace('\\"', '"').replace("\\\\", "\\")
                      for k, v in _LABEL.findall(match[2] or "")}
            samples.append((match[1], labels, float(match[3])))
    return samples


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
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 config: Config | None = None,
                 metrics: bool = False, workers: int | None = None) -> None:
        self.workdir = workdir
        self.keys_dir = workdir / "keys"
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage or str(workdir / "data")
        self.port = free_port()
        self.extra_args = extra_args
        self.env = env or {}
        self.log_path = workdir / "sshreg.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = _copy_config(config)
        # One process unless a test asks for more (`workers`, or [server] workers in
        # `config`): what most tests measure (RSS, timing) is of one process.
        # tests/integration/test_workers.py and the suites parametrized with workers=2 run
        # the supervisor. A flag, so that a config file in `extra_args` is left as it is.
        server = self.config.get("server", {})
        assert isinstance(server, dict), "[server] is one table"
        self.workers = workers or int(server.get("workers", 1))
        self.metrics_port: int | None = None
        if metrics:
            self.metrics_port = free_port()
            metrics_table = self.config.setdefault("metrics", {})
            assert isinstance(metrics_table, dict), "[metrics] is one table"
            metrics_table["listen"] = f"127.0.0.1:{self.metrics_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "sshreg.toml"

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
                   "--keys", str(self.keys_dir), "--storage", self.storage,
                   "--workers", str(self.workers), *self.extra_args]
        if self.config:
            self.config_path.write_text(toml_text(self.config))
            command += ["--config", str(self.config_path)]
        ready_before = self.log().count(READY_LINE)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by the child's lifetime
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env}, cwd=self.workdir)
        log.close()
        try:
            wait_for(lambda: self.log().count(READY_LINE) > ready_before
                     or self.proc.poll() is not None, timeout, "sshreg to start")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"sshreg exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def restart(self, timeout: float = 30.0) -> SshregServer:
        """SIGTERM and start again on the same port, keys, storage and configuration."""
        self.stop()
        return self.start(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def temporary_files(self) -> list[str]:
        """Names in the filesystem store's temporary folder (writes not yet installed)."""
        tmp = Path(self.storage) / "_tmp"
        return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        wait_for(lambda: text in self.log(), timeout, f"{text!r} in the server log")

    def audit(self) -> list[dict[str, Any]]:
        """Every audit event logged so far (one JSON object per write or refusal)."""
        return [json.loads(line.split(AUDIT_MARK, 1)[1]) for line in self.log().splitlines()
                if AUDIT_MARK in line]

    def metrics_text(self) -> str:
        assert self.metrics_port is not None, "start the server with metrics=True"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        return parse_metrics(self.metrics_text())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the series of `name` whose labels include `labels` (0 if none)."""
        return sum(value for sample, have, value in self.metrics()
                   if sample == name and all(have.get(k) == v for k, v in labels.items()))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The live worker processes of a supervisor ([] when the server is one process); a
        worker that died and is not reaped yet (a zombie) is not one."""
        pids = []
        for child in psutil.Process(self.pid).children():
            with contextlib.suppress(psutil.Error):  # gone, or a zombie: no command line
                if "sshreg.workers.worker" in " ".join(child.cmdline()):
                    pids.append(child.pid)
        return sorted(pids)

    def clients_by_worker(self) -> dict[int, set[int]]:
        """Each worker's established SSH connections, as the clients' (loopback) ports."""
        return {pid: {c.raddr.port for c in psutil.Process(pid).net_connections("tcp")
                      if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port}
                for pid in self.worker_pids()}

    def worker_holding(self, client_port: int) -> int:
        """The pid of the worker holding the SSH connection from `client_port`."""
        holders = [pid for pid, ports in self.clients_by_worker().items() if client_port in ports]
        assert holders, f"no worker holds the connection from port {client_port}"
        return holders[0]

    def worker_serving(self, tunnel: Tunnel) -> int:
        """The pid of the worker that holds `tunnel`'s SSH connection."""
        (port,) = {c.laddr.port for c in psutil.Process(tunnel.proc.pid).net_connections("tcp")
                   if c.raddr and c.raddr.port == self.port}
        return self.worker_holding(port)

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
        """SIGKILL, as a box that dies: the supervisor and every worker at once."""
        if self.proc is not None and self.proc.poll() is None:
            workers = self.worker_pids()
            self.proc.kill()
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
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


async def connect(server: SshregServer, *keys: ClientKey, source: str = "127.0.0.1",
                  **options: object) -> asyncssh.SSHClientConnection:
    """An asyncssh client connection to `server` from the loopback address `source`,
    offering `keys`, for what OpenSSH's client cannot express (bursts, odd auth methods)."""
    return await asyncio.wait_for(asyncssh.connect(
        "127.0.0.1", server.port, username="user", client_keys=[str(k.path) for k in keys],
        known_hosts=None, agent_path=None, local_addr=(source, 0), **options), 15)


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

    def freeze(self) -> None:
        """Make the tunnel hang as a stalled network would: SIGSTOP the ssh client (nothing
        moves, nothing is closed; `kill` still ends it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """Cut the tunnel as a dying laptop would: SIGKILL the ssh client (its SSH connection
        and every forwarded connection drop at once)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

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


@dataclass(frozen=True)
class S3Store:
    """sshreg storage on a SeaweedFS bucket under a fresh prefix, seen from outside sshreg."""

    s3: SeaweedFS
    prefix: str

    @classmethod
    def fresh(cls, s3: SeaweedFS, name: str) -> S3Store:
        return cls(s3, f"{name}-{uuid.uuid4().hex[:12]}")

    @property
    def bucket(self) -> str:
        return self.s3.bucket

    @property
    def url(self) -> str:
        """The value for `sshreg serve --storage`."""
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def env(self) -> dict[str, str]:
        """What sshreg needs in its environment to reach the bucket."""
        return self.s3.env()

    def client(self) -> Any:
        return self.s3.client()

    def blob_object(self, digest: str) -> str | None:
        """The bucket key holding a blob's bytes (from sshreg's blob record), None if the
        blob was never published."""
        record_key = f"{self.prefix}/{paths.blob_record(Digest.parse(digest))}"
        try:
            body = self.client().get_object(Bucket=self.bucket, Key=record_key)["Body"].read()
        except self.client().exceptions.NoSuchKey:
            return None
        return f"{self.prefix}/{json.loads(body)['key']}"

    def multipart_uploads(self) -> list[dict[str, Any]]:
        """Multipart uploads in progress under the prefix (what an abort must leave empty)."""
        page = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix + "/")
        return list(page.get("Uploads", ()))

    def objects(self, under: str = "") -> dict[str, int]:
        """key -> size of every object under the prefix (and `under` within it)."""
        client = self.client()
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}/{under}"):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", ())})
        return out

    def blob_parts(self, digest: str, part_size: int | None = None) -> list[int]:
        """Part sizes of a published blob's object, checked against R2's rule; [] if it was
        written with one PutObject."""
        key = self.blob_object(digest)
        assert key is not None, f"{digest} is not published"
        return assert_r2_object_parts(self.client(), self.bucket, key, part_size)

    def check_r2_parts(self, part_size: int | None = None) -> int:
        """R2's part rule on every blob object sshreg completed; returns how many were
        multipart objects."""
        client = self.client()
        multipart = 0
        for key in self.objects("data/"):
            if assert_r2_object_parts(client, self.bucket, key, part_size):
                multipart += 1
        return multipart
