"""containerd's `ctr` against a private containerd, for push/pull round trips.

Either use the containerd that a private dockerd supervises (`Dockerd.containerd_address`,
dockerd itself uses namespace `moby`), or start one with `Containerd(workdir).start()`: own
root, state, gRPC socket (under a short `/tmp/ctd-XXXX`, sockets are limited to 108 bytes),
`opt` plugin path, no CRI plugin, debug socket off, and `content_sharing_policy = "isolated"`
so that each namespace really downloads what it pulls (with the default "shared" policy a blob
already present in another namespace is not fetched again). It answers in ~0.1 s.

`Ctr` wraps the CLI with `--address` and a namespace (default `sshreg-test`). Plain HTTP needs
`--plain-http` on push/pull/fetch (ctr has no insecure-registry list). `ctr images pull` always
unpacks into a snapshotter, so `Ctr` passes `--snapshotter native` (override with
`snapshotter=`); `fetch` (`ctr content fetch`) downloads content only, which is all a registry
round trip needs. `ctr images import` of an OCI archive keeps the blobs byte for byte, so a push
sends exactly the manifest/config/layers `tests.support.images` generated.

Wire behaviour (containerd 1.6, seen against distribution 2.8): no `GET /v2/` probe. Push:
`HEAD` each blob (`Accept: <media type>, */*`), `POST /blobs/uploads/` (Content-Length 0), one
monolithic `PUT ?digest=` with the whole blob and `Content-Length`, then `HEAD` + `PUT` of the
manifest by tag (children of an index by digest first). Content it pulled carries a
distribution-source label, so pushing it to another repository of the same registry tries
`POST …/uploads/?mount=<digest>&from=<repo>` (not URL-encoded). Pull/fetch: `HEAD
/manifests/<tag>`, then `GET /manifests/<digest>` and `GET /blobs/<digest>`, each with
`Accept: <media type>, */*`.

Resuming: containerd keeps a partial download as an active ingest in its content store (ref
`layer-sha256:…`, under `<root>/io.containerd.content.v1.content/ingest`), held by the pull's
lease. A later fetch of the same blob opens that ingest, sees the offset, and asks the registry
for `Range: bytes=<offset>-` (observed against distribution 2.8). `Ctr.active()` lists ingests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tests.support.daemon import Daemon
from tests.support.processes import Process, run, run_feeding

START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 600.0
NAMESPACE = "sshreg-test"

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[debug]
  address = ""
  level = "{level}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
"""


def containerd_binary() -> str | None:
    return shutil.which("containerd")


def ctr_binary() -> str | None:
    return shutil.which("ctr")


class Containerd(Daemon):
    """A standalone containerd with its own root/state/socket (no CRI)."""

    log_name = "containerd.log"
    rundir_prefix = "ctd-"

    def __init__(self, workdir: Path, *, debug: bool = False) -> None:
        super().__init__(workdir)
        self.debug = debug

    @property
    def address(self) -> Path:
        assert self.rundir is not None, "not started"
        return self.rundir / "containerd.sock"

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    def start(self, timeout: float = START_TIMEOUT) -> Containerd:
        binary = containerd_binary()
        if binary is None:
            raise RuntimeError("containerd is not installed (apt-get install containerd)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        rundir = self._make_rundir()
        config = self.workdir / "config.toml"
        config.write_text(_CONFIG.format(root=self.root, state=rundir / "state",
                                         socket=self.address,
                                         level="debug" if self.debug else "info"))
        self._launch([binary, "--config", config], self._answers, timeout,
                     "containerd to answer")
        return self

    def _answers(self) -> bool:
        if not self.address.exists():
            return False
        ctr = ctr_binary() or "ctr"
        return run([ctr, "--address", str(self.address), "version"], timeout=10,
                   check=False).returncode == 0

    def client(self, namespace: str = NAMESPACE) -> Ctr:
        return Ctr(self.address, namespace)


@dataclass(frozen=True)
class ImageRecord:
    name: str
    digest: str
    media_type: str
    size: int


class Ctr:
    """`ctr --address SOCK --namespace NS …` with timeouts."""

    def __init__(self, address: Path | str, namespace: str = NAMESPACE, *,
                 snapshotter: str = "native", timeout: float = COMMAND_TIMEOUT) -> None:
        binary = ctr_binary()
        if binary is None:
            raise RuntimeError("ctr is not installed (apt-get install containerd)")
        self.binary = binary
        self.address = str(address)
        self.namespace = namespace
        self.snapshotter = snapshotter
        self.timeout = timeout

    def run(self, *args: str | Path, timeout: float | None = None, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE")}
        full_env.update(env or {})
        return run([self.binary, "--address", self.address, "--namespace", self.namespace,
                    *map(str, args)], timeout=timeout or self.timeout, env=full_env, check=check)

    def import_archive(self, archive: Path, *, base_name: str | None = None,
                       all_platforms: bool = True, unpack: bool = False) -> list[str]:
        """`ctr images import` an OCI archive or docker-archive; returns the names created.

        For an OCI archive the name comes from the `io.containerd.image.name` annotation in
        index.json, else `base_name` + `:` + the `org.opencontainers.image.ref.name` tag."""
        before = {i.name for i in self.images()}
        args: list[str | Path] = ["images", "import"]
        if base_name:
            args += ["--base-name", base_name]
        if all_platforms:
            args.append("--all-platforms")
        if not unpack:
            args.append("--no-unpack")
        else:
            args += ["--snapshotter", self.snapshotter]
        self.run(*args, archive)
        return sorted({i.name for i in self.images()} - before)

    def import_stream(self, feed: Callable[[BinaryIO], object]) -> list[str]:
        """`ctr images import --all-platforms --no-unpack -` from stdin, which `feed` writes
        (e.g. `write_oci_archive` into the pipe); returns the names created."""
        before = {i.name for i in self.images()}
        run_feeding([self.binary, "--address", self.address, "--namespace", self.namespace,
                     "images", "import", "--all-platforms", "--no-unpack", "-"], feed,
                    timeout=self.timeout)
        return sorted({i.name for i in self.images()} - before)

    def push(self, remote: str, local: str | None = None, *, plain_http: bool = True,
             platform: str | None = None, http_dump: bool = False,
             timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """`ctr images push [--plain-http] REMOTE [LOCAL]` (LOCAL defaults to REMOTE)."""
        args: list[str | Path] = ["images", "push"]
        if plain_http:
            args.append("--plain-http")
        if platform:
            args += ["--platform", platform]
        if http_dump:
            args.append("--http-dump")
        args.append(remote)
        if local:
            args.append(local)
        return self.run(*args, timeout=timeout)

    def pull(self, ref: str, *, plain_http: bool = True, all_platforms: bool = False,
             platform: str | None = None, hosts_dir: Path | None = None,
             http_dump: bool = False, timeout: float | None = None,
             ) -> subprocess.CompletedProcess[str]:
        """`ctr images pull` (fetch + unpack into the `native` snapshotter). `hosts_dir`: the
        registries' `HOST/hosts.toml` (mirrors); `http_dump`: every request and answer on
        stderr."""
        args: list[str | Path] = ["images", "pull", "--snapshotter", self.snapshotter]
        if plain_http:
            args.append("--plain-http")
        if hosts_dir is not None:
            args += ["--hosts-dir", hosts_dir]
        if http_dump:
            args.append("--http-dump")
        if all_platforms:
            args.append("--all-platforms")
        if platform:
            args += ["--platform", platform]
        args.append(ref)
        return self.run(*args, timeout=timeout)

    def fetch(self, ref: str, *, plain_http: bool = True, all_platforms: bool = True,
              timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """`ctr content fetch`: download manifest(s), config and layers, no unpacking."""
        args: list[str | Path] = ["content", "fetch"]
        if plain_http:
            args.append("--plain-http")
        if all_platforms:
            args.append("--all-platforms")
        args.append(ref)
        return self.run(*args, timeout=timeout)

    def popen_fetch(self, ref: str, log_path: Path, *, plain_http: bool = True) -> Process:
        """Start a fetch in the background (to cut it mid-way and test resuming)."""
        args = [self.binary, "--address", self.address, "--namespace", self.namespace,
                "content", "fetch", *(["--plain-http"] if plain_http else []), ref]
        return Process.start(args, log_path)

    def images(self) -> list[ImageRecord]:
        out = self.run("images", "ls").stdout.splitlines()
        records = []
        for line in out[1:]:
            parts = line.split()
            if len(parts) >= 3:
                records.append(ImageRecord(parts[0], parts[2], parts[1], 0))
        return records

    def image_digest(self, name: str) -> str:
        """The manifest (or index) digest the image `name` points to."""
        for record in self.images():
            if record.name == name:
                return record.digest
        raise KeyError(f"no image {name!r} in namespace {self.namespace}")

    def tag(self, source: str, target: str) -> None:
        self.run("images", "tag", "--force", source, target)

    def remove(self, *names: str) -> None:
        self.run("images", "rm", *names)

    def content_digests(self) -> set[str]:
        """Digests of all blobs in the content store."""
        out = self.run("content", "ls", "-q").stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def content_get(self, digest: str) -> bytes:
        result = subprocess.run([self.binary, "--address", self.address, "--namespace",
                                 self.namespace, "content", "get", digest],
                                capture_output=True, timeout=self.timeout, check=True)
        return result.stdout

    def delete_content(self, *digests: str) -> None:
        self.run("content", "rm", *digests)

    def active(self) -> list[dict[str, Any]]:
        """Active ingests (partial downloads): ref, size so far, total."""
        out = self.run("content", "active").stdout.splitlines()
        rows = []
        for line in out[1:]:
            parts = line.split()
            if parts:
                rows.append({"ref": parts[0], "raw": line})
        return rows

    def export(self, name: str, archive: Path, *, all_platforms: bool = True) -> Path:
        """`ctr images export` to an OCI archive."""
        args: list[str | Path] = ["images", "export"]
        if all_platforms:
            args.append("--all-platforms")
        self.run(*args, archive, name)
        return archive

    def manifest(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.content_get(self.image_digest(name))))


