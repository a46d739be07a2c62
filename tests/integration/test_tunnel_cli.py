"""`sshreg tunnel` end to end: the real command (`python -m sshreg tunnel`) running the real
OpenSSH client against a real `sshreg serve`, with real docker and skopeo through it.

Every run passes `-i KEY -o IdentitiesOnly=yes -o UserKnownHostsFile=THROWAWAY` and
`--local 127.0.0.1:<free port>`, with stdin not a tty (so the command adds BatchMode=yes). Each
command runs in its own process group, so that whatever happens, no ssh it started outlives
the test. Also here: the README's CI recipe run as the script it is, and the systemd user unit
checked by `systemd-analyze --user verify` as an instance.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from sshreg import tunnel as tunnel_module
from tests.support.deployment import unique
from tests.support.docker import Docker
from tests.support.images import make_image, write_docker_archive
from tests.support.podman import ContainersEnv
from tests.support.processes import accepts, port_is_free
from tests.support.registry import RegistryHTTP
from tests.support.sshreg_server import ClientKey, SshregServer, free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
UNIT = ROOT / "systemd" / "sshreg-tunnel@.service"
END_TIMEOUT = 10.0  # a failure no retry fixes ends it at once (not after READY_TIMEOUT, 30 s)
CI_PORT = 5000  # what the README's CI script hard-codes


# -- the server, the keys, the known_hosts files ------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, ClientKey]:
    directory = tmp_path_factory.mktemp("tunnel-keys")
    return {name: ClientKey.generate(directory, name)
            for name in ("alice", "reader", "nofwd", "stranger", "other-host")}


def key_lines(keys: dict[str, ClientKey]) -> list[str]:
    return [keys["alice"].line(), keys["reader"].line('sshreg-pull="**"'),
            keys["nofwd"].line("no-port-forwarding")]


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys) -> Iterator[SshregServer]:
    srv = SshregServer(tmp_path_factory.mktemp("tunnel-server"))
    srv.authorize(*key_lines(keys))
    srv.start()
    yield srv
    srv.stop()


def host_public_key(server: SshregServer) -> str:
    """`ssh-ed25519 AAAA...` of the key the server generated in its keys folder."""
    return " ".join((server.keys_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2])


def known_host_line(server: SshregServer, public_key: str | None = None) -> str:
    return f"[127.0.0.1]:{server.port} {public_key or host_public_key(server)}"


def known_hosts(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def trusted(server, tmp_path) -> Path:
    """A throwaway known_hosts holding the server's real host key."""
    return known_hosts(tmp_path / "known_hosts", known_host_line(server))


# -- running `sshreg tunnel` ----------------------------------------------------------------


def tunnel_args(server: SshregServer, key: ClientKey, known: Path, local_port: int,
                *extra: str) -> list[str]:
    return [sys.executable, "-m", "sshreg", "tunnel", "-p", str(server.port),
            "-i", str(key.path), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known}", "--local", f"127.0.0.1:{local_port}",
            *extra, "127.0.0.1"]


def ssh_descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return [p for p in psutil.Process(pid).children(recursive=True) if p.name() == "ssh"]
    return []


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie has exited: it holds no socket)."""
    running = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
    return running


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group we started (its leader is reaped after)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def group_members(pgid: int) -> list[psutil.Process]:
    """The processes of process group `pgid`."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid:
                members.append(process)
    return members


class TunnelProcess:
    """`sshreg tunnel` running in the background, its stderr in a file read while it runs."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env)
        self.ssh_seen: list[psutil.Process] = []

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def wait_for_line(self, pattern: str, timeout: float, count: int = 1) -> list[str]:
        """The lines matching `pattern`, once there are `count` of them."""
        def matching() -> list[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshreg tunnel exited {self.proc.returncode}:\n"
                                     f"{self.output()}")
            found = [line for line in self.lines() if re.search(pattern, line)]
            return found if len(found) >= count else None

        found = wait_for(matching, timeout, f"{pattern!r} from sshreg tunnel")
        assert isinstance(found, list)
        return found

    def remember_ssh(self) -> list[psutil.Process]:
        self.ssh_seen += ssh_descendants(self.proc.pid)
        return self.ssh_seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        kill_group(self.proc.pid)
        self.proc.wait(10)


@contextlib.contextmanager
def running_tunnel(args: list[str], log: Path) -> Iterator[TunnelProcess]:
    tunnel = TunnelProcess(args, log)
    try:
        yield tunnel
    finally:
        tunnel.stop()


@dataclass
class Ended:
    """How a `sshreg tunnel` run ended."""

    status: int
    output: str
    seconds: float
    ssh_started: bool  # an ssh child was seen while it ran
    left_behind: list[psutil.Process]  # what of its process group outlived it


def run_tunnel(args: list[str], timeout: float = END_TIMEOUT + 40) -> Ended:
    """Run `sshreg tunnel` until it ends, in its own process group: whatever of that group
    is still running once it has ended was left behind (ssh keeps the group when orphaned)."""
    started = time.monotonic()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ssh_started = False
    try:
        deadline = started + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            ssh_started = ssh_started or bool(ssh_descendants(proc.pid))
            time.sleep(0.05)
        output, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        seconds = time.monotonic() - started
        left_behind = alive(group_members(proc.pid))
    finally:
        kill_group(proc.pid)
        if proc.poll() is None:
            proc.wait(10)
    return Ended(proc.returncode, output, seconds, ssh_started, left_behind)


def v2_answers(port: int) -> bool:
    """The registry answers /v2/ on the local port (through the tunnel)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def up_line(port: int, key: ClientKey, rights: str) -> str:
    return (rf"^sshreg tunnel: up: 127\.0\.0\.1:{port} -> 127\.0\.0\.1 as "
            rf"{re.escape(key.public.split()[-1])} \({re.escape(key.fingerprint)}\): "
            rf"{re.escape(rights)}$")


FULL_RIGHTS = "pull **; push **; delete **; admin"


# -- pushing through it ---------------------------------------------------------------------


def test_docker_pushes_through_the_tunnel_which_says_who_you_are(
        server, keys, trusted, docker: Docker, tmp_path):
    port = free_port()
    args = tunnel_args(server, keys["alice"], trusted, port)
    with running_tunnel(args, tmp_path / "tunnel.log") as tunnel:
        tunnel.wait_for_line(up_line(port, keys["alice"], FULL_RIGHTS), 30)
        image = make_image(tmp_path / "layout", [200_000, 60_000], seed=unique("tunnel"))
        repository = unique("tunnel/docker")
        ref = f"127.0.0.1:{port}/{repository}:1"
        docker.load(write_docker_archive(image, tmp_path / "image.tar", [ref]))
        pushed = docker.push(ref, timeout=120)
        manifest = RegistryHTTP(f"http://127.0.0.1:{port}").manifest(repository, "1")
        assert manifest.digest == pushed.digest
        assert b'"' + image.config.digest.encode() + b'"' in manifest.body
        assert not [line for line in tunnel.lines() if "reconnecting" in line]


def test_tunnel_is_back_within_10s_of_a_killed_server_restarting_and_the_next_push_works(
        keys, containers_env: ContainersEnv, tmp_path):
    """SIGKILL, then the server starts again on the same port: nobody touches the tunnel."""
    srv = SshregServer(tmp_path / "server")
    srv.authorize(*key_lines(keys))
    srv.start()
    try:
        known = known_hosts(tmp_path / "known_hosts", known_host_line(srv))
        port = free_port()
        with running_tunnel(tunnel_args(srv, keys["alice"], known, port),
                            tmp_path / "tunnel.log") as tunnel:
            tunnel.wait_for_line(up_line(port, keys["alice"], FULL_RIGHTS), 30)
            srv.kill()
            # It noticed, and has already failed to reconnect once (the backoff has grown).
            tunnel.wait_for_line("reconnecting", 20, count=2)
            assert not v2_answers(port)
            srv.start()
            ready = time.monotonic()
            wait_for(lambda: v2_answers(port), 10, "the tunnel to come back by itself",
                     interval=0.1)
            assert time.monotonic() - ready < 10
            reconnecting = [line for line in tunnel.lines() if "reconnecting" in line]
            for line in reconnecting:  # one line each: what ssh said, and when it tries again
                assert re.fullmatch(r"sshreg tunnel: ssh ended \(.+\); reconnecting in \d+s",
                                    line), line
            assert "Connection refused" in reconnecting[1]
            image = make_image(tmp_path / "layout", [150_000], seed=unique("restart"))
            repository = unique("tunnel/after-restart")
            pushed = containers_env.skopeo().copy(
                f"oci:{tmp_path / 'layout'}:latest",
                f"docker://127.0.0.1:{port}/{repository}:1", timeout=120)
            assert pushed == image.digest
            assert RegistryHTTP(f"http://127.0.0.1:{port}").manifest(
                repository, "1").body == image.manifest_bytes()
            assert tunnel.proc.poll() is None
    finally:
        srv.stop()


# -- failures a retry cannot fix ----------------------------------------------------------


@contextlib.contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """Something else serving on 127.0.0.1:`port` (another tunnel, a local registry)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


@contextlib.contextmanager
def bound_only(port: int) -> Iterator[socket.socket]:
    """A socket holding 127.0.0.1:`port` without listening: the command's own check sees a
    free port, and ssh's bind is what fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        yield sock


def assert_ended(ended: Ended, status: int, *words: str) -> str:
    """It ended at once with `status`, one line saying `words`, and no ssh left running."""
    assert ended.status == status, ended.output
    for word in words:
        assert word in ended.output, ended.output
    assert ended.seconds < END_TIMEOUT, f"took {ended.seconds:.1f}s: {ended.output}"
    assert not ended.left_behind, f"left running: {ended.left_behind}"
    assert ended.output.startswith("sshreg tunnel: ") and ended.output.count("\n") == 1, \
        ended.output
    return ended.output


@pytest.mark.parametrize("holder", [listening, bound_only], ids=["listening", "bound"])
def test_a_taken_local_port_ends_it_with_status_3(server, keys, trusted, holder):
    """Found by the command's own check before ssh starts, or by ssh's failing bind."""
    port = free_port()
    with holder(port):
        result = run_tunnel(tunnel_args(server, keys["alice"], trusted, port))
    assert_ended(result, 3, f"the local port 127.0.0.1:{port} is taken", "--local")
    assert result.ssh_started == (holder is bound_only)


def test_a_local_port_below_1024_without_root_ends_it_with_status_3_not_as_a_refused_key(
        server, keys, trusted):
    """ssh says "bind [127.0.0.1]:1023: Permission denied": not "Permission denied
    (publickey)". A user namespace takes away the right to bind it, as for a normal user."""
    assert port_is_free(1023), "port 1023 is in use on this box"
    args = ["unshare", "--user", "--map-root-user",
            *tunnel_args(server, keys["alice"], trusted, 1023)]
    output = assert_ended(run_tunnel(args), 3, "127.0.0.1:1023", "below 1024 needs root")
    assert "refused your key" not in output


def test_an_unknown_host_key_ends_it_with_status_4(server, keys, tmp_path):
    empty = known_hosts(tmp_path / "known_hosts")
    result = run_tunnel(tunnel_args(server, keys["alice"], empty, free_port()))
    assert_ended(result, 4, "host key of 127.0.0.1 is not known yet",
                 f"ssh -p {server.port} 127.0.0.1", "fingerprint")


def test_a_changed_host_key_ends_it_with_status_4_and_never_connects(server, keys, tmp_path):
    impostor = " ".join(keys["other-host"].public.split()[:2])
    changed = known_hosts(tmp_path / "known_hosts", known_host_line(server, impostor))
    before = server.log().count("logged in from")
    result = run_tunnel(tunnel_args(server, keys["alice"], changed, free_port()))
    assert_ended(result, 4, "host key of 127.0.0.1 has CHANGED", "man-in-the-middle",
                 f"ssh-keygen -R '[127.0.0.1]:{server.port}'")
    assert server.log().count("logged in from") == before


def test_a_refused_key_ends_it_with_status_5(server, keys, trusted):
    result = run_tunnel(tunnel_args(server, keys["stranger"], trusted, free_port()))
    assert_ended(result, 5, "127.0.0.1 refused your key", "sshreg keys add")


def test_a_key_that_may_not_forward_ends_it_with_status_5_at_once(server, keys, trusted):
    result = run_tunnel(tunnel_args(server, keys["nofwd"], trusted, free_port()))
    assert_ended(result, 5, "does not let it open tunnels", "port-forwarding")


def test_a_wrong_remote_port_ends_it_with_status_2_at_once(server, keys, trusted):
    result = run_tunnel(tunnel_args(server, keys["alice"], trusted, free_port(),
                                    "--remote-port", "8080"))
    assert_ended(result, 2, "refused to forward to localhost:8080", "--remote-port")


# -- --check --------------------------------------------------------------------------------


def test_check_exits_0_after_one_tunnel_and_whoami_and_leaves_nothing_running(
        server, keys, trusted):
    port = free_port()
    ended = run_tunnel(tunnel_args(server, keys["reader"], trusted, port, "--check"))
    assert ended.status == 0, ended.output
    assert re.search(up_line(port, keys["reader"], "pull **"), ended.output, re.M), ended.output
    assert ended.ssh_started and not ended.left_behind
    assert not accepts(port)


@pytest.mark.parametrize("case", ["refused key", "unknown host key", "no server",
                                  "key may not forward"])
def test_check_exits_non_zero_when_anything_is_wrong(server, keys, trusted, tmp_path, case):
    key, known, target = keys["alice"], trusted, server
    if case == "refused key":
        key = keys["stranger"]
    elif case == "unknown host key":
        known = known_hosts(tmp_path / "empty")
    elif case == "no server":
        target = SshregServer(tmp_path / "never-started")  # a free port nobody serves
    else:
        key = keys["nofwd"]
    ended = run_tunnel(tunnel_args(target, key, known, free_port(), "--check"))
    assert ended.status != 0, ended.output
    assert "up:" not in ended.output
    assert ended.seconds < END_TIMEOUT and not ended.left_behind
    if case == "no server":
        assert ended.status == 1, ended.output
        assert "no tunnel:" in ended.output and "Connection refused" in ended.output


# -- stopping it ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["ctrl-c", "sigint", "sigterm"])
def test_ctrl_c_and_sigterm_stop_it_with_status_0_and_no_ssh_left(
        server, keys, trusted, tmp_path, how):
    """Ctrl-C in a terminal signals the whole foreground process group (ssh too); `kill`
    and systemd's stop signal the command alone."""
    port = free_port()
    with running_tunnel(tunnel_args(server, keys["alice"], trusted, port),
                        tmp_path / "tunnel.log") as tunnel:
        tunnel.wait_for_line(up_line(port, keys["alice"], FULL_RIGHTS), 30)
        ssh = tunnel.remember_ssh()
        assert alive(ssh), "no ssh under sshreg tunnel"
        if how == "ctrl-c":
            os.killpg(tunnel.proc.pid, signal.SIGINT)
        else:
            tunnel.proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
        assert tunnel.proc.wait(15) == 0, tunnel.output()
        assert not alive(ssh), f"ssh left running: {alive(ssh)}"
        assert not alive(group_members(tunnel.proc.pid))
        assert not accepts(port)
        assert "Traceback" not in tunnel.output()


# -- the README's CI recipe -----------------------------------------------------------------


def readme_ci_script() -> str:
    """The `sh` block that follows "**CI.**" in README.md (ci/push-through-sshreg.sh)."""
    after = README.read_text().split("**CI.**", 1)[1]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match, "README.md: no ```sh block after **CI.**"
    return match[1]


def listener_pids(port: int) -> set[int]:
    return {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN
            and c.laddr.port == port and c.pid is not None}


def test_readme_ci_recipe_pushes_an_image_through_a_checked_tunnel(
        server, keys, docker: Docker, tmp_path):
    assert not accepts(CI_PORT), (f"something listens on port {CI_PORT} on this box; the "
                                  "README's CI script hard-codes it")
    ci_key = ClientKey.generate(tmp_path, "ci")
    server.authorize(*key_lines(keys), ci_key.line())
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    sshreg = bin_dir / "sshreg"  # `pip install sshreg`, as the checkout under test
    sshreg.write_text(f'#!/bin/sh\nexec {sys.executable} -m sshreg "$@"\n')
    sshreg.chmod(0o755)
    script = tmp_path / "push-through-sshreg.sh"
    script.write_text(readme_ci_script())
    image = make_image(tmp_path / "layout", [120_000, 40_000], seed=unique("ci"))
    name = f"{unique('ci/app')}:1"
    docker.load(write_docker_archive(image, tmp_path / "image.tar", [f"localhost:5000/{name}"]))
    env = {**docker.env(), "DOCKER_HOST": docker.host,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(home),
           "REG_HOST": "127.0.0.1", "REG_PORT": str(server.port),
           "REG_KEY": ci_key.path.read_text(), "REG_KNOWN_HOST": known_host_line(server),
           "IMAGE": name}
    # Its output goes to a file, as a CI runner's would be read to its end.
    script_log = tmp_path / "script.log"
    with open(script_log, "wb") as out:
        proc = subprocess.Popen(["sh", str(script)], cwd=tmp_path, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        code = proc.wait(180)
        output = script_log.read_text(errors="replace")
        assert code == 0, output
        # The tunnel the script left running is the one that served 5000, and it said so.
        leftovers = group_members(proc.pid)
        listeners = listener_pids(CI_PORT)
        assert listeners and listeners <= {p.pid for p in leftovers}, "another listener on 5000"
        log = (tmp_path / "tunnel.log").read_text()
        assert re.search(up_line(CI_PORT, ci_key, FULL_RIGHTS), log, re.M), log
        assert "sshreg tunnel: up: 127.0.0.1:5000" in output  # from --check
        pushed = re.search(r"digest: (sha256:[0-9a-f]{64})", output)
        assert pushed, output
    finally:
        leftovers = group_members(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        _, still = psutil.wait_procs(leftovers, timeout=15)
        kill_group(proc.pid)
        if proc.poll() is None:
            proc.wait(10)
        server.authorize(*key_lines(keys))
    assert not still, f"the CI tunnel did not stop on SIGTERM: {still}"
    with server.tunnel(keys["alice"]) as check:
        repository, tag = name.split(":")
        assert RegistryHTTP(check.url).manifest(repository, tag).digest == pushed[1]
    assert not accepts(CI_PORT)  # the tunnel is gone (TIME_WAIT may hold the port a while)


# -- the systemd user unit ------------------------------------------------------------------


def test_the_user_unit_as_an_instance_passes_systemd_analyze_verify(tmp_path):
    """`systemd-analyze --user verify` of `sshreg-tunnel@reg.service`, with %h a home
    holding .local/bin/sshreg (a user manager is not needed, only a runtime folder)."""
    home, runtime, units = tmp_path / "home", tmp_path / "runtime", tmp_path / "units"
    for folder in (home / ".local" / "bin", runtime, units):
        folder.mkdir(parents=True)
    runtime.chmod(0o700)
    instance = units / "sshreg-tunnel@reg.service"
    instance.write_text(UNIT.read_text())

    def verify() -> tuple[int, str]:
        env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime),
               "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "SYSTEMD_LOG_COLOR": "0"}
        result = subprocess.run(["systemd-analyze", "--user", "--no-pager", "verify",
                                 str(instance)], capture_output=True, text=True, timeout=60,
                                env=env)
        return result.returncode, (result.stdout + result.stderr).strip()

    # Not vacuous: without %h/.local/bin/sshreg it says so.
    code, output = verify()
    assert code != 0 and f"{home}/.local/bin/sshreg is not executable" in output, output
    sshreg = home / ".local" / "bin" / "sshreg"
    sshreg.write_text(f'#!/bin/sh\nexec {sys.executable} -m sshreg "$@"\n')
    sshreg.chmod(0o755)
    assert verify() == (0, "")
    assert subprocess.run([str(sshreg), "tunnel", "--help"], capture_output=True,
                          timeout=60).returncode == 0


def test_the_user_unit_does_not_restart_what_a_restart_cannot_fix():
    """RestartPreventExitStatus= names every status of a failure no retry fixes (and the
    usage error), and nothing else: a dropped tunnel or a failed --check is restarted."""
    settings = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                    if "=" in line and not line.startswith("#"))
    prevented = {int(status) for status in settings["RestartPreventExitStatus"].split()}
    fatal = {fatal.status for _, fatal in tunnel_module.FATAL_PATTERNS}
    assert prevented == fatal | {tunnel_module.EXIT_USAGE}
    assert tunnel_module.EXIT_FAILED not in prevented
    assert settings["Restart"] == "always"
    assert settings["ExecStart"] == "%h/.local/bin/sshreg tunnel %i"
