"""The bridge: one forwarded SSH channel becomes one HTTP connection of the registry.

No socket is involved: the channel session drives aiohttp's server protocol directly,
and the channel is dressed up as the asyncio transport that protocol expects. The
identity of the key that opened the tunnel travels with the transport
(`get_extra_info("sshreg.identity")`), so every request on it knows who is asking.

Flow control runs both ways: when aiohttp's body buffer fills it pauses the transport,
which pauses the channel, which stops re-opening the SSH window (see `flow.py`); when
the SSH send window is full, the channel pauses writing, and aiohttp's `drain` waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import asyncssh

from ..access import Identity
from ..metrics import Metrics
from ..registry.context import IDENTITY_INFO


class ChannelOwner(Protocol):
    """The SSH connection a channel belongs to, which notes when its channels open and
    close (its idle timeout runs from the last of these)."""

    def channel_opened(self) -> None: ...

    def channel_closed(self) -> None: ...


class ChannelTransport(asyncio.Transport):
    """An SSH channel presented as an asyncio transport to an asyncio protocol."""

    def __init__(self, chan: asyncssh.SSHTCPChannel[bytes], extra: dict[str, Any],
                 metrics: Metrics) -> None:
        super().__init__(extra)
        self._chan = chan
        self._metrics = metrics
        self._protocol: asyncio.BaseProtocol | None = None
        self._closing = False
        self._reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # aiohttp sets socket options on whatever `socket` returns: that would be the SSH
        # connection's real socket, shared by every channel on it.
        if name == "socket":
            return None
        return super().get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._chan.write(bytes(data) if isinstance(data, memoryview) else data)
            self._metrics.inc("sshreg_http_sent_bytes_total", len(data))

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._chan.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._chan.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._chan.set_write_buffer_limits(high, low)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Flush what was written, then close the channel."""
        if not self._closing:
            self._closing = True
            self._chan.close()

    def abort(self) -> None:
        if not self._closing:
            self._closing = True
        self._chan.abort()

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._chan.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._chan.resume_reading()


class HttpChannelSession(asyncssh.SSHTCPSession[bytes]):
    """Feeds a forwarded channel into an HTTP server protocol (aiohttp's RequestHandler)."""

    def __init__(self, protocol_factory: Callable[[], asyncio.Protocol], identity: Identity,
                 peer: tuple[str, int], metrics: Metrics, owner: ChannelOwner) -> None:
        self._protocol_factory = protocol_factory
        self._identity = identity
        self._peer = peer
        self._metrics = metrics
        self._owner = owner
        self._protocol: asyncio.Protocol | None = None
        self._transport: ChannelTransport | None = None

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._transport = ChannelTransport(chan, {
            IDENTITY_INFO: self._identity,
            "peername": self._peer,
            "sockname": chan.get_extra_info("local_peername"),
        }, self._metrics)
        self._owner.channel_opened()
        self._protocol = self._protocol_factory()
        self._transport.set_protocol(self._protocol)
        self._protocol.connection_made(self._transport)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        assert self._protocol is not None
        self._metrics.inc("sshreg_http_received_bytes_total", len(data))
        self._protocol.data_received(data)

    def eof_received(self) -> bool:
        # As asyncio's TCP transport does: a peer that stopped sending ends the connection.
        # Otherwise an idle keep-alive channel, or the handler of an upload whose client
        # died, would linger until the whole SSH connection closes.
        assert self._protocol is not None and self._transport is not None
        self._protocol.eof_received()
        self._transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport._closing = True
            self._owner.channel_closed()
        if self._protocol is not None:
            self._protocol.connection_lost(exc)
            self._protocol = None

    def pause_writing(self) -> None:
        if self._protocol is not None:
            self._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self._protocol is not None:
            self._protocol.resume_writing()
