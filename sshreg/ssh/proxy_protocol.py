"""The PROXY protocol, version 2, from trusted TCP load balancers (`[server] proxy_protocol`).

A balancer that terminates TCP makes every connection come from its own address, which
blinds the per-address limits and `from=`. When its addresses are listed, every connection
from one of them must begin with a PROXY v2 header (the binary format HAProxy sends with
`send-proxy-v2`, as do AWS Network Load Balancers), and the client address it names is the
one sshreg uses. Connections from other
addresses are served as they come: their address is their own, and a header they send is
never believed (it is just bad SSH). A listed address that sends no valid header within the
login timeout is closed. Version 1 (text) is not accepted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger("sshreg.ssh")

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_LENGTH = 4096  # addresses (36 bytes at most) plus TLVs; real balancers send far less
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The connection did not start with a usable PROXY v2 header."""


def parse(header: bytes, block: bytes) -> Address | None:
    """The client address in a v2 header (its 16 fixed bytes, then its address block);
    None when the header names none to use: a LOCAL connection (the balancer's own, such as
    a health check) or an address family other than TCP over IPv4/IPv6."""
    if len(header) != 16 or header[:12] != SIGNATURE:
        raise ProxyHeaderError("no PROXY protocol v2 header")
    version, command, family = header[12] >> 4, header[12] & 0x0F, header[13]
    if version != 2 or command not in (0, 1):
        raise ProxyHeaderError(f"unsupported PROXY header version {version} command {command}")
    if command == 0:
        return None
    if family == 0x11 and len(block) >= 12:
        return str(ipaddress.IPv4Address(block[0:4])), int.from_bytes(block[8:10], "big")
    if family == 0x21 and len(block) >= 36:
        return str(ipaddress.IPv6Address(block[0:16])), int.from_bytes(block[32:34], "big")
    if family in (0x11, 0x21):
        raise ProxyHeaderError("PROXY header too short for its addresses")
    return None


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise ProxyHeaderError("connection closed inside the PROXY header")
        data += chunk
    return data


async def read_source(sock: socket.socket) -> Address | None:
    """Reads exactly the PROXY v2 header from `sock` (nothing of the SSH stream after it)."""
    header = await _recv_exactly(sock, 16)
    if header[:12] != SIGNATURE:
        raise ProxyHeaderError("no PROXY protocol v2 header")
    length = int.from_bytes(header[14:16], "big")
    if length > MAX_LENGTH:
        raise ProxyHeaderError(f"PROXY header of {length} bytes")
    return parse(header, await _recv_exactly(sock, length))


def trusted_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """The balancers' addresses or networks (`10.0.0.5`, `10.1.0.0/16`, `fd00::/64`)."""
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


class ProxyListener:
    """Accepts TCP connections itself: reads the PROXY header of those from a trusted
    balancer, then hands every socket on to `serve(sock, client address or None)`."""

    def __init__(self, trusted: tuple[Network, ...], header_timeout: float,
                 serve: Callable[[socket.socket, Address | None], Awaitable[None]]) -> None:
        self._trusted = trusted
        self._header_timeout = header_timeout
        self._serve = serve
        self.sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._trusted)

    def start(self, sockets: list[socket.socket]) -> None:
        """Accept on `sockets` (bound by `listeners.bind_listeners`); `close` closes them."""
        for listener in sockets:
            self.sockets.append(listener)
            self._accepting.append(asyncio.ensure_future(self._accept_forever(listener)))

    async def _accept_forever(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as err:  # EMFILE and the like: the next accept may work
                log.warning("accepting a connection failed: %(error)s", {"error": str(err)})
                await asyncio.sleep(0.1)
                continue
            task = asyncio.ensure_future(self._handle(sock, str(peer[0]), int(peer[1])))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, sock: socket.socket, address: str, port: int) -> None:
        source = None
        if self._is_trusted(address):
            try:
                source = await asyncio.wait_for(read_source(sock), self._header_timeout)
            except (ProxyHeaderError, OSError, TimeoutError) as err:
                log.warning("closing connection from balancer %(peer)s: %(error)s",
                            {"peer": f"{address}:{port}",
                             "error": str(err) or "no PROXY header in time"})
                sock.close()
                return
        await self._serve(sock, source)

    def close(self) -> None:
        """Stop accepting; connections already accepted go on (as asyncssh's own listener
        does)."""
        for task in self._accepting:
            task.cancel()
        for listener in self.sockets:
            listener.close()
