"""Saying that the server accepts connections: the log line, and systemd's notification.

Apart from the service so that the worker supervisor can say it without loading what
serves requests."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

log = logging.getLogger("sshreg")


def notify_systemd(state: str) -> None:
    """sd_notify without libsystemd: a datagram to $NOTIFY_SOCKET, if systemd gave one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


def log_ready(fields: dict[str, Any], workers: int) -> None:
    """The line that says the server accepts connections (`fields`: `ready_fields()`)."""
    log.info("sshreg ready: ssh on %(host)s:%(port)d, storage %(storage)s, host key "
             "%(host_key)s, %(keys)d authorized key(s), %(workers)d worker(s)",
             {"host": fields["host"], "port": fields["port"], "storage": fields["storage"],
              "host_key": fields["host_key"], "keys": fields["keys"], "workers": workers})
