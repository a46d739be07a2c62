"""One SSH connection: its login, and the policy for every channel it opens.

Every use of SSH other than these is refused and logged:
- public-key authentication against authorized_keys (no password, keyboard-interactive,
  host-based or GSS);
- `direct-tcpip` to the registry's own names (`localhost`, `127.0.0.1`, `::1`, the
  configured port), served in-process by the registry;
- a session channel, which prints help (and later runs management commands).
Remote forwarding, forwarding anywhere else, agent and X11 forwarding, sftp and other
subsystems are refused: otherwise the gateway is an open proxy into the box's network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

import asyncssh

from ..access import Identity
from ..keys.entries import KeyEntry, KeyList
from ..keys.revoked_file import RevokedKeys
from ..metrics import Metrics
from .admission import PENDING_FULL, Refusal, admit
from .bridge import HttpChannelSession
from .certificates import CertificateLogin, certificate_login, is_certificate
from .cipher_offer import offer_after_client
from .cork import CorkedTransport, cork
from .exec_channel import CommandRunner, CommandSession, SessionChannel
from .flow import FlowControlledTCPChannel, create_channel
from .forwarding import forward_refusal
from .limits import FailureTracker, address_group
from .proxy_protocol import Address
from .settings import GatewaySettings
from .slots import ChannelSlots, SlotChannel

log = logging.getLogger("sshreg.ssh")


class GatewayParts(Protocol):
    """What a connection uses of its `Gateway` (server.py), which owns every connection."""

    settings: GatewaySettings
    keys: KeyList
    revoked: RevokedKeys
    cipher_offer: tuple[str, ...] | None
    metrics: Metrics
    failures: FailureTracker
    connections: dict[asyncssh.SSHServerConnection, GatewayConnection]
    protocol_factory: Callable[[], asyncio.Protocol]
    commands: CommandRunner | None

    def client_address(self, peer: Address) -> Address: ...

    def render_help(self, identity: Identity, forwarding: bool) -> str: ...


class TunnelChannel(SlotChannel, FlowControlledTCPChannel):
    """A forwarded channel to the registry, holding one of its connection's channel slots."""


class GatewayConnection(asyncssh.SSHServer):
    """One SSH connection: authenticates it, then decides what each channel may do."""

    def __init__(self, gateway: GatewayParts) -> None:
        self._gateway = gateway
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = ("", 0)
        self._entry: KeyEntry | None = None  # the authorized_keys line it logged in with
        self._certificate: CertificateLogin | None = None  # ... through this certificate
        self._keys_offered: set[bytes] = set()
        # plain keys refused as unknown: ssh offers a key before its certificate beside it
        self._unknown_keys: dict[bytes, tuple[str, str]] = {}  # blob -> (fingerprint, user)
        self._auth_begun = False
        self._revoked = False
        self._closing = False  # disconnected by us, on its way out
        self.identity: Identity | None = None
        self.group = ""  # the source address as the per-address limits count it
        self.opened = time.monotonic()
        self.slots = ChannelSlots(gateway.settings.limits.max_channels_per_connection,
                                  lambda change: gateway.metrics.add("sshreg_ssh_channels",
                                                                     change))
        self.last_activity = time.monotonic()

    @property
    def channels(self) -> int:
        """Channels open or being opened."""
        return self.slots.in_use

    @property
    def counted(self) -> bool:
        return not self._closing

    @property
    def pending(self) -> bool:
        return self.identity is None and not self._closing

    # -- connection and authentication -------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        # asyncssh checks certificates against the SSH login name, which means nothing
        # here, and refuses them silently: the rules of certificates.py decide instead.
        conn._validate_client_certificate = self._validate_certificate  # type: ignore[method-assign]
        if self._gateway.cipher_offer is not None:
            offer_after_client(conn, self._gateway.cipher_offer)
        cork(conn)
        peer = conn.get_extra_info("peername") or ("", 0)
        self._peer = self._gateway.client_address((str(peer[0]), int(peer[1])))
        self.group = address_group(self._peer[0])
        gateway = self._gateway
        decision = admit(gateway.settings.limits, self.group,
                         gateway.failures.blocked(self.group), gateway.connections.values())
        if decision.refusal is not None:
            self._refuse_connection(decision.refusal)
        elif isinstance(decision.evict, GatewayConnection):
            decision.evict._disconnect(
                asyncssh.DISC_TOO_MANY_CONNECTIONS, PENDING_FULL,
                f"not logged in yet, its place given to a connection from {self._peer[0]} "
                "(the cap on connections waiting to log in is full)")
        gateway.connections[conn] = self
        gateway.metrics.set("sshreg_ssh_connections", len(gateway.connections))

    def _refuse_connection(self, refusal: Refusal) -> None:
        """Refused from `connection_made`: the disconnect goes out once asyncssh has sent
        its version line (right after this method returns), so that the client reads the
        version it expects first and then the reason. Sent before, the disconnect message
        is where OpenSSH expects the version, and all it says is "banner line contains
        invalid characters". (And the socket lingers, see `_send_disconnect`.)"""
        self._closing = True
        self._log_disconnect(refusal.why)
        asyncio.get_running_loop().call_soon(self._send_disconnect, refusal.code,
                                             refusal.reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gateway.connections.pop(self._conn, None)
        self._gateway.metrics.set("sshreg_ssh_connections", len(self._gateway.connections))
        self._settle_unknown_keys(None)
        if self.identity is None:
            log.info("connection from %(peer)s closed before authentication",
                     {"peer": self.peer_text})
            if self._auth_begun and not self._keys_offered:  # password, keyboard-interactive
                self._gateway.failures.record(self.group)
                self._gateway.metrics.inc("sshreg_ssh_auth_failures_total")

    def _disconnect(self, code: int, reason: str, why: str) -> None:
        self._closing = True
        self._log_disconnect(why)
        self._send_disconnect(code, reason)

    def _log_disconnect(self, why: str) -> None:
        who = self.identity.fingerprint if self.identity else "-"
        log.warning("disconnecting %(peer)s (key %(fingerprint)s): %(reason)s",
                    {"peer": self.peer_text, "fingerprint": who, "reason": why})
        self._gateway.metrics.inc("sshreg_ssh_refusals_total", kind="connection")

    def _send_disconnect(self, code: int, reason: str) -> None:
        """asyncssh's disconnect, closing the socket without a reset so that the client
        gets to read the reason (see linger.py)."""
        assert self._conn is not None
        transport = self._conn._transport
        if isinstance(transport, CorkedTransport):
            transport.linger = True
        self._conn.disconnect(code, reason)

    @property
    def peer_text(self) -> str:
        return f"{self._peer[0]}:{self._peer[1]}"

    def begin_auth(self, username: str) -> bool:
        self._auth_begun = True
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if not self._may_try(key.public_data):
            return False
        accepted = self._check_key(username, key, key.get_fingerprint("sha256"))
        if not accepted:
            self._failed(counted=key.public_data not in self._unknown_keys)
        return accepted

    def _may_try(self, key_data: bytes) -> bool:
        """Whether another key may be tried on this connection (the limits of failures)."""
        self._keys_offered.add(key_data)
        if self._gateway.failures.blocked(self.group):  # earned on other connections
            self._disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                             "too many failed logins from this address, try again later",
                             "address blocked after repeated failed logins")
            return False
        if len(self._keys_offered) > self._gateway.settings.limits.max_auth_attempts:
            self._disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                             "too many authentication attempts", "too many keys offered")
            return False
        return True

    def _failed(self, counted: bool = True) -> None:
        """A refused key: it counts against the address at once (`counted` False: its
        metric waits until it is known to be no key before its certificate)."""
        self._gateway.failures.record(self.group)
        if counted:
            self._gateway.metrics.inc("sshreg_ssh_auth_failures_total")

    async def _validate_certificate(self, username: str, key_data: bytes
                                    ) -> asyncssh.SSHKey | None:
        """The key of a user certificate that logs in, or None (a plain key, which
        `validate_public_key` checks, or a refused certificate, logged)."""
        if not is_certificate(key_data) or not self._may_try(key_data):
            return None
        self._gateway.revoked.reload_if_changed()  # as authorized_keys: revoked means now
        login = certificate_login(key_data, self._gateway.keys.entries(),
                                  dict(self._gateway.settings.principals),
                                  self._gateway.revoked.current, self._peer[0],
                                  f"{self.peer_text} (user {username!r})")
        if login is None:
            self._failed()
            return None
        self._entry, self._certificate = login.line, login
        return login.key

    def _check_key(self, username: str, key: asyncssh.SSHKey, fingerprint: str) -> bool:
        entries = [e for e in self._gateway.keys.entries()
                   if e.key.public_data == key.public_data and not e.cert_authority]
        if not entries:
            self._unknown_keys[key.public_data] = (fingerprint, username)
            return False
        self._gateway.revoked.reload_if_changed()  # as authorized_keys: revoked means now
        revoked = self._gateway.revoked.current.key_revoked(key.public_data)
        for entry in entries:
            if revoked:
                reason = "revoked (revoked_keys)"
            elif entry.expired():
                reason = "expired"
            elif not entry.allows_address("", self._peer[0]):
                reason = f"not allowed from {self._peer[0]} (from= option)"
            else:
                self._entry = entry  # asyncssh validates again with the signature, then
                return True          # calls auth_completed for the key validated last
            log.warning("refused key %(fingerprint)s (%(comment)s) from %(peer)s: %(reason)s",
                        {"fingerprint": fingerprint, "comment": entry.comment,
                         "peer": self.peer_text, "reason": reason})
        return False

    def _settle_unknown_keys(self, logged_in_with: bytes | None) -> None:
        """Log the plain keys refused as unknown, except the one whose certificate logged in:
        ssh offers `id_ed25519` before `id_ed25519-cert.pub`, and that is no failed login
        (its failure is taken back, or a team behind one address would soon be blocked)."""
        for blob, (fingerprint, user) in self._unknown_keys.items():
            if blob == logged_in_with:
                self._gateway.failures.forgive(self.group)
                continue
            log.warning("refused unknown key %(fingerprint)s from %(peer)s (user %(user)r)",
                        {"fingerprint": fingerprint, "peer": self.peer_text, "user": user})
            self._gateway.metrics.inc("sshreg_ssh_auth_failures_total")
        self._unknown_keys.clear()

    def auth_completed(self) -> None:
        assert self._entry is not None
        if self._certificate is not None:
            self.identity = self._certificate.identity
            self._settle_unknown_keys(self._certificate.key_blob)
        else:
            self.identity = self._entry.identity(self._peer[0])
            self._settle_unknown_keys(None)
        same_key = sum(1 for c in self._gateway.connections.values()
                       if c.identity and c.identity.fingerprint == self.identity.fingerprint)
        if same_key > self._gateway.settings.limits.max_connections_per_key:
            self._disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS,
                             "too many connections for this key", f"{same_key} connections of key")
            return
        cert = self.identity.certificate
        if cert is not None:
            log.info("key %(fingerprint)s (%(comment)s) logged in from %(peer)s with "
                     "certificate %(key_id)r serial %(serial)d of CA %(ca)s for %(principals)s",
                     {"fingerprint": self.identity.fingerprint, "comment": self.identity.comment,
                      "peer": self.peer_text, "key_id": cert.key_id, "serial": cert.serial,
                      "ca": cert.ca, "principals": ",".join(cert.principals)})
            return
        log.info("key %(fingerprint)s (%(comment)s) logged in from %(peer)s",
                 {"fingerprint": self.identity.fingerprint, "comment": self.identity.comment,
                  "peer": self.peer_text})

    @property
    def _rules(self) -> KeyEntry:
        """What this login's channels may do: its line's, narrowed by its certificate."""
        assert self._entry is not None
        return self._certificate.rules if self._certificate is not None else self._entry

    # -- channels --------------------------------------------------------------------

    def _refuse(self, what: str, kind: str = "channel") -> None:
        who = self.identity.fingerprint if self.identity else "-"
        comment = self.identity.comment if self.identity else ""
        log.warning("refused %(request)s for key %(fingerprint)s (%(comment)s) from %(peer)s",
                    {"request": what, "fingerprint": who, "comment": comment,
                     "peer": self.peer_text})
        self._gateway.metrics.inc("sshreg_ssh_refusals_total", kind=kind)

    def channel_opened(self) -> None:
        self.last_activity = time.monotonic()

    def channel_closed(self) -> None:
        self.last_activity = time.monotonic()

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int):
        identity = self.identity
        assert self._entry is not None and identity is not None and self._conn is not None
        refusal = forward_refusal(self._rules, dest_host, dest_port,
                                  self._gateway.settings.registry_port)
        if refusal is not None:
            what, told = refusal
            self._refuse(what)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, told)
        if self.slots.full:
            self._refuse(f"forwarding to {dest_host}:{dest_port} (too many channels)")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE,
                                            "too many tunnelled connections at once")
        chan = create_channel(self._conn, TunnelChannel)
        chan.hold(self.slots.take())
        session = HttpChannelSession(self._gateway.protocol_factory, identity, self._peer,
                                     self._gateway.metrics, self)
        return chan, session

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self._refuse(f"remote forwarding of {listen_host}:{listen_port}", "remote-forward")
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        self._refuse(f"forwarding to unix socket {dest_path}")
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        self._refuse(f"remote forwarding of unix socket {listen_path}")
        return False

    def session_requested(self) -> tuple[SessionChannel, CommandSession]:
        assert self.identity is not None and self._entry is not None and self._conn is not None
        if self.slots.full:
            self._refuse("session (too many channels)")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE,
                                            "too many channels at once")
        chan = SessionChannel.create(self._conn, self._refuse)
        chan.hold(self.slots.take())
        session = CommandSession(
            self._gateway.render_help(self.identity, self._rules.port_forwarding),
            self.identity, self._gateway.commands, self)
        return chan, session

    def still_authorized(self, grants: set[tuple[object, ...]]) -> str | None:
        """None while the line this connection logged in with is still in authorized_keys,
        unchanged and unexpired (`grants`: those of the current lines), and its key or
        certificate is not revoked and has not expired; else why not."""
        if self._entry is None or self.identity is None:
            return None
        if self._entry.grant not in grants:
            return "key no longer authorized (removed, changed or expired in authorized_keys)"
        revoked = self._gateway.revoked.current
        if self._certificate is not None:
            return self._certificate.still_valid(revoked)
        if revoked.key_revoked(self._entry.key.public_data):
            return "key revoked (revoked_keys)"
        return None

    def revoke(self, why: str) -> None:
        if self._revoked:
            return
        self._revoked = True
        self._disconnect(asyncssh.DISC_BY_APPLICATION, "this key is no longer authorized", why)
