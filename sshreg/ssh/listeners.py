"""The SSH port's listening sockets, bound before anything serves on them.

Bound here rather than by asyncssh, so that one process can bind them and another serve
them: the worker supervisor binds a set per worker (`bind_worker_listeners`) and hands each
worker its own.
"""

from __future__ import annotations

import socket

BACKLOG = 128


def bind_listeners(host: str, port: int, backlog: int = BACKLOG, *,
                   reuse_port: bool = False) -> list[socket.socket]:
    """One non-blocking listening socket per address `host` resolves to (an empty host:
    every address). IPv6 sockets are IPv6-only, so 0.0.0.0 and :: can be bound side by side."""
    addresses = [(family, address[:2]) for family, _, _, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)]
    return _bind_all(addresses, backlog, reuse_port)


def bind_worker_listeners(host: str, port: int, workers: int, backlog: int = BACKLOG
                          ) -> list[list[socket.socket]]:
    """A set of listening sockets per worker, all on the same addresses and port with
    `SO_REUSEPORT`: the kernel spreads new connections evenly over the sets (by a hash of
    the client's address and port). A set outlives its worker in the supervisor, so a
    connection that arrives while a worker is replaced waits in its queue."""
    first = bind_listeners(host, port, backlog, reuse_port=True)
    sets = [first]
    try:
        for _ in range(workers - 1):  # port 0 gave the first set its port: the others take it
            sets.append(_bind_all([(s.family, s.getsockname()[:2]) for s in first], backlog,
                                  reuse_port=True))
    except OSError:
        for listener in (s for group in sets for s in group):
            listener.close()
        raise
    return sets


def _bind_all(addresses: list[tuple[int, tuple[str, int]]], backlog: int, reuse_port: bool
              ) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            listener = socket.create_server(address, family=family, backlog=backlog,
                                            reuse_port=reuse_port)
            listener.setblocking(False)
            sockets.append(listener)
    except OSError:
        for listener in sockets:
            listener.close()
        raise
    return sockets
