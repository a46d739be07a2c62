"""A fix for asyncssh's receive-window accounting on paused channels (asyncssh 2.24.1).

When a channel that was paused (the HTTP handler could not keep up) resumes, asyncssh
re-opens the full window as soon as the first queued packet is delivered, ignoring the
bytes still queued behind it. Each pause/resume cycle then lets the client send another
window's worth, so a slow storage made a 1 GiB upload grow the server past 650 MiB.

This subclass counts the queued bytes as still occupying the window: the window is only
re-opened for data the session has really consumed, so memory per channel stays bounded
by one window. To report upstream: `SSHChannel._deliver_data` should compute the adjust
as `init_window - (recv_window + queued bytes)`. It overrides asyncssh internals: verified
on the version pyproject.toml pins (tests/test_library_patches.py).
"""

from __future__ import annotations

from typing import TypeVar

from asyncssh import SSHTCPChannel
from asyncssh.connection import SSHConnection
from asyncssh.packet import UInt32

MSG_CHANNEL_WINDOW_ADJUST = 93


class FlowControlledTCPChannel(SSHTCPChannel[bytes]):
    """A direct-tcpip channel whose window only re-opens for data actually delivered."""

    def _deliver_data(self, data: bytes, datatype: int | None) -> None:
        queued = sum(len(chunk) for chunk, _ in self._recv_buf)
        consumed_window = self._recv_window + queued
        if consumed_window < self._init_recv_window / 2:
            adjust = self._init_recv_window - consumed_window
            self.send_packet(MSG_CHANNEL_WINDOW_ADJUST, UInt32(adjust))
            self._recv_window += adjust
        if self._session is not None:
            self._session.data_received(data, datatype)


Channel = TypeVar("Channel", bound=FlowControlledTCPChannel)


def create_channel(conn: SSHConnection, cls: type[Channel]) -> Channel:
    """Build the channel the way `create_tcp_channel` does, with the fixed accounting
    (`cls`: `FlowControlledTCPChannel` or a subclass of it)."""
    return cls(conn, conn._loop, None, "strict", conn._options.window,
               conn._options.max_pktsize)
