"""podman, skopeo and buildah in an isolated environment, for push/pull round trips.

`ContainersEnv(workdir, registries=[…])` writes, under `workdir`:
  - `registries.conf`: no search registries, each listed registry `insecure = true`;
  - `storage.conf`: driver `vfs`, graphroot `workdir/storage`, runroot `workdir/run`;
  - `policy.json`: `insecureAcceptAnything`;
  - `containers.conf`: cgroupfs, file events log and a tmp dir inside `workdir`;
  - `auth.json`: `{}` (REGISTRY_AUTH_FILE, so no user credentials are read).
and points the tools at them with CONTAINERS_REGISTRIES_CONF, CONTAINERS_STORAGE_CONF,
CONTAINERS_POLICY_JSON (skopeo gets `--policy`), CONTAINERS_CONF and REGISTRY_AUTH_FILE. The
commands also get `--root/--runroot/--storage-driver vfs` (podman, buildah) and
`--tls-verify=false` (skopeo: `--src-tls-verify=false`/`--dest-tls-verify=false`) explicitly,
so nothing of /etc/containers or /var/lib/containers/storage is used. Two things the tools do
not let us redirect: the drop-in `/etc/containers/registries.conf.d/` (only short-name aliases
here) is still read, and containers/image as root keeps its blob-info cache in the fixed
`/var/lib/containers/cache`, shared by podman, skopeo and buildah whatever their graphroot. That
cache remembers which blobs each registry/repository had (and the compressed digest of each
uncompressed layer), so a push then HEADs and mounts (`POST …?mount=&from=`) blobs that another
tool or test pushed. With `isolate_blob_cache` (default, needs root and util-linux `unshare`)
every command runs in a private mount namespace with `workdir/blob-info-cache` bind-mounted
over that path, so each ContainersEnv has its own cache.

Wire behaviour (containers/image 5.23, seen against distribution 2.8): with TLS verification
off it first sends a TLS ClientHello to the port, then plain `GET /v2/` (and `GET /v1/_ping`
if /v2/ fails), so the server must answer or close on garbage promptly. Push: `HEAD` each blob
(twice for a new one), `POST /blobs/uploads/` (Content-Length 0), one `PATCH` with the whole
blob and its `Content-Length` (not chunked), `PUT ?digest=` with an empty body, then the
manifest `PUT`. Blobs it knows from its blob-info cache are mounted
(`POST …/uploads/?from=<repo>&mount=<digest>`, URL-encoded) after a HEAD in the source repo.
Pull: `GET /manifests/<ref>` with one comma-joined Accept header (OCI manifest and index,
Docker v2, v1 and list), blobs by plain GET.

Digests: skopeo copying `oci:` (gzip layers) to `docker://` keeps every blob and the manifest
byte for byte; uncompressed layers (docker-archive, containers-storage) are gzipped by the
tool on push, so compare config digests (image IDs) and diff_ids there, or the manifest digest
the push reported (`--digestfile`) with what a later pull reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.processes import run

COMMAND_TIMEOUT = 600.0
SYSTEM_BLOB_INFO_CACHE = "/var/lib/containers/cache"  # containers/image's fixed path for root


def tool_binary(name: str) -> str | None:
    return shutil.which(name)


class ContainersEnv:
    """Configuration files and environment shared by Podman, Skopeo and Buildah."""

    def __init__(self, workdir: Path, registries: Sequence[str] = (), *,
                 isolate_blob_cache: bool = True) -> None:
        self.workdir = workdir
        self.registries: list[str] = []
        self.isolate_blob_cache = isolate_blob_cache and shutil.which("unshare") is not None
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("storage", "run", "tmp", "blob-info-cache"):
            (workdir / name).mkdir(exist_ok=True)
        self.storage_conf.write_text(
            '[storage]\ndriver = "vfs"\n'
            f'graphroot = "{self.graphroot}"\nrunroot = "{self.runroot}"\n')
        self.policy_json.write_text(json.dumps(
            {"default": [{"type": "insecureAcceptAnything"}]}))
        self.containers_conf.write_text(
            '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{workdir / "events.log"}"\n'
            f'tmp_dir = "{workdir / "tmp"}"\n')
        self.auth_file.write_text("{}")
        self.add_insecure(*registries)

    @property
    def graphroot(self) -> Path:
        return self.workdir / "storage"

    @property
    def runroot(self) -> Path:
        return self.workdir / "run"

    @property
    def registries_conf(self) -> Path:
        return self.workdir / "registries.conf"

    @property
    def storage_conf(self) -> Path:
        return self.workdir / "storage.conf"

    @property
    def policy_json(self) -> Path:
        return self.workdir / "policy.json"

    @property
    def containers_conf(self) -> Path:
        return self.workdir / "containers.conf"

    @property
    def auth_file(self) -> Path:
        return self.workdir / "auth.json"

    def add_insecure(self, *registries: str) -> None:
        """Mark `host:port` registries as plain HTTP in registries.conf (rewrites it)."""
        for registry in registries:
            if registry not in self.registries:
                self.registries.append(registry)
        lines = ["unqualified-search-registries = []", ""]
        for registry in self.registries:
            lines += ["[[registry]]", f'location = "{registry}"', "insecure = true", ""]
        self.registries_conf.write_text("\n".join(lines))

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CONTAINERS_", "CONTAINER_HOST", "BUILDAH_"))}
        env.update({
            "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            "CONTAINERS_POLICY_JSON": str(self.policy_json),
            "CONTAINERS_CONF": str(self.containers_conf),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "TMPDIR": str(self.workdir / "tmp"),
        })
        env.update(extra or {})
        return env

    def wrap(self, command: Sequence[str]) -> list[str]:
        """Prefix `command` so that, in a private mount namespace, this environment's own
        directory is bind-mounted over /var/lib/containers/cache (see the module doc)."""
        if not self.isolate_blob_cache:
            return list(command)
        script = ('mkdir -p "$2" && mount --bind "$1" "$2" && shift 2 && exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                str(self.workdir / "blob-info-cache"), SYSTEM_BLOB_INFO_CACHE, *command]

    def storage_flags(self) -> list[str]:
        return [f"--root={self.graphroot}", f"--runroot={self.runroot}", "--storage-driver=vfs"]

    def podman(self) -> Podman:
        return Podman(self)

    def skopeo(self) -> Skopeo:
        return Skopeo(self)

    def buildah(self) -> Buildah:
        return Buildah(self)


class _Tool:
    name = ""

    def __init__(self, env: ContainersEnv, timeout: float = COMMAND_TIMEOUT) -> None:
        binary = tool_binary(self.name)
        if binary is None:
            raise RuntimeError(f"{self.name} is not installed (apt-get install {self.name})")
        self.binary = binary
        self.containers = env
        self.timeout = timeout

    def global_flags(self) -> list[str]:
        return []

    def command(self, *args: str | Path) -> list[str]:
        return self.containers.wrap([self.binary, *self.global_flags(), *map(str, args)])

    def run(self, *args: str | Path, timeout: float | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.command(*args), timeout=timeout or self.timeout,
                   env=self.containers.env(), check=check)

    def _digestfile(self, tag: str) -> Path:
        path = self.containers.workdir / "tmp" / f"digest-{tag}-{os.getpid()}"
        path.unlink(missing_ok=True)
        return path


class Podman(_Tool):
    """podman with vfs storage in the ContainersEnv; no service, no system config."""

    name = "podman"

    def global_flags(self) -> list[str]:
        return [*self.containers.storage_flags(), "--cgroup-manager=cgroupfs",
                "--events-backend=file", f"--tmpdir={self.containers.workdir / 'tmp'}"]

    def pull(self, ref: str, *, tls_verify: bool = False, platform: str | None = None,
             timeout: float | None = None) -> str:
        """`podman pull`; returns the image ID."""
        args = ["pull", "-q", f"--tls-verify={str(tls_verify).lower()}"]
        if platform:
            args += ["--platform", platform]
        out = self.run(*args, ref, timeout=timeout).stdout.strip().splitlines()
        return "sha256:" + out[-1].removeprefix("sha256:")

    def push(self, source: str, destination: str | None = None, *, tls_verify: bool = False,
             format: str | None = None, timeout: float | None = None) -> str:
        """`podman push SOURCE [docker://DEST]`; returns the pushed manifest digest.
        `format` is `oci` or `v2s2` (podman's default keeps the image's own format)."""
        digestfile = self._digestfile("podman")
        args = ["push", "-q", f"--tls-verify={str(tls_verify).lower()}",
                f"--digestfile={digestfile}"]
        if format:
            args += ["--format", format]
        args.append(source)
        if destination:
            args.append(destination if "://" in destination else f"docker://{destination}")
        self.run(*args, timeout=timeout)
        return digestfile.read_text().strip()

    def load(self, archive: Path) -> list[str]:
        """`podman load -i` a docker-archive or oci-archive; returns the loaded names."""
        out = self.run("load", "-i", archive).stdout
        names: list[str] = []
        for line in out.splitlines():
            if line.startswith("Loaded image"):
                names += [n.strip() for n in line.split(":", 1)[1].split(",")]
        return names

    def tag(self, source: str, target: str) -> None:
        self.run("tag", source, target)

    def rmi(self, *refs: str, force: bool = False) -> None:
        self.run("rmi", *(["-f"] if force else []), *refs)

    def remove_all_images(self) -> None:
        self.run("rmi", "-a", "-f", check=False)

    def inspect(self, ref: str) -> dict[str, Any]:
        return dict(json.loads(self.run("image", "inspect", ref).stdout)[0])

    def image_id(self, ref: str) -> str:
        """Image ID (the config digest), as `sha256:…`."""
        return "sha256:" + str(self.inspect(ref)["Id"]).removeprefix("sha256:")

    def digest(self, ref: str) -> str:
        """The manifest digest podman recorded (from the pull or push)."""
        return str(self.inspect(ref)["Digest"])

    def repo_digests(self, ref: str) -> list[str]:
        return list(self.inspect(ref).get("RepoDigests") or [])

    def images(self) -> list[dict[str, Any]]:
        return list(json.loads(self.run("images", "--format", "json").stdout or "[]"))

    def save(self, ref: str, archive: Path, format: str = "oci-archive") -> Path:
        self.run("save", "--format", format, "-o", archive, ref)
        return archive


class Skopeo(_Tool):
    """skopeo copy/inspect with the isolated policy and registries.conf."""

    name = "skopeo"

    def global_flags(self) -> list[str]:
        return [f"--policy={self.containers.policy_json}",
                f"--tmpdir={self.containers.workdir / 'tmp'}"]

    def copy(self, source: str, destination: str, *, all_images: bool = False,
             preserve_digests: bool = False, format: str | None = None,
             tls_verify: bool = False, extra: Sequence[str] = (),
             timeout: float | None = None) -> str:
        """`skopeo copy SRC DST` (transports explicit: `oci:DIR:TAG`, `docker://HOST/REPO:TAG`,
        `docker-archive:FILE`, …); returns the digest of the written manifest/index.
        `all_images` copies every image of an index (`--all`); `format` is oci|v2s2."""
        digestfile = self._digestfile("skopeo")
        verify = str(tls_verify).lower()
        args = ["copy", "--quiet", f"--src-tls-verify={verify}", f"--dest-tls-verify={verify}",
                f"--digestfile={digestfile}"]
        if all_images:
            args.append("--all")
        if preserve_digests:
            args.append("--preserve-digests")
        if format:
            args += ["--format", format]
        args += [*extra, source, destination]
        self.run(*args, timeout=timeout)
        return digestfile.read_text().strip()

    def inspect_raw(self, ref: str, *, tls_verify: bool = False) -> bytes:
        """The manifest bytes as stored (`skopeo inspect --raw`)."""
        result = subprocess.run(
            self.command("inspect", "--raw", f"--tls-verify={str(tls_verify).lower()}", ref),
            capture_output=True, timeout=self.timeout, env=self.containers.env(), check=True)
        return result.stdout

    def inspect(self, ref: str, *, tls_verify: bool = False) -> dict[str, Any]:
        out = self.run("inspect", f"--tls-verify={str(tls_verify).lower()}", ref).stdout
        return dict(json.loads(out))

    def list_tags(self, ref: str, *, tls_verify: bool = False) -> list[str]:
        out = self.run("list-tags", f"--tls-verify={str(tls_verify).lower()}", ref).stdout
        return list(json.loads(out).get("Tags") or [])

    def delete(self, ref: str, *, tls_verify: bool = False) -> None:
        self.run("delete", f"--tls-verify={str(tls_verify).lower()}", ref)


class Buildah(_Tool):
    """buildah with vfs storage in the ContainersEnv (the same store podman uses)."""

    name = "buildah"

    def global_flags(self) -> list[str]:
        return [*self.containers.storage_flags(),
                f"--registries-conf={self.containers.registries_conf}"]

    def from_image(self, image: str = "scratch", *, tls_verify: bool = False) -> str:
        """`buildah from IMAGE` (default `scratch`); returns the working container's name."""
        return self.run("from", "--quiet", f"--tls-verify={str(tls_verify).lower()}",
                        image).stdout.strip()

    def copy(self, container: str, source: Path, destination: str = "/") -> None:
        self.run("copy", container, source, destination)

    def config(self, container: str, *args: str) -> None:
        """`buildah config ARGS CONTAINER`, e.g. `--label`, `k=v`."""
        self.run("config", *args, container)

    def commit(self, container: str, image: str, *, format: str = "oci") -> str:
        """Commit the working container to local image `image`; returns its image ID."""
        out = self.run("commit", "--quiet", "--format", format, container, image).stdout
        return "sha256:" + out.strip().splitlines()[-1].removeprefix("sha256:")

    def push(self, image: str, destination: str, *, tls_verify: bool = False,
             format: str | None = None, timeout: float | None = None) -> str:
        """`buildah push IMAGE docker://DEST`; returns the pushed manifest digest."""
        digestfile = self._digestfile("buildah")
        args = ["push", "--quiet", f"--tls-verify={str(tls_verify).lower()}",
                f"--digestfile={digestfile}"]
        if format:
            args += ["--format", format]
        dest = destination if "://" in destination else f"docker://{destination}"
        self.run(*args, image, dest, timeout=timeout)
        return digestfile.read_text().strip()

    def pull(self, ref: str, *, tls_verify: bool = False, timeout: float | None = None) -> str:
        """`buildah pull`; returns the image ID."""
        out = self.run("pull", "--quiet", f"--tls-verify={str(tls_verify).lower()}", ref,
                       timeout=timeout).stdout
        return "sha256:" + out.strip().splitlines()[-1].removeprefix("sha256:")

    def rm(self, *containers: str) -> None:
        self.run("rm", *containers)

    def rmi(self, *images: str, force: bool = False) -> None:
        self.run("rmi", *(["-f"] if force else []), *images)

    def inspect_image(self, image: str) -> dict[str, Any]:
        return dict(json.loads(self.run("inspect", "--type", "image", image).stdout))

    def images(self) -> list[dict[str, Any]]:
        return list(json.loads(self.run("images", "--json").stdout or "[]") or [])
