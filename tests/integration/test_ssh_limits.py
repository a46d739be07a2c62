"""The SSH-side limits that keep one key or a few addresses from exhausting the gateway,
against a real `sshreg serve` with tight limits (and, for the grouping rules, as units).

- A burst of channel opens, sent without waiting for any answer (asyncssh as the attack
  tool), gets exactly `max_channels_per_connection` channels; the rest are a "resource
  shortage", and every place comes back, exactly once, when channels close or their
  connection drops mid-burst.
- Connections that never log in (sockets that send a version line and nothing more, from
  several loopback addresses) are capped by `max_pending` below `max_connections`; a user
  arriving from another address still logs in, taking the place of a waiting one.
- Each admission refusal reaches OpenSSH's `ssh` as a disconnect with its reason, after the
  version exchange (before the fix, `ssh` saw the disconnect message where it expected the
  server's version and said only "banner line contains invalid characters").
- Per-address limits count an IPv6 /64 as one address, and an IPv4-mapped IPv6 address as
  its IPv4 address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import asyncssh
import pytest

from sshreg.limits import Limits
from sshreg.ssh import linger
from sshreg.ssh.admission import PENDING_FULL, admit
from sshreg.ssh.limits import FailureTracker, address_group
from tests.support.sshreg_server import ClientKey, SshregServer, connect, wait_for

pytestmark = pytest.mark.integration

LIMITS = {
    "max_connections": 8,
    "max_connections_per_key": 8,
    "max_pending": 4,
    "max_pending_per_address": 3,
    "max_channels_per_connection": 8,
    "max_auth_failures_per_minute": 3,
}
BURST = 400  # channel opens sent at once on one connection
NAMES = ["alice", "bob", "stranger"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, ClientKey]:
    directory = tmp_path_factory.mktemp("limits-keys")
    return {name: ClientKey.generate(directory, name) for name in NAMES}


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys) -> Iterator[SshregServer]:
    srv = SshregServer(tmp_path_factory.mktemp("limits"), metrics=True,
                       config={"limits": LIMITS, "server": {"login_timeout": "60s"}})
    srv.authorize(keys["alice"].line(), keys["bob"].line())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def settled(server) -> Iterator[None]:
    """Each test starts and ends with no SSH connection and no channel open."""
    _wait_connections(server, 0)
    yield
    _wait_connections(server, 0)
    assert server.metric("sshreg_ssh_channels") == 0


def _wait_connections(server: SshregServer, count: int) -> None:
    wait_for(lambda: server.metric("sshreg_ssh_connections") == count, 20,
             f"{count} SSH connections open")


def _ssh(server: SshregServer, key: ClientKey, source: str) -> subprocess.CompletedProcess[str]:
    return server.ssh(key, "whoami", options=("-b", source))


@contextlib.contextmanager
def _waiting(server: SshregServer, *sources: str, each: int) -> Iterator[list[socket.socket]]:
    """`each` connections from every source address that send the client's version line
    and then nothing (held until login_timeout); closed on the way out. One at a time, as
    the server sees them: each has the server's version line (so its admission is decided)
    before the next one connects."""
    held: list[socket.socket] = []
    try:
        for source in sources:
            for _ in range(each):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                                source_address=(source, 0))
                held.append(sock)
                sock.sendall(b"SSH-2.0-never-logs-in\r\n")
                version = b""
                while len(version) < 8 and (chunk := sock.recv(8 - len(version))):
                    version += chunk
                assert version == b"SSH-2.0-"
        yield held
    finally:
        for sock in held:
            sock.close()


def _still_waiting(held: list[socket.socket], count: int) -> None:
    """Exactly `count` of `held` are still open on the server's side."""
    wait_for(lambda: sum(not _closed_by_server(sock) for sock in held) == count, 10,
             f"{count} connections left waiting")


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server ended this connection (everything it sent read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            try:
                if not sock.recv(65536):
                    return True
            except BlockingIOError:
                return False
            except OSError:
                return True
    finally:
        sock.setblocking(True)


# -- channels -------------------------------------------------------------------------------


async def _burst(conn: asyncssh.SSHClientConnection, count: int) -> tuple[list, list]:
    """`count` direct-tcpip opens sent at once: (opened reader/writer pairs, refusals)."""
    results = await asyncio.wait_for(asyncio.gather(
        *(conn.open_connection("localhost", 80) for _ in range(count)),
        return_exceptions=True), 60)
    opened = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, asyncssh.ChannelOpenError)]
    assert len(opened) + len(refused) == count, [r for r in results if isinstance(r, Exception)
                                                 and r not in refused][:3]
    return opened, refused


async def test_a_burst_of_channel_opens_gets_the_channel_limit_and_no_more(server, keys,
                                                                             settled):
    limit = LIMITS["max_channels_per_connection"]
    conn = await connect(server, keys["alice"])
    try:
        for _ in range(2):  # the second burst proves every place came back
            opened, refused = await _burst(conn, BURST)
            assert len(opened) == limit
            assert {e.code for e in refused} == {asyncssh.OPEN_RESOURCE_SHORTAGE}
            assert server.metric("sshreg_ssh_channels") == limit
            for reader, writer in opened:  # the channels it got are real tunnels
                writer.write(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
                writer.close()
            await asyncio.to_thread(wait_for, lambda: server.metric("sshreg_ssh_channels") == 0,
                                    10, "the channels to be given back")
        result = await conn.run("whoami", check=False, timeout=10)  # a session fits again
        assert result.exit_status == 0
    finally:
        conn.close()
        await conn.wait_closed()
    refusals = server.log().count(f"for key {keys['alice'].fingerprint} (alice@test) from "
                                  "127.0.0.1")
    assert refusals >= 2 * (BURST - limit)


async def test_channel_places_come_back_exactly_once_when_the_connection_drops_mid_burst(
        server, keys, settled):
    for _ in range(3):
        conn = await connect(server, keys["alice"])
        opens = [asyncio.ensure_future(conn.open_connection("localhost", 80))
                 for _ in range(BURST)]
        await asyncio.sleep(0)  # the opens are on their way; the connection goes at once
        conn.abort()
        await asyncio.gather(*opens, return_exceptions=True)
        await conn.wait_closed()
    _wait_connections(server, 0)
    await asyncio.sleep(1)  # a place given back twice would show as a negative gauge
    assert server.metric("sshreg_ssh_channels") == 0


# -- connections not logged in yet ---------------------------------------------------------


def test_connections_that_never_log_in_cannot_keep_a_user_out(server, keys, settled):
    attackers = ("127.0.0.21", "127.0.0.22", "127.0.0.23")
    per_address = LIMITS["max_pending_per_address"]
    with _waiting(server, *attackers, each=per_address) as held:
        assert len(held) > LIMITS["max_connections"]  # enough to fill every place before
        _still_waiting(held, LIMITS["max_pending"])
        result = _ssh(server, keys["alice"], "127.0.0.1")
        assert result.returncode == 0, result.stderr
        server.wait_for_log("its place given to a connection from 127.0.0.1")
        _still_waiting(held, LIMITS["max_pending"] - 1)


# -- refusals that OpenSSH can explain -------------------------------------------------------


def _refused_with(result: subprocess.CompletedProcess[str], reason: str) -> None:
    """`ssh` was disconnected and printed `reason` as the server's reason."""
    assert result.returncode == 255
    said = re.search(r"Received disconnect from 127\.0\.0\.1 port \d+:\d+: (.*)", result.stderr)
    assert said is not None and said[1].strip() == reason, result.stderr


async def test_too_many_connections_in_total_reaches_ssh_as_its_reason(server, keys, settled):
    conns = [await connect(server, keys["bob"]) for _ in range(LIMITS["max_connections"])]
    try:
        result = await asyncio.to_thread(_ssh, server, keys["alice"], "127.0.0.1")
        _refused_with(result, "too many connections")
    finally:
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()


def test_too_many_waiting_from_one_address_reaches_ssh_as_its_reason(server, keys, settled):
    with _waiting(server, "127.0.0.31", each=LIMITS["max_pending_per_address"]):
        _refused_with(_ssh(server, keys["alice"], "127.0.0.31"),
                      "too many connections from this address")


def test_a_full_pre_login_cap_reaches_ssh_as_its_reason(server, keys, settled):
    """The newcomer's address already has as many connections waiting as the busiest one,
    so it takes no one's place."""
    with _waiting(server, "127.0.0.41", "127.0.0.42", each=LIMITS["max_pending"] // 2):
        _refused_with(_ssh(server, keys["alice"], "127.0.0.41"), PENDING_FULL)


def test_a_blocked_address_reaches_ssh_as_its_reason(server, keys, settled):
    for _ in range(LIMITS["max_auth_failures_per_minute"]):
        assert _ssh(server, keys["stranger"], "127.0.0.51").returncode == 255
    _refused_with(_ssh(server, keys["alice"], "127.0.0.51"),
                  "too many failed logins from this address, try again later")


# -- address grouping (units) ----------------------------------------------------------------


def test_ipv6_addresses_group_by_their_64_and_mapped_ipv4_as_ipv4():
    assert address_group("2001:db8:1:2:aaaa::1") == address_group("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:3::1") != address_group("2001:db8:1:2::1")
    assert address_group("::ffff:192.0.2.7") == address_group("192.0.2.7") == "192.0.2.7"
    assert address_group("192.0.2.7") != address_group("192.0.2.8")
    assert address_group("fe80::1%eth0") == "fe80::/64"
    assert address_group("") == ""


def test_failed_logins_rotating_through_one_ipv6_64_block_it():
    tracker = FailureTracker(limit=3)
    for i in range(3):
        tracker.record(address_group(f"2001:db8:0:7::{os.urandom(2).hex()}:{i}"))
    assert tracker.blocked(address_group("2001:db8:0:7:1234::1"))
    assert not tracker.blocked(address_group("2001:db8:0:8::1"))


@dataclass
class Waiting:
    group: str
    opened: float
    pending: bool = True
    counted: bool = True


def test_admission_counts_an_ipv6_64_as_one_address():
    limits = Limits(max_connections=100, max_pending=50, max_pending_per_address=2)
    others = [Waiting(address_group(f"2001:db8::{i}"), i) for i in (1, 2)]
    refused = admit(limits, address_group("2001:db8::ffff:3"), False, others).refusal
    assert refused is not None and refused.reason == "too many connections from this address"
    assert admit(limits, address_group("2001:db8:0:1::3"), False, others) == admit(
        limits, "192.0.2.1", False, others)


def test_a_full_pre_login_cap_gives_the_busiest_address_s_oldest_place_away():
    limits = Limits(max_connections=100, max_pending=4, max_pending_per_address=4)
    others = [Waiting("a", 3), Waiting("a", 1), Waiting("a", 2), Waiting("b", 0),
              Waiting("c", 5, pending=False), Waiting("a", 0.5, counted=False)]
    decision = admit(limits, "d", False, others)
    assert decision.refusal is None and decision.evict is others[1]
    refused = admit(limits, "a", False, [*others[:3], Waiting("a", 4)]).refusal
    assert refused is not None and refused.reason == "too many connections from this address"
    even = [Waiting("a", 1), Waiting("a", 2), Waiting("b", 3), Waiting("b", 4)]
    assert admit(limits, "a", False, even).refusal.reason == PENDING_FULL
    assert admit(limits, "c", False, even).evict is even[0]


# -- closing a refused connection without a reset (units) ------------------------------------


class _Refuser(asyncio.Protocol):
    """Says why at once and closes as the gateway does, the client's bytes still unread."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"why")
        linger.close_after_reading(transport)


async def _refused_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"SSH-2.0-client\r\n")
    await writer.drain()
    return reader, writer


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 10)


async def _reset_by_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Reads the server's answer to its end, then sends more: whether that meets a reset
    (a socket closed outright answers it with one; a lingering socket reads it)."""
    try:
        assert await _read_all(reader) == b"why"
        writer.write(b"more from the client")
        await writer.drain()
        await asyncio.sleep(0.5)
        assert await _read_all(reader) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


async def test_refused_connections_linger_until_the_client_closes_and_only_so_many(monkeypatch):
    monkeypatch.setattr(linger, "MAX_LINGERING", 2)
    monkeypatch.setattr(linger, "LINGER_SECONDS", 30.0)
    server = await asyncio.get_running_loop().create_server(_Refuser, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = []
    try:
        clients = [await _refused_client(port) for _ in range(3)]
        assert [await _reset_by_server(*client) for client in clients] == [False, False, True]
        assert len(linger._lingering) == 2
        for _, writer in clients:
            writer.close()
        await asyncio.to_thread(wait_for, lambda: not linger._lingering, 10,
                                "the lingering sockets to close with their clients")
    finally:
        for _, writer in clients:
            writer.close()
        server.close()


async def test_a_client_that_never_closes_is_cut_off_after_the_linger_time(monkeypatch):
    monkeypatch.setattr(linger, "LINGER_SECONDS", 0.5)
    server = await asyncio.get_running_loop().create_server(_Refuser, "127.0.0.1", 0)
    try:
        reader, writer = await _refused_client(server.sockets[0].getsockname()[1])
        assert await _read_all(reader) == b"why"
        await asyncio.to_thread(wait_for, lambda: not linger._lingering, 10,
                                "the lingering socket to be aborted")
        writer.close()
    finally:
        server.close()
