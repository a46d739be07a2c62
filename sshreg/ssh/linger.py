"""Closing a connection we disconnect so that the client reads why.

asyncssh ends a connection with `abort()`. If the client's bytes are still unread at that
moment (its version line, when the refusal comes right after ours), the kernel answers the
close with a reset, and an OpenSSH client whose next write meets that reset dies quietly,
without reading the disconnect message already waiting for it. Instead: send what is
written, half-close, and drop whatever the client still sends until it closes (it does, once
it has read the reason) or `LINGER_SECONDS` pass. At most `MAX_LINGERING` connections linger
at once; past that, a refused connection is aborted as before, so a flood of refused
connections holds no more sockets than that.
"""

from __future__ import annotations

import asyncio

LINGER_SECONDS = 2.0
MAX_LINGERING = 64

_lingering: set[asyncio.Transport] = set()


class _Discard(asyncio.Protocol):
    """Drops what the client still sends; ends the lingering when the client closes."""

    def __init__(self, transport: asyncio.Transport, deadline: asyncio.TimerHandle) -> None:
        self._transport = transport
        self._deadline = deadline

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport then closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        _lingering.discard(self._transport)


def close_after_reading(transport: asyncio.Transport) -> None:
    """Close `transport` (a socket transport, its pending writes sent first) without a reset
    where that can be afforded; abort it otherwise."""
    if (transport.is_closing() or len(_lingering) >= MAX_LINGERING
            or not transport.can_write_eof()):
        transport.abort()
        return
    deadline = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.abort)
    _lingering.add(transport)
    transport.set_protocol(_Discard(transport, deadline))
    transport.write_eof()
    if not transport.is_reading():
        transport.resume_reading()
