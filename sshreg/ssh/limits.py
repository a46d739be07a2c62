"""Enforcing the limits against abuse: the address group per-address limits count under,
and failed logins per address. The limits themselves are the [limits] section
(`sshreg/limits.py`)."""

from __future__ import annotations

import ipaddress
import time
from collections import deque


def address_group(address: str) -> str:
    """The key the per-address limits count under: an IPv4 address itself (also when it
    arrives IPv4-mapped, `::ffff:192.0.2.1`), and for IPv6 the address's /64, since one
    subscriber or host usually has a whole /64 to pick fresh addresses from."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureTracker:
    """Failed logins per source address (as grouped by `address_group`) over the last
    minute."""

    WINDOW = 60.0

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._failures: dict[str, deque[float]] = {}
        self._pruned = time.monotonic()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and times[0] < now - self.WINDOW:
            times.popleft()
        if not times:
            del self._failures[address]
        return times

    def record(self, address: str) -> None:
        now = time.monotonic()
        if now - self._pruned > self.WINDOW:  # addresses that never come back are forgotten
            self._pruned = now
            for stale in [a for a, times in self._failures.items() if times[-1] < now - self.WINDOW]:
                del self._failures[stale]
        self._recent(address, now)
        self._failures.setdefault(address, deque()).append(now)

    def forgive(self, address: str) -> None:
        """Take back the latest failure of an address (a key that then logged in with its
        certificate on the same connection)."""
        times = self._failures.get(address)
        if times:
            times.pop()

    def blocked(self, address: str) -> bool:
        return len(self._recent(address, time.monotonic())) >= self.limit
