"""The SSH gateway in front of the registry: listens (itself, or behind a balancer speaking
the PROXY protocol), owns the open connections (connection.py decides what each may do),
closes idle ones, and disconnects keys no longer authorized: a key whose line is removed
from authorized_keys, changes or expires, a key or certificate revoked in `revoked_keys`,
and a certificate past its valid-before lose their open connections within
`KEY_CHECK_INTERVAL` seconds, not only their next login.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

import asyncssh

from ..access import Identity
from ..keys.entries import KeyList
from ..keys.revoked_file import RevokedKeys
from ..metrics import Metrics
from .ciphers import default_ciphers
from .connection import GatewayConnection
from .exec_channel import CommandRunner, help_text
from .limits import FailureTracker
from .listeners import bind_listeners
from .proxy_protocol import Address, ProxyListener, trusted_networks
from .settings import GatewaySettings

log = logging.getLogger("sshreg.ssh")

KEY_CHECK_INTERVAL = 2.0  # seconds between checks of open connections against authorized_keys


class Gateway:
    """The SSH server in front of the registry."""

    def __init__(self, settings: GatewaySettings, keys: KeyList, host_key: asyncssh.SSHKey,
                 protocol_factory: Callable[[], asyncio.Protocol],
                 metrics: Metrics | None = None, commands: CommandRunner | None = None,
                 revoked: RevokedKeys | None = None) -> None:
        self.settings = settings
        self.keys = keys
        self.revoked = revoked or RevokedKeys()
        self.host_key = host_key
        self.protocol_factory = protocol_factory
        self.metrics = metrics or Metrics()
        self.commands = commands  # what `ssh reg.host CMD` runs; None: help only
        self.failures = FailureTracker(settings.limits.max_auth_failures_per_minute)
        self.connections: dict[asyncssh.SSHServerConnection, GatewayConnection] = {}
        self._servers: list[asyncssh.SSHAcceptor] = []
        self._proxy: ProxyListener | None = None
        self._proxied: dict[Address, Address] = {}  # balancer side -> client, while logging in
        self._reaper: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def ciphers(self) -> tuple[str, ...]:
        return self.settings.ciphers or default_ciphers()

    @property
    def cipher_offer(self) -> tuple[str, ...] | None:
        """The fast ciphers offered to clients that list one of them (others get the
        fallbacks too: cipher_offer.py); None when `[server] ciphers` fixes the list."""
        return None if self.settings.ciphers else default_ciphers()

    def render_help(self, identity: Identity, forwarding: bool) -> str:
        name = self.settings.public_name or socket.gethostname()
        target = name if self.settings.port == 22 else f"-p {self.settings.port} {name}"
        return help_text(identity, target, self.settings.registry_port, forwarding)

    def _server_options(self) -> dict[str, object]:
        return {
            "server_factory": lambda: GatewayConnection(self),
            "server_host_keys": [self.host_key],
            "encryption_algs": list(self.ciphers),
            "compression_algs": ["none"],
            "agent_forwarding": False,
            "x11_forwarding": False,
            "allow_scp": False,
            "sftp_factory": None,
            "login_timeout": self.settings.login_timeout,
            "keepalive_interval": self.settings.keepalive_interval,
            "keepalive_count_max": 4,
        }

    async def start(self, listeners: list[socket.socket] | None = None) -> None:
        """Serve on `listeners` (sockets bound by a supervisor and shared with other
        workers), or on sockets bound here for the configured address."""
        self.keys.reload_if_changed()
        if listeners is None:
            listeners = bind_listeners(self.settings.host, self.settings.port)
        if self.settings.proxy_protocol:
            self._proxy = ProxyListener(trusted_networks(self.settings.proxy_protocol),
                                        self.settings.login_timeout, self._serve_socket)
            self._proxy.start(listeners)
        else:
            options = self._server_options()
            self._servers = [await asyncssh.listen(sock=sock, **options) for sock in listeners]
        self._reaper = asyncio.create_task(self._close_idle_forever())
        self._watcher = asyncio.create_task(self._revoke_forever())

    async def _revoke_forever(self) -> None:
        """Revoking a key takes its open connections too, not only its next login: every few
        seconds, connections whose authorized_keys line is gone, changed or expired close."""
        while True:
            await asyncio.sleep(KEY_CHECK_INTERVAL)
            try:
                self.revoke_stale()
            except Exception:
                log.exception("checking open connections against authorized_keys failed")

    def revoke_stale(self) -> None:
        self.revoked.reload_if_changed()
        grants = {entry.grant for entry in self.keys.entries() if not entry.expired()}
        for state in list(self.connections.values()):
            why = state.still_authorized(grants)
            if why is not None:
                state.revoke(why)

    async def _close_idle_forever(self) -> None:
        timeout = self.settings.limits.idle_timeout
        while True:
            await asyncio.sleep(max(1.0, min(60.0, timeout / 4)))
            cutoff = time.monotonic() - timeout
            for conn, state in list(self.connections.items()):
                if state.channels == 0 and state.last_activity < cutoff:
                    log.info("closing idle connection from %(peer)s", {"peer": state.peer_text})
                    conn.close()

    def client_address(self, peer: Address) -> Address:
        """The client's address: from the PROXY header if `peer` is a balancer's
        connection that sent one."""
        return self._proxied.get(peer, peer)

    async def _serve_socket(self, sock: socket.socket, client: Address | None) -> None:
        """Runs SSH on a socket the PROXY listener accepted (`client`: from its header)."""
        peer = sock.getpeername()
        key = (str(peer[0]), int(peer[1]))
        if client is not None:
            self._proxied[key] = client
        try:
            await asyncssh.run_server(sock, **self._server_options())
        except (TimeoutError, asyncssh.Error, OSError):
            pass  # refused or failed logins: GatewayConnection has logged them
        finally:
            self._proxied.pop(key, None)

    @property
    def sockets(self) -> list[socket.socket]:
        if self._proxy is not None:
            return list(self._proxy.sockets)
        return [sock for server in self._servers for sock in server.sockets]

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()
        if self._proxy is not None:
            self._proxy.close()
        for task in (self._reaper, self._watcher):
            if task is not None:
                task.cancel()

    async def close(self) -> None:
        """Stop accepting and close every connection."""
        self.stop_accepting()
        for conn in list(self.connections):
            conn.close()
        for conn in list(self.connections):
            await conn.wait_closed()
        for server in self._servers:
            await server.wait_closed()
