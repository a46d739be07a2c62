"""A private Docker daemon for integration tests, and a `docker` CLI wrapper bound to it.

`Dockerd(workdir).start()` runs Debian's dockerd 20.10 as root with nothing shared with a system
daemon: `--storage-driver=vfs --iptables=false --ip6tables=false --bridge=none`, its own
`--data-root`, `--exec-root`, `--pidfile`, `--config-file` (so /etc/docker/daemon.json is not
read) and `-H unix://…/docker.sock`. Without `--containerd`, dockerd supervises its own
containerd (socket `<exec-root>/containerd/containerd.sock`, namespace `moby`), which `ctr` can
use too (`Dockerd.containerd_address`). No cgroup flag is needed here (cgroup v1, cgroupfs driver
is the default without systemd). Starting takes ~0.3-1 s.

Plain HTTP: dockerd treats 127.0.0.0/8 as insecure by default, and `localhost:PORT` too (it
resolves to 127.0.0.1), so `127.0.0.1:PORT/…` and `localhost:PORT/…` just work. It still tries
HTTPS first and falls back to HTTP after the server answers the TLS ClientHello with an HTTP
response ("server gave HTTP response to HTTPS client"). Other names need `insecure_registries`.
`registry_mirrors` (daemon.json's `registry-mirrors`, e.g. `http://127.0.0.1:PORT`) are asked
first for Docker Hub names only (`library/app:1` is `GET /v2/library/app/manifests/1` there);
should they fail, dockerd falls back to Docker Hub itself (unreachable here).

Wire behaviour (dockerd 20.10, seen against distribution 2.8): `GET /v2/` first (after the TLS
attempt). Push: for each layer `POST /blobs/uploads/` (Content-Length 0), one `PATCH` with
`Transfer-Encoding: chunked` carrying the whole (re)compressed layer, `PUT ?digest=` with
Content-Length 0, then `HEAD` of the blob; the config gets a `HEAD` first. Layers it pulled from
the same registry are mounted (`POST …/uploads/?from=<repo>&mount=<digest>`, URL-encoded) after
a `HEAD` 404. Manifest: `PUT` Docker schema 2 (docker always re-generates the manifest and
gzips layers itself, so compare image IDs, diff_ids and the digest `push` reports). Pull:
`HEAD /manifests/<tag>` then `GET /manifests/<digest>`, with six separate `Accept` header lines
(OCI index/manifest, Docker v2/list, v1+prettyjws, application/json); blobs by plain GET, 3 at a
time. Manifests are cached in dockerd's containerd content store, so a second pull of the same
digest skips the manifest GET.

Unix sockets are limited to 108 bytes, so sockets and the exec-root live in a short
`/tmp/dk-XXXX` directory (removed on stop); the data-root lives under `workdir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tests.support.daemon import Daemon
from tests.support.processes import Process, run, run_feeding

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
COMMAND_TIMEOUT = 600.0


def dockerd_binary() -> str | None:
    return shutil.which("dockerd")


def docker_binary() -> str | None:
    """The docker CLI: /usr/local/bin/docker (28.x) shadows Debian's /usr/bin/docker (20.10);
    both talk to the 20.10 daemon (the newer one negotiates API 1.41)."""
    return shutil.which("docker")


def _ping(sock: Path, timeout: float = 2.0) -> bool:
    """GET /_ping on the daemon's unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] and \
        data.endswith(b"OK")


class Dockerd(Daemon):
    """One private dockerd (and the containerd it supervises). `stop` sends SIGTERM (it stops
    its containerd) and SIGKILLs after STOP_TIMEOUT; the data-root stays under `workdir`
    (vfs layers: plain files)."""

    log_name = "dockerd.log"
    rundir_prefix = "dk-"
    stop_timeout = STOP_TIMEOUT

    def __init__(self, workdir: Path, *, insecure_registries: Sequence[str] = (),
                 registry_mirrors: Sequence[str] = (), debug: bool = False,
                 extra_args: Sequence[str] = ()) -> None:
        super().__init__(workdir)
        self.insecure_registries = list(insecure_registries)
        self.registry_mirrors = list(registry_mirrors)
        self.debug = debug
        self.extra_args = list(extra_args)

    @property
    def data_root(self) -> Path:
        return self.workdir / "data-root"

    @property
    def socket(self) -> Path:
        assert self.rundir is not None, "not started"
        return self.rundir / "docker.sock"

    @property
    def host(self) -> str:
        """The value for `docker -H` / DOCKER_HOST."""
        return f"unix://{self.socket}"

    @property
    def exec_root(self) -> Path:
        assert self.rundir is not None, "not started"
        return self.rundir / "exec"

    @property
    def containerd_address(self) -> Path:
        """The socket of the containerd that dockerd supervises (for `ctr --address`)."""
        return self.exec_root / "containerd" / "containerd.sock"

    def start(self, timeout: float = START_TIMEOUT) -> Dockerd:
        binary = dockerd_binary()
        if binary is None:
            raise RuntimeError("dockerd is not installed (apt-get install docker.io)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(exist_ok=True)
        self._make_rundir()
        config = self.workdir / "daemon.json"
        config.write_text(json.dumps({"insecure-registries": self.insecure_registries,
                                      "registry-mirrors": self.registry_mirrors}))
        args = [
            binary, f"--config-file={config}",
            "--storage-driver=vfs", "--iptables=false", "--ip6tables=false", "--bridge=none",
            f"--data-root={self.data_root}", f"--exec-root={self.exec_root}",
            f"--pidfile={self.rundir / 'docker.pid'}", f"-H=unix://{self.socket}",
            f"--log-level={'debug' if self.debug else 'info'}", *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "NOTIFY_SOCKET")}
        self._launch(args, lambda: _ping(self.socket), timeout, "dockerd to answer", env=env)
        return self

    def client(self, binary: str | None = None) -> Docker:
        return Docker(self.host, self.workdir / "client-config", binary=binary)


@dataclass(frozen=True)
class PushResult:
    digest: str
    size: int
    seconds: float
    output: str


_PUSH_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)")
_PULL_DIGEST = re.compile(r"Digest: (sha256:[0-9a-f]{64})")


class Docker:
    """The docker CLI against one daemon, with its own DOCKER_CONFIG (no user credentials or
    contexts). Every command has a timeout; failures raise `CommandError` with the output."""

    def __init__(self, host: str, config_dir: Path, *, binary: str | None = None,
                 timeout: float = COMMAND_TIMEOUT) -> None:
        found = binary or docker_binary()
        if found is None:
            raise RuntimeError("the docker CLI is not installed")
        self.binary = found
        self.host = host
        self.config_dir = config_dir
        self.timeout = timeout
        config_dir.mkdir(parents=True, exist_ok=True)
        if not (config_dir / "config.json").exists():
            (config_dir / "config.json").write_text("{}")

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY")}
        env["DOCKER_CONFIG"] = str(self.config_dir)
        env.update(extra or {})
        return env

    def run(self, *args: str | Path, timeout: float | None = None, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run([self.binary, "-H", self.host, *map(str, args)],
                   timeout=timeout or self.timeout, env=self.env(env), check=check)

    def popen(self, *args: str | Path, log_path: Path) -> Process:
        """Start a command in the background (to act on it while it runs, e.g. a pull)."""
        return Process.start([self.binary, "-H", self.host, *map(str, args)], log_path,
                             env=self.env())

    # -- images in, images out ----------------------------------------------------------

    def load(self, tarball: Path) -> list[str]:
        """`docker load -i` a docker-archive; returns the loaded names (or image IDs)."""
        out = self.run("load", "-i", tarball).stdout
        return [line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.startswith(("Loaded image:", "Loaded image ID:"))]

    def load_stream(self, feed: Callable[[BinaryIO], object]) -> list[str]:
        """`docker load` from stdin, which `feed` writes (e.g. `write_docker_archive` into
        the pipe): a multi-GiB image needs no archive on disk."""
        out = run_feeding([self.binary, "-H", self.host, "load"], feed, timeout=self.timeout,
                          env=self.env()).stdout
        return [line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.startswith(("Loaded image:", "Loaded image ID:"))]

    def import_tar(self, tarball: Path, ref: str) -> str:
        """`docker import` a plain filesystem tar as a one-layer image; returns its ID."""
        return self.run("import", tarball, ref).stdout.strip()

    def build(self, context: Path, ref: str, dockerfile: str | None = None) -> str:
        """Classic-builder `docker build` (DOCKER_BUILDKIT=0: no buildx plugin here). Only
        `FROM scratch` (or a local image) works without network. Returns the image ID."""
        if dockerfile is not None:
            (context / "Dockerfile").write_text(dockerfile)
        self.run("build", "-q", "-t", ref, context, env={"DOCKER_BUILDKIT": "0"})
        return self.image_id(ref)

    def save(self, ref: str, tarball: Path) -> Path:
        self.run("save", "-o", tarball, ref)
        return tarball

    def tag(self, source: str, target: str) -> None:
        self.run("tag", source, target)

    def rmi(self, *refs: str, force: bool = False) -> None:
        self.run("rmi", *(["-f"] if force else []), *refs)

    def push(self, ref: str, timeout: float | None = None) -> PushResult:
        """`docker push`; returns the manifest digest and size the daemon reported."""
        started = time.monotonic()
        out = self.run("push", ref, timeout=timeout).stdout
        match = _PUSH_DIGEST.search(out)
        if match is None:
            raise RuntimeError(f"no digest in docker push output:\n{out}")
        return PushResult(match.group(1), int(match.group(2)), time.monotonic() - started, out)

    def pull(self, ref: str, timeout: float | None = None, platform: str | None = None) -> str:
        """`docker pull`; returns the manifest digest it reports (`Digest: …`)."""
        args = ["pull", *(["--platform", platform] if platform else []), ref]
        out = self.run(*args, timeout=timeout).stdout
        match = _PULL_DIGEST.search(out)
        if match is None:
            raise RuntimeError(f"no digest in docker pull output:\n{out}")
        return match.group(1)

    # -- inspection ---------------------------------------------------------------------

    def inspect(self, ref: str) -> dict[str, Any]:
        data = json.loads(self.run("image", "inspect", ref).stdout)
        return dict(data[0])

    def exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def image_id(self, ref: str) -> str:
        """The image ID (= config digest, `sha256:…`)."""
        return str(self.inspect(ref)["Id"])

    def repo_digests(self, ref: str) -> list[str]:
        """`RepoDigests`: `name@sha256:…` for each repository the image was pushed to or
        pulled from (the registry's manifest digest)."""
        return list(self.inspect(ref).get("RepoDigests") or [])

    def repo_digest(self, ref: str, repository: str) -> str | None:
        """The manifest digest recorded for `repository` (e.g. `127.0.0.1:5000/app`)."""
        for entry in self.repo_digests(ref):
            name, _, digest = entry.partition("@")
            if name == repository:
                return digest
        return None

    def diff_ids(self, ref: str) -> list[str]:
        return list(self.inspect(ref)["RootFS"]["Layers"])

    def images(self) -> list[dict[str, Any]]:
        out = self.run("images", "--digests", "--no-trunc", "--format", "{{json .}}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def remove_all_images(self) -> None:
        ids = sorted({i["ID"] for i in self.images()})
        if ids:
            with contextlib.suppress(Exception):
                self.run("rmi", "-f", *ids)
