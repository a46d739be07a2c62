"""`sshreg tunnel HOST`: the user's side, a registry tunnel that stays up.

It runs the user's own OpenSSH `ssh` (their `~/.ssh/config`, agent and known_hosts; no second
SSH implementation on the client) as `ssh -N -L LOCAL:localhost:80 HOST` with the options a
tunnel needs: `ExitOnForwardFailure` (a forward that cannot be set up ends ssh instead of
leaving a useless session), and `ServerAliveInterval`/`CountMax` (a dead network or a
sleeping laptop ends it within a minute instead of never). Whenever ssh exits it is started
again with backoff, saying so on one line; a failure no retry can fix (the local port is
taken, the host key is unknown or changed, the key is refused or may not forward, the remote
port is not the registry's) ends the command with a message saying what to do and a non-zero
status. Once the local port answers `/v2/`, it prints who the registry thinks you are
(`ssh HOST whoami`).

Only the standard library is used, so the command runs wherever `pip install sshreg` does
(Linux, macOS; Windows with OpenSSH for Windows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

EXIT_USAGE = 2
EXIT_PORT_TAKEN = 3
EXIT_HOST_KEY = 4
EXIT_KEY_REFUSED = 5
EXIT_FAILED = 1

READY_TIMEOUT = 30.0  # seconds for a new tunnel to answer /v2/
FIRST_RETRY, MAX_RETRY = 1.0, 5.0  # a restarted server has its tunnels back within seconds
STABLE = 60.0  # a tunnel up this long resets the backoff


@dataclass(frozen=True)
class Fatal:
    """A failure no retry fixes: what the user is told, and the exit status."""

    message: str
    status: int


PORT_TAKEN = Fatal(
    "the local port {local} is taken (another tunnel, or a registry running on this machine?): "
    "stop it, or use --local 127.0.0.1:PORT", EXIT_PORT_TAKEN)

# What ssh prints (stderr) for the failures a retry cannot fix, and what to tell the user; the
# first pattern found in ssh's output wins. Both "bind [127.0.0.1]:80: Permission denied" (a
# port below 1024 without root) and "user@host: Permission denied (publickey)." (a refused
# key) say "Permission denied".
FATAL_PATTERNS: list[tuple[re.Pattern[str], Fatal]] = [
    (re.compile("REMOTE HOST IDENTIFICATION HAS CHANGED"), Fatal(
        "the host key of {host} has CHANGED since you last connected. This is what a "
        "man-in-the-middle attack looks like; it is also what a reinstalled server looks "
        "like. Ask the registry's admin for its fingerprint (`sshreg check-config` prints "
        "it), and only if it matches, remove the old key: ssh-keygen -R '{known_host}'",
        EXIT_HOST_KEY)),
    (re.compile("Host key verification failed"), Fatal(
        "the host key of {host} is not known yet. Connect once with `ssh {ssh_host}` and "
        "compare the fingerprint it shows with the one your registry's admin gave you "
        "before you answer yes (or add the known_hosts line they gave you)", EXIT_HOST_KEY)),
    (re.compile(r"bind \[.*\]:\d+: Permission denied"), Fatal(
        "ssh may not listen on the local port {local}: a port below 1024 needs root; use "
        "--local 127.0.0.1:PORT with a port above 1023", EXIT_PORT_TAKEN)),
    (re.compile("Address already in use|cannot listen to port|Could not request local forwarding"),
     PORT_TAKEN),
    (re.compile(r": Permission denied \("), Fatal(
        "{host} refused your key: ask the registry's admin to add your public key "
        "(`sshreg keys add`), or pick the key with -i", EXIT_KEY_REFUSED)),
    # The server refuses the forwarded connection itself (our first /v2/ through the tunnel).
    (re.compile("port forwarding is not permitted for this key"), Fatal(
        "{host} accepted your key but does not let it open tunnels (its authorized_keys line "
        "has restrict or no-port-forwarding): ask the registry's admin for a line that "
        "allows port-forwarding", EXIT_KEY_REFUSED)),
    (re.compile("administratively prohibited"), Fatal(
        "{host} refused to forward to localhost:{remote_port}: that is not the registry's "
        "port there (80 unless its admin says otherwise); fix --remote-port", EXIT_USAGE)),
]


@dataclass
class Options:
    host: str
    local: str = "127.0.0.1:5000"
    remote_port: int = 80
    port: int | None = None
    identity: str | None = None
    config: str | None = None
    ssh_options: list[str] = field(default_factory=list)
    check: bool = False

    @property
    def local_host(self) -> str:
        return self.local.rpartition(":")[0].strip("[]") or "127.0.0.1"

    @property
    def local_port(self) -> int:
        return int(self.local.rpartition(":")[2])

    def ssh_base(self) -> list[str]:
        """`ssh` with the user's choices (-p, -i, -F, -o) and the host."""
        command = [shutil.which("ssh") or "ssh"]
        if self.config:
            command += ["-F", self.config]
        if self.port:
            command += ["-p", str(self.port)]
        if self.identity:
            command += ["-i", self.identity]
        for option in self.ssh_options:
            command += ["-o", option]
        if not sys.stdin.isatty():
            command += ["-o", "BatchMode=yes"]  # nobody can answer a prompt: fail instead
        return command

    def tunnel_command(self) -> list[str]:
        forward = f"{self.local}:localhost:{self.remote_port}"
        return [*self.ssh_base(), "-N", "-o", "ExitOnForwardFailure=yes",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
                "-L", forward, "--", self.host]

    def whoami_command(self) -> list[str]:
        return [*self.ssh_base(), "-o", "ConnectTimeout=15", "--", self.host, "whoami",
                "--json"]

    def fatal(self, stderr: str) -> Fatal | None:
        """The failure no retry fixes that ssh's output shows, worded for this host."""
        known = f"[{self.host}]:{self.port}" if self.port and self.port != 22 else self.host
        for pattern, fatal in FATAL_PATTERNS:
            if pattern.search(stderr):
                return Fatal(fatal.message.format(host=self.host, ssh_host=self._ssh_host(),
                                                  known_host=known, local=self.local,
                                                  remote_port=self.remote_port),
                             fatal.status)
        return None

    def _ssh_host(self) -> str:
        return f"-p {self.port} {self.host}" if self.port else self.host


def port_taken(host: str, port: int) -> bool:
    """Whether something listens on host:port already."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def registry_answers(options: Options) -> bool:
    host = f"[{options.local_host}]" if ":" in options.local_host else options.local_host
    try:
        with urllib.request.urlopen(f"http://{host}:{options.local_port}/v2/",
                                    timeout=5) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def say(text: str) -> None:
    print(f"sshreg tunnel: {text}", file=sys.stderr, flush=True)


class Tunnel:
    """One `ssh -N -L` and what it printed."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.proc = subprocess.Popen(options.tunnel_command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, errors="replace")
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    @property
    def output(self) -> str:
        return "".join(self.stderr)

    def wait_ready(self, stop: threading.Event) -> bool:
        """True once the local port answers /v2/; False if ssh ended first (or timed out)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and not stop.is_set():
            if self.proc.poll() is not None:
                return False
            if self.options.fatal(self.output) is not None:
                return False  # e.g. the server refused to forward: waiting cannot help
            if registry_answers(self.options):
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)

    def last_words(self) -> str:
        """ssh's last line of output, for the one-line restart message."""
        lines = [line.strip() for line in self.stderr if line.strip()]
        return lines[-1] if lines else f"exit status {self.proc.returncode}"


def whoami(options: Options) -> tuple[int, str]:
    try:
        result = subprocess.run(options.whoami_command(), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return 1, "whoami did not answer within 30 s"
    return result.returncode, (result.stdout if result.returncode == 0 else result.stderr)


def describe(whoami_json: str) -> str:
    """`whoami --json` as one line: who, with which key, allowed what."""
    try:
        doc = json.loads(whoami_json)
        rights = [f"{action} {', '.join(doc[action])}" for action in ("pull", "push", "delete")
                  if doc.get(action)]
        if doc.get("admin"):
            rights.append("admin")
        who = doc.get("comment") or "(no comment)"
        return f"{who} ({doc['fingerprint']}): {'; '.join(rights) or 'no registry access'}"
    except (ValueError, KeyError, TypeError):
        return " ".join(whoami_json.split())


def run(options: Options, stop: threading.Event,
        sleep: Callable[[float], bool] | None = None) -> int:
    """Keep the tunnel up until `stop` is set (or once, with --check)."""
    wait = sleep or stop.wait
    if port_taken(options.local_host, options.local_port):
        say(PORT_TAKEN.message.format(local=options.local))
        return EXIT_PORT_TAKEN
    delay = FIRST_RETRY
    while not stop.is_set():
        tunnel = Tunnel(options)
        started = time.monotonic()
        try:
            ready = tunnel.wait_ready(stop)
            if stop.is_set():
                return 0
            if ready:
                status, text = whoami(options)
                if status != 0:
                    say(f"the tunnel is up but `whoami` failed: {text.strip()}")
                    if options.check:
                        return EXIT_FAILED
                else:
                    say(f"up: {options.local} -> {options.host} as {describe(text)}")
                    if options.check:
                        return 0
                while tunnel.proc.poll() is None and not stop.is_set():
                    stop.wait(0.5)
                if stop.is_set():
                    return 0
            else:
                tunnel.stop()
        finally:
            tunnel.stop()
        fatal = options.fatal(tunnel.output)
        if fatal is not None:
            say(fatal.message)
            return fatal.status
        if options.check:
            say(f"no tunnel: {tunnel.last_words()}")
            return EXIT_FAILED
        if time.monotonic() - started > STABLE:
            delay = FIRST_RETRY
        say(f"ssh ended ({tunnel.last_words()}); reconnecting in {delay:.0f}s")
        if wait(delay):
            return 0
        delay = min(MAX_RETRY, delay * 2)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("tunnel", help="keep a registry tunnel up (on your machine)")
    parser.add_argument("host", metavar="HOST", help="the registry's SSH host (or ssh_config alias)")
    parser.add_argument("-p", dest="port", type=int, metavar="SSH_PORT", help="its SSH port")
    parser.add_argument("--local", default="127.0.0.1:5000", metavar="ADDR:PORT",
                        help="where the registry appears here (default 127.0.0.1:5000)")
    parser.add_argument("--remote-port", type=int, default=80, metavar="PORT",
                        help="the registry's port on the server (default 80)")
    parser.add_argument("-i", dest="identity", metavar="KEY", help="the key to log in with")
    parser.add_argument("-F", dest="ssh_config", metavar="SSH_CONFIG", help="passed to ssh")
    parser.add_argument("-o", dest="ssh_options", action="append", default=[],
                        metavar="SSH_OPTION", help="passed to ssh; repeatable")
    parser.add_argument("--check", action="store_true",
                        help="one connection, one /v2/, one whoami; exit 0 if all worked")


def _setter(stop: threading.Event) -> Callable[..., None]:
    """A signal handler that sets `stop`. Handlers run in the main thread, which may be inside
    `stop.wait()` holding the event's (non-reentrant) lock: `stop.set()` there would wait for
    itself forever. Another thread sets it instead (an RLock guards thread start-up)."""
    return lambda *_: threading.Thread(target=stop.set, daemon=True).start()


def main(args: argparse.Namespace) -> int:
    try:
        local_port = int(args.local.rpartition(":")[2])
        if not 0 < local_port < 65536:
            raise ValueError
    except ValueError:
        say(f"--local {args.local!r}: expected ADDRESS:PORT")
        return EXIT_USAGE
    if shutil.which("ssh") is None:
        say("OpenSSH's ssh is not installed (on Windows: Settings > Optional features > "
            "OpenSSH Client)")
        return EXIT_USAGE
    options = Options(args.host, args.local, args.remote_port, args.port, args.identity,
                      args.ssh_config, args.ssh_options, args.check)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _setter(stop))
    with contextlib.suppress(KeyboardInterrupt):
        return run(options, stop)
    return 0

