"""The systemd unit: `systemd-analyze verify` is clean, the security score is no worse than
the README says, and the server works under the unit's seccomp filters.

CI has Debian's `systemd` package but no systemd as PID 1: `verify` runs offline against a
scratch root holding the system's units and stand-ins for the unit's executables (which
only exist once installed), and the sandbox test rebuilds the unit's seccomp filters with
`tests/support/seccomp.py` instead of starting the unit.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from sshreg.config import Config
from tests.conftest import S3_TEST_BUCKET
from tests.support import seccomp
from tests.support.hashing import digest_of
from tests.support.sshreg_server import READY_LINE, ClientKey, SshregServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
SERVICE = UNITS / "sshreg.service"
SYSTEM_UNITS = Path("/lib/systemd/system")
TIMEOUT = 60



def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(["systemd-analyze", "--no-pager", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, env=env)


# A unit for the user's own session (`systemctl --user`), verified as one in
# tests/integration/test_tunnel_cli.py: as a system unit its %h is root's home.
USER_UNITS = {"sshreg-tunnel@.service"}


def unit_files() -> list[Path]:
    """The server's system units."""
    return sorted(p for p in UNITS.iterdir()
                  if p.suffix in (".service", ".timer", ".socket") and p.name not in USER_UNITS)


def exec_paths(text: str) -> set[str]:
    """The executables of a unit's Exec*= lines, without systemd's prefixes (-@:+!)."""
    paths = set()
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().startswith("Exec") and value.strip():
            paths.add(value.strip().lstrip("-@:+!").split()[0])
    return paths


def verify_root(base: Path, units: dict[str, str]) -> Path:
    """A scratch root: the system's units, ours in /etc/systemd/system, stub executables."""
    root = base / "root"
    shutil.copytree(SYSTEM_UNITS.resolve(), root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
        for exe in exec_paths(text):
            stub = root / exe.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    return root


def verify(base: Path, units: dict[str, str]) -> str:
    root = verify_root(base, units)
    result = analyze("verify", f"--root={root}", *units)
    return (result.stdout + result.stderr).strip() + ("" if result.returncode == 0 else
                                                      f"\n(exit {result.returncode})")


def test_verify_is_clean(tmp_path: Path) -> None:
    assert verify(tmp_path, {p.name: p.read_text() for p in unit_files()}) == ""


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above is not vacuous: a typo in a directive is reported."""
    broken = SERVICE.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHoem=yes")
    assert "ProtectHoem" in verify(tmp_path, {"sshreg.service": broken})


def readme_score() -> float:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"rates the unit's\s+exposure\s+\*\*(\d+\.\d+)", text)
    assert match, "README.md must record the score: rates the unit's exposure **N.N ...**"
    return float(match[1])


def test_security_score_is_no_worse_than_the_readme() -> None:
    result = analyze("security", "--offline=yes", str(SERVICE))
    match = re.search(r"Overall exposure level for sshreg\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= readme_score(), result.stdout


def test_unit_contract() -> None:
    text = SERVICE.read_text()
    settings = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key.strip(), value.strip())
    assert settings["Type"] == "notify"
    assert settings["User"] == "sshreg"
    assert settings["ExecStart"] == ("/opt/sshreg/venv/bin/sshreg serve "
                                     "--config /etc/sshreg/config.toml")
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["KillMode"] == "mixed"  # the supervisor stops its workers itself
    assert settings["StateDirectory"] == "sshreg"
    assert settings["EnvironmentFile"] == "-/etc/sshreg/secrets.env"
    stop = settings["TimeoutStopSec"]
    assert stop.endswith("s") and float(stop[:-1]) > Config().server.shutdown_grace + 10
    assert "AWS_SECRET" not in text.replace("AWS_SECRET_ACCESS_KEY,", "")


@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh"])
def test_scripts_parse(script: str) -> None:
    path = UNITS / script
    assert path.stat().st_mode & stat.S_IXUSR
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    help_text = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True,
                               timeout=TIMEOUT)
    assert help_text.returncode == 0 and "sudo systemd/" in help_text.stdout


# -- the server under the unit's seccomp filters ----------------------------------------


def start_sandboxed(server: SshregServer) -> None:
    """`sshreg serve` under the unit's filters; `--kill`: any call outside the allow-list
    kills the server (under the unit it would fail with EPERM, maybe silently)."""
    command = [sys.executable, str(ROOT / "tests/support/seccomp.py"), str(SERVICE), "--kill",
               "--", sys.executable, "-m", "sshreg", "serve",
               "--listen", f"127.0.0.1:{server.port}", "--keys", str(server.keys_dir),
               "--storage", server.storage]
    with open(server.log_path, "ab") as log:
        server.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, **server.env,
                                            "PYTHONPATH": str(ROOT)},
                                       cwd=server.workdir)
    wait_for(lambda: READY_LINE in server.log() or server.proc.poll() is not None, TIMEOUT,
             "sshreg to start in the sandbox")
    assert server.proc.poll() is None, server.log()


def http(url: str, method: str = "GET", data: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
        return response.status, response.read(), dict(response.headers)


def absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["filesystem", "s3"])
def test_server_works_under_the_units_seccomp_filters(tmp_path: Path, backend: str,
                                                      request: pytest.FixtureRequest) -> None:
    why = seccomp.available()
    assert why is None, f"{why} (.ci/run installs systemd, which brings libseccomp)"
    env: dict[str, str] = {}
    storage = None
    if backend == "s3":
        s3 = request.getfixturevalue("s3_server")
        # `localhost`, not 127.0.0.1: name resolution runs under the filters too.
        env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
               "AWS_ENDPOINT_URL_S3": s3.endpoint_url.replace("127.0.0.1", "localhost")}
        storage = f"s3://{S3_TEST_BUCKET}/sandbox-{uuid.uuid4().hex}"
    server = SshregServer(tmp_path, storage, env=env)
    key = ClientKey.generate(tmp_path, "alice")
    server.authorize(key.line())
    start_sandboxed(server)
    try:
        with server.tunnel(key) as tunnel:
            base = f"{tunnel.url}/v2/team/app"
            assert http(f"{tunnel.url}/v2/")[0] == 200
            blob = os.urandom(3 << 20)
            digest = digest_of(blob)
            octets = {"Content-Type": "application/octet-stream"}
            status, _, headers = http(f"{base}/blobs/uploads/", "POST")
            assert status == 202
            status, _, headers = http(absolute(tunnel.url, headers["Location"]), "PATCH",
                                      blob[:1 << 20], octets)
            assert status == 202
            location = absolute(tunnel.url, headers["Location"])
            sep = "&" if "?" in location else "?"
            assert http(f"{location}{sep}digest={digest}", "PUT", blob[1 << 20:], octets)[0] == 201
            assert http(f"{base}/blobs/{digest}")[1] == blob
    finally:
        code = server.stop(timeout=TIMEOUT)
    assert code == 0, f"exit {code} (-31 is SIGSYS: a call the unit forbids)\n{server.log()}"
    assert "stopped" in server.log()

