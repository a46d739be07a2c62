"""The two stacks under test, each started and stopped by the bench on loopback.

- `SshregStack`: `python -m sshreg serve` with its own keys folder and client key.
- `ReferenceStack`: Debian's OpenSSH `sshd` (own config, host key, client key, port)
  forwarding to Debian's `docker-registry` (distribution 2.8) with a config we write.

Given a `mirror_upstream` URL (the pull-through cases), sshreg also serves
`--mirror upstream=URL`, and the reference starts a second `docker-registry` in proxy mode
(`proxy: {remoteurl: URL}`, which makes it read-only) on its own storage, which its sshd may
forward to as well. `mirror_target`, `mirror_repo()` and `mirror_pids()` say where a pull
through the cache goes and which processes serve it.

Both are reached the same way: an OpenSSH `ssh -N -L` tunnel (`Tunnel`) with the client's
default cipher preferences (`-F /dev/null`), so each negotiates what a user would get.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.support.processes import Process, accepts, free_port, run, wait_until
from tests.support.registry import DistributionRegistry, http_ok
from tests.support.seaweedfs import SeaweedFS
from tests.support.sshreg_server import ClientKey

REPO_ROOT = Path(__file__).resolve().parent.parent
SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 60.0
TUNNEL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Storage:
    """Where a stack keeps its blobs: a folder, or a bucket on the shared SeaweedFS."""

    kind: str  # "fs" or "s3"
    path: Path | None = None
    s3: SeaweedFS | None = None
    bucket: str = ""

    def __post_init__(self) -> None:
        if self.kind == "s3":
            assert self.s3 is not None and self.bucket
        else:
            assert self.path is not None

    def prepare(self) -> None:
        if self.s3 is not None:
            self.s3.create_bucket(self.bucket)
        elif self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)

    def cleanup(self) -> None:
        if self.s3 is not None:
            self.s3.delete_bucket(self.bucket)
        elif self.path is not None:
            run(["rm", "-rf", str(self.path)], timeout=300)


@dataclass(frozen=True)
class Knobs:
    """Experiment switches (defaults: what a user gets out of the box)."""

    cipher: str | None = None  # force the ssh client's cipher (-c) for both stacks
    sshreg_config: Path | None = None  # a TOML file for `sshreg serve --config`
    sshreg_uvloop: bool = False  # run sshreg on uvloop (installed as the asyncio policy)
    sshreg_env: tuple[str, ...] = ()  # extra NAME=VALUE for sshreg's environment
    sshreg_workers: int | None = None  # `sshreg serve --workers N` (default: one per CPU)

    def describe(self) -> str:
        parts = [f"ssh -c {self.cipher}" if self.cipher else "",
                 f"sshreg --config {self.sshreg_config}" if self.sshreg_config else "",
                 "sshreg on uvloop" if self.sshreg_uvloop else "",
                 " ".join(self.sshreg_env),
                 f"sshreg --workers {self.sshreg_workers}" if self.sshreg_workers else ""]
        return ", ".join(p for p in parts if p) or "defaults"


class Stack(Protocol):
    name: str
    ssh_port: int
    target: str  # what the tunnel forwards to, as seen from the server
    user: str
    key: Path
    knobs: Knobs

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def server_pids(self) -> list[int]: ...

    @property
    def mirror_target(self) -> str: ...  # what a tunnel for pulls through the cache forwards to

    def mirror_repo(self, upstream_repo: str) -> str: ...  # the name pulled through the cache

    def mirror_pids(self) -> list[int]: ...  # the processes serving pulls through the cache


MIRROR_PREFIX = "upstream"  # sshreg's name prefix of the bench's upstream

UVLOOP_LAUNCHER = ("import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
                   "from sshreg.cli import main; sys.exit(main(sys.argv[1:]))")


class SshregStack:
    """sshreg serving on a free loopback port, its storage in `storage`."""

    name = "sshreg"
    target = "localhost:80"
    user = "bench"

    def __init__(self, workdir: Path, storage: Storage, knobs: Knobs = Knobs(),
                 mirror_upstream: str | None = None) -> None:
        self.workdir = workdir
        self.storage = storage
        self.knobs = knobs
        self.mirror_upstream = mirror_upstream
        self.keys = workdir / "keys"
        self.keys.mkdir(parents=True, exist_ok=True)
        self.key = ClientKey.generate(workdir, "client").path
        (self.keys / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        self.ssh_port = free_port(outside_ephemeral=True)
        self.proc: Process | None = None

    def _storage_args(self) -> tuple[str, dict[str, str]]:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        env.update(item.split("=", 1) for item in self.knobs.sshreg_env)  # type: ignore[misc]
        if self.storage.s3 is None:
            return str(self.storage.path), env
        s3 = self.storage.s3
        env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
                   AWS_ENDPOINT_URL_S3=s3.endpoint_url)
        env.pop("AWS_PROFILE", None)
        return f"s3://{self.storage.bucket}/registry", env

    def start(self) -> None:
        url, env = self._storage_args()
        log = self.workdir / "sshreg.log"
        launcher = ["-c", UVLOOP_LAUNCHER] if self.knobs.sshreg_uvloop else ["-m", "sshreg"]
        config = ["--config", str(self.knobs.sshreg_config)] if self.knobs.sshreg_config else []
        if self.knobs.sshreg_workers:
            config += ["--workers", str(self.knobs.sshreg_workers)]
        if self.mirror_upstream:  # its spool is the default, `spool` in the working dir
            config += ["--mirror", f"{MIRROR_PREFIX}={self.mirror_upstream}"]
        self.proc = Process.start([sys.executable, *launcher, "serve", "--listen",
                                   f"127.0.0.1:{self.ssh_port}", "--keys", self.keys,
                                   "--storage", url, *config], log, env=env, cwd=self.workdir)
        self.proc.wait_ready(lambda: "sshreg ready" in log.read_text(errors="replace"),
                             START_TIMEOUT, "sshreg to start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=30)

    def server_pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid]

    @property
    def mirror_target(self) -> str:
        return self.target

    def mirror_repo(self, upstream_repo: str) -> str:
        return f"{MIRROR_PREFIX}/{upstream_repo}"

    def mirror_pids(self) -> list[int]:
        return self.server_pids()


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthenticationMethods publickey
AllowTcpForwarding local
PermitOpen {permit_open}
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PrintMotd no
MaxStartups 200
LogLevel ERROR
"""


def registry_config(storage: Storage, port: int, proxy: str | None = None
                    ) -> dict[str, object]:
    """distribution's configuration (JSON is valid YAML), pulls kept in the tunnel.

    With `proxy` (an upstream URL): a pull-through cache of it (read-only), kept apart from
    the plain registry's data (`proxy` under the folder, `/proxy` in the bucket)."""
    if storage.s3 is not None:
        driver: dict[str, object] = {"s3": {
            "accesskey": storage.s3.access_key, "secretkey": storage.s3.secret_key,
            "region": "us-east-1", "regionendpoint": storage.s3.endpoint_url,
            "bucket": storage.bucket, "rootdirectory": "/proxy" if proxy else "/registry",
            "forcepathstyle": True, "secure": False, "v4auth": True}}
    else:
        assert storage.path is not None
        root = storage.path / "proxy" if proxy else storage.path
        driver = {"filesystem": {"rootdirectory": str(root)}}
    config: dict[str, object] = {
        "version": "0.1",
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {**driver, "delete": {"enabled": True}, "redirect": {"disable": True},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    if proxy:
        config["proxy"] = {"remoteurl": proxy}
    return config


class ReferenceStack:
    """OpenSSH sshd forwarding to distribution, both on free loopback ports."""

    name = "reference"
    user = "root"

    def __init__(self, workdir: Path, storage: Storage, knobs: Knobs = Knobs(),
                 mirror_upstream: str | None = None) -> None:
        self.workdir = workdir
        self.storage = storage
        self.knobs = knobs
        self.key = ClientKey.generate(workdir, "client").path
        self.host_key = workdir / "ssh_host_ed25519_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.host_key], timeout=30)
        self.ssh_port = free_port(outside_ephemeral=True)
        registry_port = free_port(outside_ephemeral=True)
        self.registry = DistributionRegistry(workdir, port=registry_port,
                                             config=registry_config(storage, registry_port))
        self.target = self.registry.address
        self.proxy: DistributionRegistry | None = None
        if mirror_upstream:
            proxy_port = free_port(outside_ephemeral=True)
            self.proxy = DistributionRegistry(
                workdir / "proxy", port=proxy_port,
                config=registry_config(storage, proxy_port, proxy=mirror_upstream))
        self.sshd: Process | None = None

    def _write_config(self) -> Path:
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        sshd_config = self.workdir / "sshd_config"
        sshd_config.write_text(SSHD_CONFIG.format(
            port=self.ssh_port, host_key=self.host_key, pid_file=self.workdir / "sshd.pid",
            authorized_keys=authorized,
            permit_open=" ".join(r.address for r in (self.registry, self.proxy) if r)))
        return sshd_config

    def start(self) -> None:
        sshd_config = self._write_config()
        self.registry.start(START_TIMEOUT)
        if self.proxy is not None:
            self.proxy.start(START_TIMEOUT)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self.sshd = Process.start([SSHD, "-D", "-e", "-f", sshd_config], self.workdir / "sshd.log",
                                  cwd=self.workdir)
        self.sshd.wait_ready(lambda: accepts(self.ssh_port), START_TIMEOUT, "sshd to listen")

    def stop(self) -> None:
        if self.sshd is not None:
            self.sshd.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.registry.stop()

    def server_pids(self) -> list[int]:
        assert self.sshd is not None and self.registry.process is not None
        return [self.sshd.pid, self.registry.process.pid]

    @property
    def mirror_target(self) -> str:
        if self.proxy is None:
            raise RuntimeError("the reference was started without a mirror upstream")
        return self.proxy.address

    def mirror_repo(self, upstream_repo: str) -> str:
        return upstream_repo  # distribution's proxy serves the upstream's names as they are

    def mirror_pids(self) -> list[int]:
        """sshd and the proxy registry (the plain registry idles meanwhile)."""
        assert self.sshd is not None and self.proxy is not None
        assert self.proxy.process is not None
        return [self.sshd.pid, self.proxy.process.pid]


CIPHER_LINE = re.compile(r"kex: server->client cipher: (\S+) MAC: (\S+)")


class Tunnel:
    """`ssh -N -L 127.0.0.1:PORT:TARGET` to a stack, with OpenSSH's default preferences."""

    def __init__(self, stack: Stack, log_dir: Path, index: int = 0,
                 target: str | None = None) -> None:
        self.port = free_port(outside_ephemeral=True)
        self.log_path = log_dir / f"ssh-{stack.name}-{index}-{self.port}.log"
        args = ["ssh", "-v", "-F", "/dev/null", "-p", str(stack.ssh_port), "-i", str(stack.key),
                "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=15", "-o", "ExitOnForwardFailure=yes",
                *(["-c", stack.knobs.cipher] if stack.knobs.cipher else []),
                "-N", "-L", f"127.0.0.1:{self.port}:{target or stack.target}",
                f"{stack.user}@127.0.0.1"]
        self.proc = Process.start(args, self.log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = TUNNEL_TIMEOUT) -> None:
        self.proc.wait_ready(lambda: accepts(self.port) and http_ok(self.url + "/v2/", 5), timeout,
                             f"the tunnel on port {self.port}")

    def cipher(self) -> str:
        match = CIPHER_LINE.search(self.log_path.read_text(errors="replace"))
        if not match:
            return "unknown"
        return match[1] if match[2] == "<implicit>" else f"{match[1]}+{match[2]}"

    def close(self) -> None:
        self.proc.stop()


def open_tunnel(stack: Stack, log_dir: Path, index: int = 0,
                target: str | None = None) -> Tunnel:
    tunnel = Tunnel(stack, log_dir, index, target)
    try:
        tunnel.wait_ready()
    except BaseException:
        tunnel.close()
        raise
    return tunnel


def wait_tunnels(tunnels: list[Tunnel], timeout: float) -> list[Tunnel]:
    """Wait for several tunnels at once (their SSH handshakes overlap); returns those that
    failed (ssh exited, or not ready within `timeout`)."""
    pending = list(tunnels)
    failed: list[Tunnel] = []

    def all_done() -> bool:
        for tunnel in list(pending):
            if not tunnel.proc.alive():
                pending.remove(tunnel)
                failed.append(tunnel)
            elif accepts(tunnel.port) and http_ok(tunnel.url + "/v2/", 5):
                pending.remove(tunnel)
        return not pending

    try:
        wait_until(all_done, timeout, f"{len(tunnels)} tunnels", interval=0.1)
    except TimeoutError:
        failed.extend(pending)
    return failed
