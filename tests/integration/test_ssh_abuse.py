"""Abuse at the SSH layer, against a real `sshreg serve` with tight limits, with the real
OpenSSH client (and asyncssh's where OpenSSH cannot express the attack).

Every attempt is refused, logged with the key's fingerprint when there is a key, and leaves
other users alone: after each test a legitimate key pushes and pulls a blob through a
tunnel. Attackers connect from their own loopback addresses (127.0.0.11 and up), so that
the per-address blocks they earn never touch the legitimate user on 127.0.0.1.

Already covered by tests/integration/test_ssh_logins_and_tunnels.py and not repeated here:
unknown, expired and `from=` keys refused, password and keyboard-interactive refused by
OpenSSH, forwarding to a few other destinations, `-R`, `cat /etc/passwd` and sftp refused,
no-port-forwarding and restrict keys.
Decided here: a key removed from authorized_keys, whose line changes, or
whose `expiry-time` passes loses its open connections (tunnels included) within
`KEY_CHECK_INTERVAL` seconds, not only its next login.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncssh
import pytest

from sshreg.ssh.limits import FailureTracker
from sshreg.ssh.server import KEY_CHECK_INTERVAL
from tests.support.sshreg_server import ClientKey, S3Store, SshregServer, free_port, wait_for
from tests.support.sshreg_server import connect as _connect

pytestmark = pytest.mark.integration

LIMITS = {
    "max_connections": 12,
    "max_connections_per_key": 3,
    "max_auth_attempts": 3,
    "max_auth_failures_per_minute": 5,
    "max_channels_per_connection": 4,
    "max_pending_per_address": 4,
}
NAMES = ["alice", "bob", "mallory", "revoked", "changed", "expiring", "fromfive", "flood1",
         "flood2", "flood3", "flood4", "stranger", "stranger2", "stranger3", "stranger4",
         "dropped"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, ClientKey]:
    directory = tmp_path_factory.mktemp("abuse-keys")
    return {name: ClientKey.generate(directory, name) for name in NAMES}


def _lines(keys: dict[str, ClientKey], expiry: str = "20990101") -> list[str]:
    return [
        keys["alice"].line(),
        keys["bob"].line('sshreg-pull="bob/*",sshreg-push="bob/*"'),
        keys["mallory"].line('sshreg-pull="mallory/*",sshreg-push="mallory/*"'),
        keys["revoked"].line(),
        keys["changed"].line(),
        keys["expiring"].line(f'expiry-time="{expiry}"'),
        keys["fromfive"].line('from="127.0.0.5"'),
        *(keys[f"flood{i}"].line('sshreg-pull="**"') for i in range(1, 5)),
        keys["dropped"].line(),
    ]


@pytest.fixture(scope="module")
def s3_store(s3_server) -> S3Store:
    return S3Store.fresh(s3_server, "abuse")


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys, s3_store) -> Iterator[SshregServer]:
    """On S3 storage, so that the S3 endpoint is a real place the gateway itself can reach."""
    srv = SshregServer(tmp_path_factory.mktemp("abuse"), s3_store.url, env=s3_store.env,
                       config={"limits": LIMITS, "server": {"login_timeout": "10s"}})
    srv.authorize(*_lines(keys))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def legit(server, keys) -> Iterator[None]:
    """After the test: alice (on 127.0.0.1) still pushes and pulls, and the server lives."""
    yield
    assert server.proc is not None and server.proc.poll() is None, server.log()[-3000:]
    push_and_pull(server, keys["alice"])


def push_and_pull(server: SshregServer, key: ClientKey, name: str = "alice/app") -> None:
    data = os.urandom(5000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with server.tunnel(key) as tunnel:
        status, _ = _http(f"{tunnel.url}/v2/{name}/blobs/uploads/?digest={digest}", "POST", data)
        assert status == 201
        status, body = _http(f"{tunnel.url}/v2/{name}/blobs/{digest}")
        assert (status, body) == (200, data)


def _http(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _ssh(server: SshregServer, key: ClientKey, *args: str, source: str = "127.0.0.1",
         env: dict[str, str] | None = None, timeout: float = 30.0, stdin: str | None = None,
         ) -> subprocess.CompletedProcess[str]:
    command = server.ssh_command(key, "-b", source, *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def _fingerprint_logged(server: SshregServer, key: ClientKey, text: str) -> None:
    """Some line of the log has both the key's fingerprint and `text`."""
    wait_for(lambda: any(key.fingerprint in line and text in line
                         for line in server.log().splitlines()), 10,
             f"{text!r} logged with {key.fingerprint}")


# -- keys that should no longer work -------------------------------------------------------


def test_a_revoked_key_loses_its_open_tunnel_and_its_next_login(server, keys, legit):
    with server.tunnel(keys["revoked"]) as revoked, server.tunnel(keys["alice"]) as alice:
        assert _http(revoked.url + "/v2/")[0] == 200
        server.authorize(*[line for line in _lines(keys) if keys["revoked"].public not in line])
        wait_for(lambda: revoked.proc.poll() is not None, KEY_CHECK_INTERVAL + 10,
                 "the revoked key's ssh to be disconnected")
        _fingerprint_logged(server, keys["revoked"], "no longer authorized")
        assert not revoked.ready()
        assert alice.proc.poll() is None and alice.ready()  # an unchanged key keeps its tunnel
    result = _ssh(server, keys["revoked"], "user@127.0.0.1", "whoami")
    assert result.returncode == 255 and "Permission denied" in result.stderr
    _fingerprint_logged(server, keys["revoked"], "refused unknown key")
    server.authorize(*_lines(keys))


def test_a_malformed_line_in_the_same_edit_never_keeps_a_removed_key_in(server, keys, legit):
    """One edit removes a key and adds a line whose date does not exist: the bad line is
    skipped with its number and reason, everything else applies (before, the reload raised
    and the previous list, removed key included, was served from then on)."""
    with server.tunnel(keys["dropped"]) as dropped, server.tunnel(keys["alice"]) as alice:
        assert _http(dropped.url + "/v2/")[0] == 200
        kept = [line for line in _lines(keys) if keys["dropped"].public not in line]
        server.authorize(*kept, keys["stranger"].line('expiry-time="20260230"'))
        wait_for(lambda: dropped.proc.poll() is not None, KEY_CHECK_INTERVAL + 10,
                 "the removed key's ssh to be disconnected")
        _fingerprint_logged(server, keys["dropped"], "no longer authorized")
        server.wait_for_log(f"authorized_keys line {len(kept) + 1} ignored: invalid expiry-time "
                            "'20260230': day is out of range for month "
                            f"(key {keys['stranger'].fingerprint})")
        assert alice.proc.poll() is None and alice.ready()
    for name in ("dropped", "stranger"):  # nor is the malformed line half-honoured
        result = _ssh(server, keys[name], "user@127.0.0.1", "whoami")
        assert result.returncode == 255 and "Permission denied" in result.stderr
        _fingerprint_logged(server, keys[name], "refused unknown key")
    push_and_pull(server, keys["bob"], "bob/app")
    server.authorize(*_lines(keys))


def test_a_key_whose_rights_change_is_disconnected_and_logs_in_with_the_new_rights(
        server, keys, legit):
    with server.tunnel(keys["changed"]) as tunnel:
        narrowed = [keys["changed"].line('sshreg-pull="changed/*"') if keys["changed"].public in line
                    else line for line in _lines(keys)]
        server.authorize(*narrowed)
        wait_for(lambda: tunnel.proc.poll() is not None, KEY_CHECK_INTERVAL + 10,
                 "the changed key's ssh to be disconnected")
    me = json.loads(_ssh(server, keys["changed"], "user@127.0.0.1", "whoami", "--json").stdout)
    assert me["pull"] == ["changed/*"] and me["push"] == []
    server.authorize(*_lines(keys))


def test_a_key_that_expires_while_connected_is_disconnected(server, keys, legit):
    moment = datetime.now(UTC) + timedelta(seconds=4)
    server.authorize(*_lines(keys, expiry=moment.strftime("%Y%m%d%H%M%SZ")))
    try:
        with server.tunnel(keys["expiring"]) as tunnel:
            assert _http(tunnel.url + "/v2/")[0] == 200
            wait_for(lambda: tunnel.proc.poll() is not None, 4 + KEY_CHECK_INTERVAL + 10,
                     "the expired key's ssh to be disconnected")
        _fingerprint_logged(server, keys["expiring"], "no longer authorized")
        result = _ssh(server, keys["expiring"], "user@127.0.0.1", "whoami")
        assert result.returncode == 255
        _fingerprint_logged(server, keys["expiring"], "expired")
    finally:
        server.authorize(*_lines(keys))


def test_from_option_admits_the_named_address_only(server, keys, legit):
    assert _ssh(server, keys["fromfive"], "user@127.0.0.1", "whoami",
                source="127.0.0.5").returncode == 0
    refused = _ssh(server, keys["fromfive"], "user@127.0.0.1", "whoami", source="127.0.0.6")
    assert refused.returncode == 255
    _fingerprint_logged(server, keys["fromfive"], "not allowed from 127.0.0.6")


async def test_password_keyboard_interactive_and_none_are_refused_even_when_forced(
        server, keys, legit):
    """asyncssh's client sends these methods although the server offers only publickey."""
    for options in ({"password": "hunter2", "preferred_auth": "password"},
                    {"kbdint_auth": True, "preferred_auth": "keyboard-interactive",
                     "password": "hunter2"},
                    {"preferred_auth": "none"}):
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncio.wait_for(asyncssh.connect(
                "127.0.0.1", server.port, username="root", known_hosts=None, agent_path=None,
                client_keys=None, local_addr=("127.0.0.20", 0), **options), 15)


# -- forwarding anywhere but the registry ------------------------------------------------------


class Canary:
    """A TCP listener that records whether anything ever reached it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_local_forwarding_to_every_other_destination_is_refused(server, keys, s3_store,
                                                                tmp_path, legit):
    canary = Canary()
    s3_host_port = s3_store.s3.endpoint_url.split("//", 1)[1].rstrip("/")
    targets = [
        f"127.0.0.1:{canary.port}", f"localhost:{canary.port}", f"127.0.0.1:{server.port}",
        s3_host_port, "10.0.0.1:80", "10.255.255.254:443", "192.168.1.1:80", "192.168.0.1:22",
        "169.254.169.254:80", "[::1]:22", f"[::1]:{canary.port}", "127.0.0.2:80", "0.0.0.0:80",
        "localhost:81", "localhost.localdomain:80", "[::ffff:127.0.0.1]:80", "example.com:80",
    ]
    unix_targets = ["/var/run/docker.sock", str(tmp_path / "any.sock"), "/run/systemd/private"]
    forwards: list[str] = []
    local_ports = {}
    for target in targets:
        local_ports[target] = free_port()
        forwards += ["-L", f"127.0.0.1:{local_ports[target]}:{target}"]
    for path in unix_targets:
        local_ports[path] = free_port()
        forwards += ["-L", f"127.0.0.1:{local_ports[path]}:{path}"]
    local_socket = tmp_path / "local.sock"
    forwards += ["-L", f"{local_socket}:/var/run/docker.sock"]
    proc = subprocess.Popen(
        server.ssh_command(keys["mallory"], "-N", "-o", "ExitOnForwardFailure=no", *forwards,
                           "user@127.0.0.1", log_level="INFO"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: local_socket.exists(), 20, "the forwards to listen")
        for target, port in local_ports.items():
            assert _answer_through(("127.0.0.1", port)) == b"", target
        assert _answer_through(str(local_socket)) == b""
        for target in targets:
            _fingerprint_logged(server, keys["mallory"], f"refused forwarding to {target.strip('[]')}"
                                if not target.startswith("[") else "refused forwarding to ")
        for path in [*unix_targets, "/var/run/docker.sock"]:
            _fingerprint_logged(server, keys["mallory"], f"forwarding to unix socket {path}")
        assert canary.hits == 0
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
        canary.close()
    log = server.log()
    for target in targets:
        host, _, port = target.rpartition(":")
        assert f"refused forwarding to {host.strip('[]')}:{port} for key {keys['mallory'].fingerprint}" \
            in log, target


def _answer_through(address: tuple[str, int] | str) -> bytes:
    """What comes back for an HTTP request through a local forward (b"" when refused)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
        return data


def test_remote_forwarding_of_a_unix_socket_is_refused(server, keys, tmp_path, legit):
    result = _ssh(server, keys["mallory"], "-N", "-R", f"{tmp_path / 'r.sock'}:127.0.0.1:22",
                  "user@127.0.0.1")
    assert result.returncode == 255
    assert "forwarding failed" in result.stderr.lower()
    _fingerprint_logged(server, keys["mallory"], "refused remote forwarding of unix socket")


def test_agent_and_x11_forwarding_are_refused_and_logged(server, keys, tmp_path, legit):
    agent_socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_socket)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(agent_socket.exists, 10, "ssh-agent to listen")
        env = {"SSH_AUTH_SOCK": str(agent_socket)}
        subprocess.run(["ssh-add", str(keys["mallory"].path)], env={**os.environ, **env},
                       check=True, capture_output=True, timeout=10)
        result = _ssh(server, keys["mallory"], "-A", "user@127.0.0.1", "whoami", env=env)
        assert result.returncode == 0, result.stderr
        _fingerprint_logged(server, keys["mallory"], "refused agent forwarding")
    finally:
        agent.terminate()
        agent.wait(10)
    result = _ssh(server, keys["mallory"], "-X", "-o", "XAuthLocation=/nonexistent",
                  "user@127.0.0.1", "whoami",  # no xauth needed: ssh then sends fake data
                  env={"DISPLAY": "127.0.0.1:99", "XAUTHORITY": str(tmp_path / "xauth")})
    assert result.returncode == 0
    assert "X11 forwarding request failed" in result.stderr
    _fingerprint_logged(server, keys["mallory"], "refused X11 forwarding")


def test_a_shell_is_only_the_help_text_whatever_is_typed(server, keys, legit):
    result = _ssh(server, keys["mallory"], "-tt", "user@127.0.0.1",
                  stdin="id\ncat /etc/passwd\nexit\n")
    assert "sshreg: a container registry" in result.stdout
    assert "root:" not in result.stdout and "uid=" not in result.stdout
    _fingerprint_logged(server, keys["mallory"], "shell")


def test_commands_are_never_given_to_a_shell(server, keys, tmp_path, legit):
    marker = tmp_path / "pwned"
    for command in (f"touch {marker}", f"whoami; touch {marker}", f"whoami && touch {marker}",
                    f"tags $(touch {marker})", f"tags `touch {marker}`", f"du | touch {marker}",
                    f"repos > {marker}", "sh -c id", "bash", "python3 -c 'print(1)'",
                    "/bin/sh", "exec id", "env", "rm -rf /"):
        result = _ssh(server, keys["mallory"], "user@127.0.0.1", command)
        assert result.returncode != 0, command
        assert "uid=" not in result.stdout and "Traceback" not in result.stderr, command
    assert not marker.exists()
    _fingerprint_logged(server, keys["mallory"], "refused command 'sh -c id'")


def test_scp_in_both_protocols_is_refused_and_writes_nothing(server, keys, tmp_path, legit):
    source = tmp_path / "upload.txt"
    source.write_text("not for the server")
    target = tmp_path / "landed.txt"
    common = ["-P", str(server.port), "-i", str(keys["mallory"].path), "-o", "IdentitiesOnly=yes",
              "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
              "-o", "BatchMode=yes", "-o", "BindAddress=127.0.0.1"]
    for mode in ([], ["-O"]):  # SFTP (OpenSSH 9's default), then the legacy scp protocol
        up = subprocess.run(["scp", *mode, *common, str(source), f"user@127.0.0.1:{target}"],
                            capture_output=True, text=True, timeout=30)
        assert up.returncode != 0 and not target.exists(), mode
        down = subprocess.run(["scp", *mode, *common, "user@127.0.0.1:/etc/passwd",
                               str(tmp_path / "passwd")], capture_output=True, text=True,
                              timeout=30)
        assert down.returncode != 0 and not (tmp_path / "passwd").exists(), mode
    _fingerprint_logged(server, keys["mallory"], "refused subsystem 'sftp'")
    _fingerprint_logged(server, keys["mallory"], "refused command 'scp -t")


# -- floods ---------------------------------------------------------------------------------


async def test_channel_flood_on_one_connection_is_a_resource_shortage(server, keys, legit):
    limit = LIMITS["max_channels_per_connection"]
    conn = await _connect(server, keys["mallory"])
    held = []
    try:
        for _ in range(limit):  # held open: tunnelled HTTP connections
            held.append(await conn.open_connection("localhost", 80))
        for _ in range(3):
            with pytest.raises(asyncssh.ChannelOpenError) as refused:
                await conn.open_connection("localhost", 80)
            assert refused.value.code == asyncssh.OPEN_RESOURCE_SHORTAGE
        # Session channels (management commands) count too: they cannot get around it.
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await conn.run("whoami", check=False, timeout=10)
        assert refused.value.code == asyncssh.OPEN_RESOURCE_SHORTAGE
        # The held channels still work, and closing one frees a place.
        reader, writer = held.pop()
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
        await asyncio.sleep(0.5)
        result = await conn.run("whoami", check=False, timeout=10)
        assert result.exit_status == 0
    finally:
        for _, writer in held:
            writer.close()
        conn.close()
        await conn.wait_closed()
    _fingerprint_logged(server, keys["mallory"], "too many channels")


def test_many_failed_logins_block_the_address_for_a_minute(server, keys, legit):
    attacker = "127.0.0.11"
    strangers = [keys[n] for n in ("stranger", "stranger2", "stranger3", "stranger4")]
    for i in range(LIMITS["max_auth_failures_per_minute"]):
        result = _ssh(server, strangers[i % len(strangers)], "user@127.0.0.1", "whoami",
                      source=attacker)
        assert result.returncode == 255
    # Now even a valid key is turned away from that address, before authentication...
    blocked = _ssh(server, keys["mallory"], "user@127.0.0.1", "whoami", source=attacker)
    assert blocked.returncode == 255
    server.wait_for_log(f"disconnecting {attacker}:")
    assert "address blocked after repeated failed logins" in server.log()
    # ...while the same key from another address is not.
    assert _ssh(server, keys["mallory"], "user@127.0.0.1", "whoami",
                source="127.0.0.12").returncode == 0


async def test_a_blocked_address_is_cut_off_on_connections_it_opened_before(server, keys,
                                                                           legit):
    """The connection is opened first and offers its (valid) key only once the address has
    earned its block on other connections."""
    attacker = "127.0.0.17"
    release = asyncio.Event()
    valid = asyncssh.read_private_key(str(keys["mallory"].path))

    class Patient(asyncssh.SSHClient):
        offered = False

        async def public_key_auth_requested(self) -> asyncssh.SSHKey | None:
            await release.wait()
            key, self.offered = (None if self.offered else valid), True
            return key

    async def patient() -> asyncssh.SSHClientConnection:
        conn, _ = await asyncssh.create_connection(
            Patient, "127.0.0.1", server.port, username="user", known_hosts=None,
            agent_path=None, client_keys=None, local_addr=(attacker, 0))
        return conn

    waiting = asyncio.create_task(patient())
    await asyncio.sleep(1)
    for i in range(LIMITS["max_auth_failures_per_minute"]):
        stranger = keys[("stranger", "stranger2", "stranger3", "stranger4")[i % 4]]
        result = await asyncio.to_thread(_ssh, server, stranger, "user@127.0.0.1", "whoami",
                                         source=attacker)
        assert result.returncode == 255
    release.set()
    with pytest.raises((asyncssh.Error, OSError)):
        conn = await asyncio.wait_for(waiting, 15)
        await conn.run("whoami", check=True, timeout=10)
    server.wait_for_log(f"disconnecting {attacker}:")


async def test_password_floods_count_as_failed_logins(server, keys, legit):
    attacker = "127.0.0.13"
    for _ in range(LIMITS["max_auth_failures_per_minute"]):
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncio.wait_for(asyncssh.connect(
                "127.0.0.1", server.port, username="root", password="guess", known_hosts=None,
                agent_path=None, client_keys=None, preferred_auth="password",
                local_addr=(attacker, 0)), 15)
    await asyncio.sleep(0.5)
    with pytest.raises((asyncssh.Error, OSError)):
        conn = await _connect(server, keys["mallory"], source=attacker)
        conn.close()
    server.wait_for_log(f"disconnecting {attacker}:")


def test_many_keys_on_one_connection_end_it(server, keys, legit):
    strangers = [keys[n] for n in ("stranger", "stranger2", "stranger3", "stranger4")]
    command = server.ssh_command(strangers[0], "-b", "127.0.0.14")
    for key in strangers[1:]:
        command[command.index("-i") + 1:command.index("-i") + 1] = [str(key.path), "-i"]
    command.append("user@127.0.0.1")
    command.append("whoami")
    result = subprocess.run(command, capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 255
    server.wait_for_log("too many keys offered")


async def test_too_many_connections_of_one_key_are_refused_and_others_are_not(
        server, keys, legit):
    per_key = LIMITS["max_connections_per_key"]
    conns = [await _connect(server, keys["flood1"]) for _ in range(per_key)]
    try:
        with pytest.raises((asyncssh.Error, OSError)):
            extra = await _connect(server, keys["flood1"])
            await extra.run("whoami", check=True, timeout=10)
        _fingerprint_logged(server, keys["flood1"], "connections of key")
        push_and_pull(server, keys["alice"])  # during the flood
    finally:
        for conn in conns:
            conn.close()


async def test_connection_flood_up_to_the_total_limit_spares_no_one_but_ends_cleanly(
        server, keys, legit):
    total = LIMITS["max_connections"]
    conns = []
    try:
        for i in range(total):
            conns.append(await _connect(server, keys[f"flood{i % 4 + 1}"]))
        with pytest.raises((asyncssh.Error, OSError)):
            extra = await _connect(server, keys["bob"])
            await extra.run("whoami", check=True, timeout=10)
        server.wait_for_log(f"{total} connections open")
    finally:
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()


def test_unauthenticated_connections_from_one_address_cannot_fill_the_server(server, keys,
                                                                              legit):
    """Sockets that connect and never log in (held until login_timeout): one address may hold
    only `max_pending_per_address` of them, so the total limit stays out of its reach."""
    attacker = "127.0.0.15"
    held = []
    try:
        for _ in range(LIMITS["max_connections"] + 2):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                            source_address=(attacker, 0))
            sock.sendall(b"SSH-2.0-flood\r\n")
            held.append(sock)
        server.wait_for_log(f"disconnecting {attacker}:")
        push_and_pull(server, keys["alice"])  # during the flood
        result = _ssh(server, keys["bob"], "user@127.0.0.1", "whoami", source="127.0.0.16")
        assert result.returncode == 0, result.stderr
    finally:
        for sock in held:
            sock.close()


def test_failure_tracker_forgets_addresses_it_no_longer_needs():
    """An attacker rotating source addresses (an IPv6 /64 has plenty) must not grow memory."""
    tracker = FailureTracker(limit=3)
    tracker.WINDOW = 0.2  # type: ignore[misc]
    for i in range(5000):
        tracker.record(f"2001:db8::{i:x}")
    assert not tracker.blocked("2001:db8::1")
    time.sleep(0.3)
    tracker.record("192.0.2.1")
    assert len(tracker._failures) <= 1
