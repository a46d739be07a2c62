"""The target box on an x86_64 machine: an arm64 Debian 12 root made with `debootstrap
--arch=arm64`, whose programs run under qemu-user-static through binfmt_misc.

`cached_root()` returns a pristine root (built once, then kept; see below); `Arm64Root.copy_of`
makes a private copy of it to change freely, `run`/`start` run commands inside the copy. A
root is what a fresh Raspberry Pi OS Lite / Debian 12 arm64 box has: `--variant=minbase`
(Priority: required, so `useradd`, `runuser`, `setpriv`) plus `PACKAGES`, and no compiler.

Every command in a root runs as
  setpriv --pdeathsig KILL -- unshare --mount --propagation private --fork --pid \\
      --kill-child --mount-proc=ROOT/proc chroot ROOT env -i PATH=... COMMAND
so its /proc mount lives in a mount namespace of its own (nothing is ever mounted in the
host's: a killed test leaves no mount behind, and removing a root cannot reach into /dev or
/proc; debootstrap's device nodes are all /dev a root needs), and everything it starts dies
with it: the command is PID 1 of a new PID namespace, `--kill-child` SIGKILLs it (and so the
whole namespace) when `unshare` dies, and `unshare` gets SIGKILL when the test process dies,
even by SIGKILL. The network namespace is the host's, so a server in the root listens on the
host's loopback. `unshare` ignores SIGTERM: signal the command itself (`child_pid`) to stop
it politely.

binfmt_misc: `enable_binfmt()` mounts it if needed and registers qemu-aarch64 from
qemu-user-static's `/usr/lib/binfmt.d/qemu-aarch64.conf` (flag F: the kernel opens the
interpreter at registration, so it works inside a chroot without a copy of qemu there). It
leaves both in place afterwards, as systemd-binfmt would at boot: other processes may use them.

The cache: debootstrap is the slow part (about 25 s to download and unpack; then 3-4 min for
dpkg and the maintainer scripts under emulation, most of it python3.11's byte-compiling of
its standard library and ca-certificates' hashing), so the finished root is kept under
`$SSHREG_ARM64_ROOT_CACHE` (default `~/.cache/sshreg-tests`), named by a hash of what went
into it, rebuilt after `CACHE_MAX_AGE`, built under a lock and renamed into place only when
complete. `SSHREG_ARM64_ROOT_CACHE=off` keeps it for the session only (a cold start each run).

Packages the host needs: `apt-get install debootstrap qemu-user-static` (util-linux's
`unshare` and coreutils' `chroot` are always there; `gpgv` and `debian-archive-keyring`
check the archive's signatures, both Priority important).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil

from tests.support.processes import Process, run

ARCH = "arm64"
SUITE = "bookworm"
VARIANT = "minbase"
# What install.sh needs beyond minbase: Python 3.11 with venv/ensurepip, and the CA
# certificates that Debian's pip uses for PyPI. No compiler, no python3-dev, no sudo.
PACKAGES = ("python3", "python3-venv", "ca-certificates")
MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_PACKAGES = ("debootstrap", "qemu-user-static")

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
HANDLER = "qemu-aarch64"
HANDLER_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")

ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMPILERS = ("cc", "c++", "gcc", "g++", "clang", "clang++", "tcc", "aarch64-linux-gnu-gcc",
             "x86_64-linux-gnu-gcc", "ld", "as")
COMPILER_PACKAGES = ("gcc", "g++", "cpp", "clang", "build-essential", "libc6-dev",
                     "python3-dev", "python3.11-dev", "binutils")
# gcc-12, cpp-12, clang-14 (not gcc-12-base, the runtime's part that every root has).
COMPILER_VERSIONED = re.compile(r"(gcc|g\+\+|cpp|clang)-[0-9.]+")

CACHE_MAX_AGE = 7 * 24 * 3600.0
DEBOOTSTRAP_TIMEOUT = 1800.0
COMMAND_TIMEOUT = 900.0
COMPLETE = ".sshreg-root-complete"
EM_AARCH64 = 183  # ELF e_machine


def prerequisites() -> str | None:
    """Why an arm64 root cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, binfmt_misc)"
    missing = [tool for tool in ("debootstrap", "qemu-aarch64-static", "unshare", "chroot")
               if shutil.which(tool) is None]
    if missing or not HANDLER_CONF.exists():
        return (f"missing {', '.join(missing) or HANDLER_CONF}: "
                f"apt-get install {' '.join(APT_PACKAGES)}")
    if not KEYRING.exists():
        return f"missing {KEYRING}: apt-get install debian-archive-keyring"
    return None


def _binfmt_mounted() -> bool:
    return (BINFMT_DIR / "register").exists()


def enable_binfmt() -> str:
    """Make the kernel run aarch64 ELF files with qemu-aarch64-static, also inside a chroot;
    returns the handler's status text."""
    if not _binfmt_mounted():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], timeout=30)
    if (BINFMT_DIR / "status").read_text().strip() != "enabled":
        (BINFMT_DIR / "status").write_text("1")
    handler = BINFMT_DIR / HANDLER
    if not handler.exists():
        line = HANDLER_CONF.read_text().strip()
        with contextlib.suppress(FileExistsError):  # registered meanwhile by someone else
            (BINFMT_DIR / "register").write_text(line)
    status = handler.read_text()
    if status.splitlines()[0].strip() != "enabled":
        handler.write_text("1")
        status = handler.read_text()
    flags = next((ln.split(":", 1)[1].strip() for ln in status.splitlines()
                  if ln.startswith("flags:")), "")
    if "F" not in flags:
        raise RuntimeError(f"{handler} is registered without the F flag, so it cannot run in "
                           f"a chroot; remove it (echo -1 > {handler}) and run again:\n{status}")
    return status


# -- the pristine root, built once -------------------------------------------------------


def root_key() -> str:
    """Names a root by everything that went into it."""
    spec = "\n".join((ARCH, SUITE, VARIANT, ",".join(PACKAGES), MIRROR, "v1"))
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def cache_dir(session_tmp: Path) -> Path:
    configured = os.environ.get("SSHREG_ARM64_ROOT_CACHE")
    if configured is not None and configured.strip().lower() in ("", "0", "off", "no"):
        return session_tmp
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sshreg-tests"


def debootstrap_command(target: Path) -> list[str]:
    return ["debootstrap", f"--arch={ARCH}", f"--variant={VARIANT}",
            f"--include={','.join(PACKAGES)}", f"--keyring={KEYRING}", "--components=main",
            SUITE, str(target), MIRROR]


def build_root(target: Path, log_path: Path, timeout: float = DEBOOTSTRAP_TIMEOUT) -> None:
    """debootstrap into `target` (both stages here, the second through binfmt_misc), in
    private mount and PID namespaces: the /proc and /sys that the second stage mounts in the
    target go away with it, and so does every process it started, even if it is killed."""
    enable_binfmt()
    command = ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--mount", "--propagation",
               "private", "--fork", "--pid", "--kill-child", "--mount-proc", "--",
               *debootstrap_command(target)]
    proc = Process.start(command, log_path)
    try:
        deadline = time.monotonic() + timeout
        while proc.returncode() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"debootstrap took over {timeout:.0f}s; log {log_path}:\n"
                                   f"{proc.log_tail()}")
            time.sleep(1)
        if proc.returncode() != 0:
            raise RuntimeError(f"debootstrap exited {proc.returncode()}; log {log_path}:\n"
                               f"{proc.log_tail()}")
    finally:
        proc.stop()


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """rm -rf a root, refusing if anything is mounted inside it."""
    if not path.exists():
        return
    mounted = mounts_under(path)
    if mounted:
        raise RuntimeError(f"not removing {path}: mounted inside it: {mounted}")
    shutil.rmtree(path)


def lock_path(root: Path) -> Path:
    return root.with_name(root.name + ".lock")


@contextlib.contextmanager
def _locked(path: Path, how: int) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, how)
        yield


def cached_root(session_tmp: Path, log_dir: Path) -> tuple[Path, bool]:
    """A pristine arm64 root (do not change it: copy it with `Arm64Root.copy_of`), and
    whether this call built it (a cold start) or found it."""
    directory = cache_dir(session_tmp)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"debian-{SUITE}-{ARCH}-{VARIANT}-{root_key()}"
    final = directory / name
    # One build at a time (other sessions wait for it), and none while a copy is made.
    with _locked(lock_path(final), fcntl.LOCK_EX):
        marker = final / COMPLETE
        if marker.exists() and time.time() - marker.stat().st_mtime < CACHE_MAX_AGE:
            enable_binfmt()
            return final, False
        for stale in directory.glob(f"{name}.tmp-*"):  # a killed build (we hold the lock)
            remove_tree(stale)
        building = directory / f"{name}.tmp-{os.getpid()}"
        try:
            build_root(building, log_dir / "debootstrap.log")
            found = compilers(building)
            assert not found, f"the root has a compiler: {found}"
            (building / COMPLETE).write_text(" ".join(debootstrap_command(final)) + "\n")
            remove_tree(final)
            building.rename(final)
        finally:
            remove_tree(building)
    return final, True


def compilers(root: Path) -> list[str]:
    """Compilers, assemblers and linkers on the root's PATH, and compiler packages dpkg has
    installed there."""
    found = [f"{d}/{name}" for d in ROOT_PATH.split(":") for name in COMPILERS
             if (root / d.lstrip("/") / name).exists()]
    packages = installed_packages(root)
    found += [f"package {p}" for p in COMPILER_PACKAGES if p in packages]
    found += [f"package {p}" for p in packages if COMPILER_VERSIONED.fullmatch(p)]
    return found


def installed_packages(root: Path) -> dict[str, str]:
    """name -> version of the packages dpkg lists as installed in `root`."""
    packages: dict[str, str] = {}
    for stanza in (root / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed"):
            packages[fields["Package"]] = fields.get("Version", "")
    return packages


def elf_machine(path: Path) -> int:
    """The e_machine of an ELF file (183: AArch64, 62: x86-64)."""
    with open(path, "rb") as f:
        header = f.read(20)
    if header[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


# -- a copy to work in -------------------------------------------------------------------


def host_ca_bundle() -> Path | None:
    """The CA certificates this host's own pip trusts (a host that reaches PyPI through a
    TLS-inspecting proxy trusts the proxy's CA; so must pip in the root)."""
    candidates = [os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                  os.environ.get("REQUESTS_CA_BUNDLE"), ssl.get_default_verify_paths().cafile,
                  "/etc/ssl/certs/ca-certificates.crt"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


PASSED_THROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                  "NO_PROXY", "PIP_INDEX_URL", "PIP_DEFAULT_TIMEOUT")


class Arm64Root:
    """A private copy of a pristine root, and commands run inside it."""

    HOST_CA = "/root/host-ca.pem"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def copy_of(cls, pristine: Path, path: Path) -> Arm64Root:
        with _locked(lock_path(pristine), fcntl.LOCK_SH):  # not while it is being rebuilt
            assert (pristine / COMPLETE).exists(), f"{pristine} is not a finished root"
            run(["cp", "-a", "--reflink=auto", str(pristine), str(path)], timeout=600)
        root = cls(path)
        # What a box on this network has: its resolver, and the CAs its pip must trust.
        for name in ("etc/resolv.conf", "etc/hosts"):
            target = path / name
            target.unlink(missing_ok=True)
            shutil.copyfile(Path("/") / name, target)
        bundle = host_ca_bundle()
        if bundle is not None:
            shutil.copyfile(bundle, root.host_path(cls.HOST_CA))
        return root

    def host_path(self, inside: str) -> Path:
        """Where a path of the root is on the host."""
        return self.path / inside.lstrip("/")

    def pip_env(self) -> dict[str, str]:
        """pip's environment in the root: this host's CAs and proxy settings, nothing else
        of the host's pip configuration (its local indexes hold x86_64 wheels)."""
        env = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH}
        if env.get("PIP_INDEX_URL", "http").split(":")[0] not in ("http", "https"):
            env.pop("PIP_INDEX_URL")
        if self.host_path(self.HOST_CA).exists():
            env["PIP_CERT"] = self.HOST_CA
        return env

    def command(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        base = {"PATH": ROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
        environment = [f"{k}={v}" for k, v in {**base, **(env or {})}.items()]
        return ["setpriv", "--pdeathsig", "KILL", "--",
                "unshare", "--mount", "--propagation", "private", "--fork", "--pid",
                "--kill-child", f"--mount-proc={self.path / 'proc'}",
                "chroot", str(self.path), "/usr/bin/env", "-i", *environment, *args]

    def run(self, args: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float = COMMAND_TIMEOUT, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """Run a command in the root to its end; on the timeout everything it started dies
        (its PID namespace goes with it)."""
        return run(self.command(args, env), timeout=timeout, check=check)

    def start(self, args: Sequence[str], log_path: Path, *,
              env: Mapping[str, str] | None = None) -> Process:
        """Start a long-running command in the root (`Process.stop` or `.kill` ends it and
        everything it started)."""
        return Process.start(self.command(args, env), log_path)

    def shell(self, script: str, *, env: Mapping[str, str] | None = None,
              timeout: float = COMMAND_TIMEOUT, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/sh", "-c", script], env=env, timeout=timeout, check=check)

    def remove(self) -> None:
        remove_tree(self.path)


def child_pid(process: Process, timeout: float = 30.0) -> int:
    """The host pid of the command `Arm64Root.start` started: `unshare`'s one child (PID 1
    of its namespace, after chroot/env/sh have exec'd into it)."""
    def find() -> int | None:
        children = psutil.Process(process.pid).children()
        return children[0].pid if children else None

    deadline = time.monotonic() + timeout
    while (pid := find()) is None:
        if time.monotonic() > deadline or not process.alive():
            raise RuntimeError(f"no child of unshare; log:\n{process.log_tail()}")
        time.sleep(0.05)
    return pid


@contextlib.contextmanager
def temporary_root(pristine: Path, path: Path) -> Iterator[Arm64Root]:
    root = Arm64Root.copy_of(pristine, path)
    try:
        yield root
    finally:
        root.remove()
