"""The PROXY protocol v2 from a trusted TCP load balancer (`[server] proxy_protocol`).

A real `sshreg serve` trusts 127.0.0.99 as its balancer. The test's balancer listens on its
own port, connects to sshreg from 127.0.0.99 and starts each connection with a v2 header
naming the client (real OpenSSH clients bound to 127.0.0.x with `-b`). Through it, `from=`
and the per-address limits see each client's own address; the balancer's address without a
header is closed; a header from an address not listed is never believed. The header parser
is also tested on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from sshreg.ssh.proxy_protocol import ProxyHeaderError, parse
from tests.support.sshreg_server import ClientKey, SshregServer, free_port, wait_for

pytestmark = pytest.mark.integration

BALANCER = "127.0.0.99"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # written out here, from the specification


def v2_header(client: tuple[str, int], server: tuple[str, int], command: int = 1) -> bytes:
    """A PROXY v2 header for TCP over IPv4 (command 1: PROXY, 0: LOCAL)."""
    block = (socket.inet_aton(client[0]) + socket.inet_aton(server[0])
             + client[1].to_bytes(2, "big") + server[1].to_bytes(2, "big"))
    return V2_SIGNATURE + bytes([0x20 | command, 0x11]) + len(block).to_bytes(2, "big") + block


class Balancer:
    """A TCP load balancer that sends the PROXY v2 header, in an event loop of its own
    thread: connects to the upstream from `BALANCER` and relays both ways."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="balancer")
        self._server: asyncio.Server | None = None

    def start(self) -> Balancer:
        self._thread.start()
        future: Future[asyncio.Server] = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self._loop)
        self._server = future.result(10)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.upstream_port, local_addr=(BALANCER, 0))
        up_writer.write(v2_header((client[0], client[1]), ("127.0.0.1", self.port)))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, ClientKey]:
    directory = tmp_path_factory.mktemp("proxy-keys")
    return {name: ClientKey.generate(directory, name) for name in ("alice", "five", "stranger")}


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys) -> Iterator[SshregServer]:
    srv = SshregServer(tmp_path_factory.mktemp("proxy"), config={
        "server": {"proxy_protocol": [BALANCER], "login_timeout": "5s"},
        "limits": {"max_auth_failures_per_minute": 3}})
    srv.authorize(keys["alice"].line(), keys["five"].line('from="127.0.0.5"'))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def balancer(server) -> Iterator[Balancer]:
    lb = Balancer(server.port).start()
    yield lb
    lb.stop()


def _whoami(server: SshregServer, key: ClientKey, source: str,
            port: int) -> subprocess.CompletedProcess[str]:
    command = server.ssh_command(key, "-b", source, "user@127.0.0.1", "whoami")
    command[command.index("-p") + 1] = str(port)
    return subprocess.run(command, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def _seen_from(result: subprocess.CompletedProcess[str]) -> str:
    """The address `whoami` says the login came from."""
    assert result.returncode == 0, result.stderr
    found = re.search(r"^from\s+(\S+)$", result.stdout, re.MULTILINE)
    assert found is not None, result.stdout
    return found[1]


def _everything_from(sock: socket.socket) -> bytes:
    """What the server sends until it closes (or resets) the connection."""
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_a_client_behind_the_balancer_is_seen_with_its_own_address(server, keys, balancer):
    assert _seen_from(_whoami(server, keys["alice"], "127.0.0.3", balancer.port)) == \
        "127.0.0.3"
    assert _seen_from(_whoami(server, keys["five"], "127.0.0.5", balancer.port)) == \
        "127.0.0.5"
    refused = _whoami(server, keys["five"], "127.0.0.6", balancer.port)
    assert refused.returncode == 255
    server.wait_for_log("not allowed from 127.0.0.6 (from= option)")


def test_failed_logins_behind_the_balancer_block_only_their_client(server, keys, balancer):
    for _ in range(3):
        assert _whoami(server, keys["stranger"], "127.0.0.7", balancer.port).returncode == 255
    blocked = _whoami(server, keys["alice"], "127.0.0.7", balancer.port)
    assert blocked.returncode == 255
    assert "too many failed logins from this address" in blocked.stderr
    assert _seen_from(_whoami(server, keys["alice"], "127.0.0.8", balancer.port)) == \
        "127.0.0.8"


def test_the_balancer_without_a_header_is_closed_and_direct_clients_are_served(server, keys):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                  source_address=(BALANCER, 0)) as sock:
        sock.sendall(b"SSH-2.0-no-header\r\n")
        assert _everything_from(sock) == b""  # closed without a word of SSH
    server.wait_for_log(f"closing connection from balancer {BALANCER}:")
    assert _seen_from(_whoami(server, keys["alice"], "127.0.0.4", server.port)) == "127.0.0.4"


def test_a_header_from_an_address_not_listed_is_not_believed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                  source_address=("127.0.0.50", 0)) as sock:
        sock.sendall(v2_header(("10.9.8.7", 1234), ("127.0.0.1", server.port))
                     + b"SSH-2.0-forged\r\n")
        answer = _everything_from(sock)
    assert answer.startswith(b"SSH-2.0-")  # the header was taken for (bad) SSH
    wait_for(lambda: "127.0.0.50:" in server.log(), 10, "the connection in the log")
    assert "10.9.8.7" not in server.log()


# -- the header parser (units) ------------------------------------------------------------------


def _split(header: bytes) -> tuple[bytes, bytes]:
    return header[:16], header[16:]


def test_v2_headers_name_the_client_for_ipv4_and_ipv6_and_none_for_local():
    assert parse(*_split(v2_header(("192.0.2.7", 50123), ("198.51.100.1", 22)))) == \
        ("192.0.2.7", 50123)
    block = (socket.inet_pton(socket.AF_INET6, "2001:db8::7") + bytes(16)
             + (443).to_bytes(2, "big") + (22).to_bytes(2, "big"))
    ipv6 = V2_SIGNATURE + b"\x21\x21" + len(block).to_bytes(2, "big") + block
    assert parse(*_split(ipv6)) == ("2001:db8::7", 443)
    assert parse(*_split(v2_header(("192.0.2.7", 1), ("198.51.100.1", 22), command=0))) is None
    assert parse(V2_SIGNATURE + b"\x21\x00\x00\x00", b"") is None  # UNSPEC: the real peer


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.7 198.51.100.1 50123 22\r\n".ljust(16, b"x"),  # version 1
    V2_SIGNATURE + b"\x11\x11\x00\x0c",  # version 1 in the binary layout
    V2_SIGNATURE + b"\x22\x11\x00\x0c",  # an unknown command
])
def test_anything_but_a_v2_proxy_or_local_header_is_refused(header):
    with pytest.raises(ProxyHeaderError):
        parse(header[:16], bytes(12))


def test_a_header_too_short_for_its_addresses_is_refused():
    header, block = _split(v2_header(("192.0.2.7", 1), ("198.51.100.1", 22)))
    with pytest.raises(ProxyHeaderError):
        parse(header, block[:8])
