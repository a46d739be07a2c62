"""The SSH port's listening sockets, bound before anything serves on them.

Bound here rather than by asyncssh, so that one process can bind them and several serve
them: the worker supervisor binds once and every worker accepts on the same sockets (the
kernel gives each connection to one of them).
"""

from __future__ import annotations

import socket

BACKLOG = 128


def bind_listeners(host: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """One non-blocking listening socket per address `host` resolves to (an empty host:
    every address). IPv6 sockets are IPv6-only, so 0.0.0.0 and :: can be bound side by side."""
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            listener = socket.create_server(address[:2], family=family, backlog=backlog)
            listener.setblocking(False)
            sockets.append(listener)
    except OSError:
        for listener in sockets:
            listener.close()
        raise
    return sockets
