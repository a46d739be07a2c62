"""`systemd/install.sh` on the target: an arm64 Debian 12 root (`debootstrap --arch=arm64`,
run under qemu-user-static; tests/support/arm64_root.py), the box a Raspberry Pi 4/5 with
the 64-bit OS is.

What is shown, in order:
  1. the root has no compiler (no cc/gcc/clang/as/ld, no gcc, libc6-dev or python3-dev
     package), before and after the install;
  2. `install.sh --no-start` from a copy of this checkout, as the README says (`git clone`,
     `sudo systemd/install.sh`), succeeds; the root is systemd-less, so no systemctl;
  3. pip took every dependency as a wheel: the only wheel built is sshreg's own (pure Python,
     from the checkout), every file pip fetched is a `.whl`, every distribution in the venv
     came from one, and every extension module in it is AArch64 code. pip runs as on a
     user's box, not with PIP_ONLY_BINARY: forcing wheels would pick an older release
     instead of failing when a new one is out as a source distribution only, which a Pi
     would then have to compile. pip's log (PIP_LOG) tells what it did; the root's pip gets
     only this host's CA bundle and proxy settings (PIP_CERT), not its pip configuration;
  4. the service user, folders, modes, units and the `sshreg` link are as the README says;
  5. `sudo sshreg keys add` as the README says, then `sshreg check-config` as the service
     user exits 0 and sees the key;
  6. the server starts the way sshreg.service starts it (its User, WorkingDirectory, UMask,
     EnvironmentFile and ExecStart, read from the installed unit) and says READY=1 on
     $NOTIFY_SOCKET as Type=notify needs; a real `ssh` from the host, pinned to the host key
     the server generated, logs in; a real `ssh -N -L` tunnel carries a skopeo push and a
     skopeo pull of a synthetic image, which come back byte for byte; SIGTERM to the main
     process (KillMode=mixed) stops it with status 0; everything under /var/lib/sshreg is
     the service user's and private to it.

Run time, measured on two cores shared with other work (load 2-5): cold, about 5-6 min,
of which 3-4 min is debootstrap (the root is then kept, see tests/support/arm64_root.py) and
about 2 min install.sh (pip under emulation: resolving, unpacking and byte-compiling
botocore and the rest); warm, about 2-2.5 min. Nothing here measures speed: under emulation
the numbers mean nothing. Needs root and `apt-get install debootstrap qemu-user-static`, the
Debian mirror (debootstrap) and PyPI (pip in the root).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import arm64_root
from tests.support.arm64_root import Arm64Root, child_pid, elf_machine
from tests.support.images import layout_blobs, make_image, verify_layout
from tests.support.podman import ContainersEnv
from tests.support.processes import Process, free_port, wait_until
from tests.support.sshreg_server import ClientKey, Tunnel

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT_IN_ROOT = "/usr/src/sshreg"  # where the README's `git clone` would have put it
CHECKOUT_PARTS = ("pyproject.toml", "README.md", "sshreg", "systemd")
VENV = "/opt/sshreg/venv"
CONFIG = "/etc/sshreg/config.toml"
STATE = "/var/lib/sshreg"
UNIT = "/etc/systemd/system/sshreg.service"
PIP_LOG = "/root/pip-install.log"
SERVICE_USER = "sshreg"

INSTALL_TIMEOUT = 1200.0
START_TIMEOUT = 300.0
STOP_TIMEOUT = 120.0
SSH_TIMEOUT = 120.0
# The cold case builds the root inside the first test's setup.
TEST_TIMEOUT = 2 * arm64_root.DEBOOTSTRAP_TIMEOUT

TIMINGS: dict[str, float] = {}


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[what] = round(time.monotonic() - start, 1)
        print(f"arm64: {what}: {TIMINGS[what]:.1f}s")


@pytest.fixture(scope="session")
def arm64_pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    why = arm64_root.prerequisites()
    assert why is None, f"{why} (.ci/run installs them)"
    logs = tmp_path_factory.mktemp("arm64-build")
    with timed("root (debootstrap, or the cached one)"):
        path, built = arm64_root.cached_root(logs, logs)
    print(f"arm64: root {path} ({'built now: cold' if built else 'cached: warm'})")
    yield path
    if path.parent == logs:  # SSHREG_ARM64_ROOT_CACHE=off: kept for this session only
        arm64_root.remove_tree(path)


@dataclass
class Installed:
    root: Arm64Root
    port: int
    output: str
    pip_log: str
    packages_before: dict[str, str]
    logs: Path

    def site_packages(self) -> Path:
        (path,) = self.root.host_path(VENV).glob("lib/python3*/site-packages")
        return path

    def uid_gid(self, user: str) -> tuple[int, int]:
        for line in self.root.host_path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise KeyError(user)


def copy_checkout(root: Arm64Root) -> None:
    """What install.sh needs of a clone of this repository, into the root."""
    target = root.host_path(CHECKOUT_IN_ROOT)
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CHECKOUT_PARTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def installed(arm64_pristine: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Installed]:
    work = tmp_path_factory.mktemp("arm64")
    with timed("copy of the root"):
        root = Arm64Root.copy_of(arm64_pristine, work / "root")
    try:
        assert elf_machine(root.host_path("/usr/bin/python3")) == arm64_root.EM_AARCH64
        assert not arm64_root.compilers(root.path), "the target must have no compiler"
        packages_before = arm64_root.installed_packages(root.path)
        copy_checkout(root)
        port = free_port(outside_ephemeral=True)
        env = {**root.pip_env(), "PIP_LOG": PIP_LOG, "PIP_PROGRESS_BAR": "off"}
        with timed("install.sh --no-start"):
            result = root.run(["bash", f"{CHECKOUT_IN_ROOT}/systemd/install.sh", "--no-start",
                               "--listen", f"127.0.0.1:{port}"],
                              env=env, timeout=INSTALL_TIMEOUT, check=False)
        output = result.stdout + result.stderr
        (work / "install.log").write_text(output)
        assert result.returncode == 0, f"install.sh exited {result.returncode}:\n{output}"
        pip_log = root.host_path(PIP_LOG).read_text(errors="replace")
        (work / "pip-install.log").write_text(pip_log)
        yield Installed(root, port, output, pip_log, packages_before, work)
    finally:
        root.remove()


# -- 1-3: wheels only, no compiler -------------------------------------------------------


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def fetched_files(pip_log: str) -> list[str]:
    """The file names of every distribution pip downloaded or took from its cache."""
    pattern = re.compile(r"(?:Downloading|Using cached|File was already downloaded) "
                         r"(?:\S*/)?([^/\s]+)")
    return sorted({m[1] for m in pattern.finditer(pip_log)})


def built_wheels(pip_log: str) -> set[str]:
    return set(re.findall(r"Building wheel for (\S+) ", pip_log))


def venv_distributions(site_packages: Path) -> dict[str, str]:
    """canonical name -> version of every distribution installed in the venv."""
    out = {}
    for info in site_packages.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        out[canonical(name)] = version
    return out


@pytest.mark.timeout(TEST_TIMEOUT)
def test_install_takes_every_dependency_from_wheels_with_no_compiler(installed: Installed
                                                                     ) -> None:
    log = installed.pip_log
    assert "Successfully installed" in log, log[-3000:]
    # Nothing compiled, nothing built from a source distribution but sshreg itself.
    assert built_wheels(log) == {"sshreg"}, built_wheels(log)
    assert "setup.py install" not in log and "setup.py develop" not in log
    files = fetched_files(log)
    assert files, "pip fetched nothing?"
    not_wheels = [f for f in files if not f.endswith(".whl")]
    assert not not_wheels, f"source distributions fetched: {not_wheels}"
    # Every distribution in the venv came from a wheel pip fetched (pip and setuptools are
    # ensurepip's, from Debian's own wheels; sshreg is the checkout).
    wheels = {(canonical(f.split("-")[0]), f.split("-")[1]) for f in files}
    installed_dists = venv_distributions(installed.site_packages())
    assert {"sshreg", "asyncssh", "aiohttp", "boto3", "cryptography"} <= installed_dists.keys()
    from_nowhere = {name: version for name, version in installed_dists.items()
                    if name not in ("sshreg", "pip", "setuptools")
                    and (name, version) not in wheels}
    assert not from_nowhere, f"installed without a fetched wheel: {from_nowhere}; {files}"
    # Platform wheels for this machine: compiled code is AArch64 (aiohttp's helpers,
    # cryptography, cffi, ...).
    extensions = sorted(installed.site_packages().rglob("*.so"))
    assert len(extensions) >= 5, extensions
    wrong = [str(p) for p in extensions if elf_machine(p) != arm64_root.EM_AARCH64]
    assert not wrong, f"not AArch64: {wrong}"
    assert any("aarch64" in f for f in files), files
    # Still no compiler, and install.sh installed no Debian package.
    assert not arm64_root.compilers(installed.root.path)
    assert arm64_root.installed_packages(installed.root.path) == installed.packages_before


# -- 4: what install.sh laid out ---------------------------------------------------------


@pytest.mark.timeout(TEST_TIMEOUT)
def test_install_lays_out_the_service_as_the_readme_says(installed: Installed) -> None:
    root = installed.root
    passwd = {line.split(":")[0]: line.split(":")
              for line in root.host_path("/etc/passwd").read_text().splitlines()}
    user = passwd[SERVICE_USER]
    assert user[5] == STATE and user[6] == "/usr/sbin/nologin"
    assert int(user[2]) < 1000, "a system user"
    uid, gid = installed.uid_gid(SERVICE_USER)
    for path in (STATE, f"{STATE}/keys", f"{STATE}/data"):
        st = root.host_path(path).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o700), path
    secrets = root.host_path("/etc/sshreg/secrets.env").stat()
    assert (secrets.st_uid, secrets.st_gid, secrets.st_mode & 0o777) == (0, 0, 0o600)
    config = root.host_path(CONFIG)
    assert config.stat().st_uid == 0 and config.stat().st_mode & 0o777 == 0o644
    assert f'listen = "127.0.0.1:{installed.port}"' in config.read_text()
    for unit in ("sshreg.service", "sshreg-gc.service", "sshreg-gc.timer"):
        assert (root.host_path(f"/etc/systemd/system/{unit}").read_bytes()
                == (ROOT / "systemd" / unit).read_bytes())
    assert os.readlink(root.host_path("/usr/local/bin/sshreg")) == f"{VENV}/bin/sshreg"
    assert "--no-start: not touching systemd" in installed.output
    assert "checking the configuration as sshreg" in installed.output


# -- 5: keys add, check-config -----------------------------------------------------------


@pytest.fixture(scope="module")
def client_key(installed: Installed) -> ClientKey:
    """A fresh key, added the README's way: `sudo sshreg keys add --config ... KEY.pub`."""
    key = ClientKey.generate(installed.logs, "alice")
    shutil.copyfile(key.path.with_suffix(".pub"), installed.root.host_path("/tmp/alice.pub"))
    result = installed.root.run(["sshreg", "keys", "add", "--config", CONFIG, "/tmp/alice.pub"],
                                timeout=SSH_TIMEOUT)
    assert key.fingerprint in result.stdout, result.stdout + result.stderr
    return key


@pytest.mark.timeout(TEST_TIMEOUT)
def test_check_config_passes_as_the_service_user(installed: Installed,
                                                 client_key: ClientKey) -> None:
    # As install.sh and the README run it: `runuser -u sshreg` (sudo -u), in the state
    # folder, with the service's umask.
    with timed("check-config"):
        result = installed.root.shell(
            f"cd {STATE} && umask 077 && exec runuser -u {SERVICE_USER} -- "
            f"{VENV}/bin/sshreg check-config --config {CONFIG}", check=False, timeout=SSH_TIMEOUT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert out.rstrip().endswith("ok"), out
    assert f"listen   127.0.0.1:{installed.port}" in out, out
    assert "1 authorized key(s)" in out, out
    assert "warning" not in out, out


# -- 6: the service, a real tunnel, a real client ----------------------------------------


def unit_settings(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith(("#", ";")):
            settings.setdefault(key.strip(), value.strip())
    return settings


def service_command(unit_text: str) -> str:
    """What systemd does for sshreg.service, minus the sandbox (the unit's system-call
    filters are tests/integration/test_systemd_units.py's): read the EnvironmentFile as
    root, enter WorkingDirectory, set UMask, become User/Group, exec ExecStart."""
    unit = unit_settings(unit_text)
    env_file = unit["EnvironmentFile"]
    optional = env_file.startswith("-")
    env_file = env_file.lstrip("-")
    load = (f"if [ -r {env_file} ]; then set -a; . {env_file}; set +a; fi" if optional
            else f"set -a; . {env_file}; set +a")
    return (f"{load} && cd {unit['WorkingDirectory']} && umask {unit['UMask']} && "
            f"exec setpriv --reuid={unit['User']} --regid={unit['Group']} --init-groups -- "
            f"{unit['ExecStart']}")


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """An abstract-namespace datagram socket for sd_notify (the chroot shares the host's
    network namespace, and so its abstract sockets)."""
    name = f"sshreg-arm64-notify-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(0.5)
        yield "@" + name, sock


def ssh_options(key: ClientKey, port: int, known_hosts: Path) -> list[str]:
    return ["-p", str(port), "-i", str(key.path), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
            "-o", "ExitOnForwardFailure=yes"]


@contextlib.contextmanager
def tunnel(options: list[str], timeout: float) -> Iterator[Tunnel]:
    port = free_port(outside_ephemeral=True)
    proc = subprocess.Popen(["ssh", *options, "-N", "-L", f"127.0.0.1:{port}:localhost:80",
                             "user@127.0.0.1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    opened = Tunnel(port, proc)
    try:
        wait_until(lambda: opened.ready() or proc.poll() is not None, timeout, "the tunnel")
        if proc.poll() is not None:
            raise RuntimeError(f"ssh exited {proc.returncode}: {proc.stderr.read().decode()}")
        yield opened
    finally:
        opened.close()


@pytest.mark.timeout(TEST_TIMEOUT)
def test_the_service_round_trips_an_image_through_a_real_ssh_tunnel(
        installed: Installed, client_key: ClientKey, tmp_path: Path) -> None:
    root = installed.root
    log_path = tmp_path / "sshreg.log"
    unit_text = root.host_path(UNIT).read_text()
    unit = unit_settings(unit_text)
    assert unit["Type"] == "notify"
    with notify_socket() as (address, notifications):
        env = {"HOME": STATE, "USER": SERVICE_USER, "LOGNAME": SERVICE_USER,
               "NOTIFY_SOCKET": address}
        server = root.start(["/bin/sh", "-c", service_command(unit_text)], log_path, env=env)
        try:
            main_pid = child_pid(server)
            received: list[str] = []

            def ready() -> bool:
                with contextlib.suppress(TimeoutError):
                    received.extend(notifications.recv(4096).decode().split("\n"))
                if not server.alive():
                    raise RuntimeError(f"the server exited {server.returncode()}:\n"
                                       f"{server.log_tail()}")
                return "READY=1" in received

            with timed("server start to READY=1"):
                wait_until(ready, START_TIMEOUT, "READY=1 on NOTIFY_SOCKET",
                           on_timeout=server.log_tail)
            log = log_path.read_text()
            assert f"sshreg ready: ssh on 127.0.0.1:{installed.port}" in log, log

            # The host key the server generated, pinned: no trust on first use.
            host_key = root.host_path(f"{STATE}/keys/ssh_host_ed25519_key.pub").read_text()
            known_hosts = tmp_path / "known_hosts"
            known_hosts.write_text(f"[127.0.0.1]:{installed.port} "
                                   f"{' '.join(host_key.split()[:2])}\n")
            options = ssh_options(client_key, installed.port, known_hosts)
            whoami = subprocess.run(["ssh", *options, "user@127.0.0.1", "whoami"],
                                    capture_output=True, text=True, timeout=SSH_TIMEOUT,
                                    stdin=subprocess.DEVNULL)
            assert whoami.returncode == 0, whoami.stderr
            assert client_key.fingerprint in whoami.stdout, whoami.stdout

            image = make_image(tmp_path / "image", [2 << 20, 64 << 10], seed="arm64-install")
            skopeo = ContainersEnv(tmp_path / "containers").skopeo()
            pulled = tmp_path / "pulled"
            with tunnel(options, SSH_TIMEOUT) as opened:
                target = f"docker://{opened.registry}/team/arm64:1"
                with timed("skopeo push"):
                    pushed_digest = skopeo.copy(f"oci:{image.layout}:latest", target)
                with timed("skopeo pull"):
                    pulled_digest = skopeo.copy(target, f"oci:{pulled}:1")
            assert pushed_digest == pulled_digest == image.digest
            verify_layout(pulled)
            assert layout_blobs(pulled) == layout_blobs(image.layout)
            log = log_path.read_text()
            assert f"key {client_key.fingerprint} (alice@test) logged in" in log, log

            # systemctl stop: SIGTERM to the main process only (KillMode=mixed).
            os.kill(main_pid, signal.SIGTERM)
            wait_until(lambda: server.returncode() is not None, STOP_TIMEOUT,
                       "the server to stop", on_timeout=server.log_tail)
            assert server.returncode() == 0, server.log_tail()
            assert "stopped" in log_path.read_text()
        finally:
            stop(server)

    uid, gid = installed.uid_gid(SERVICE_USER)
    state = root.host_path(STATE)
    foreign = [str(p) for p in [state, *state.rglob("*")]
               if (p.lstat().st_uid, p.lstat().st_gid) != (uid, gid)
               or p.lstat().st_mode & 0o077]
    assert not foreign, f"not the service user's alone: {foreign}"
    print("arm64: timings " + json.dumps(TIMINGS))


def stop(server: Process) -> None:
    """Whatever happened: SIGKILL `unshare`, which takes the whole PID namespace with it."""
    if server.returncode() is None:
        server.kill()
    else:
        server.stop()
