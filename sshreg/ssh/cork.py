"""Corking: one send() per event-loop iteration for an SSH connection, not one per packet.

asyncssh writes every SSH packet (at most 32 KiB of payload from OpenSSH clients, and the
same for what we send) to the socket transport on its own: a pull of 1 GiB is 32,768
`send()` calls, each waking the client's ssh. This wrapper collects the packets written
during one loop iteration and hands them to the real transport as one buffer, the way a
TCP_CORK/uncork pair would. It delays nothing beyond the current iteration. It replaces
asyncssh's private `_transport`: verified on the version pyproject.toml pins
(tests/test_library_patches.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .linger import close_after_reading


class CorkedTransport:
    """Wraps the transport under an SSH connection; everything but writing passes through."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False
        self.linger = False  # abort() sends what is pending and lingers (see linger.py)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        if self.linger:
            self.flush()
            close_after_reading(self._transport)
            return
        self._pending.clear()
        self._transport.abort()


def cork(conn: Any) -> None:
    """Put a connection's writes through a `CorkedTransport` (call from connection_made)."""
    transport = conn._transport
    if transport is not None and not isinstance(transport, CorkedTransport):
        conn._transport = CorkedTransport(transport, asyncio.get_running_loop())
