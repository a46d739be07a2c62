"""Admission of a new SSH connection, decided before it may even try to log in.

In order: the total (`max_connections`), a blocked address (too many failed logins), the
address's connections not logged in yet (`max_pending_per_address`), and all connections not
logged in yet (`max_pending`, kept below the total so that connections that never log in
cannot take every place). When that last cap is full, a newcomer from an address with fewer
connections waiting than the busiest address takes the place of that address's oldest
waiting connection: a few addresses holding connections open until `login_timeout` cannot
shut everyone else out, and a user arriving from an address of their own still gets in.
Addresses are grouped by `address_group` (an IPv6 /64 counts as one address).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import asyncssh

from ..limits import Limits

PENDING_FULL = "too many connections waiting to log in, try again later"


class Admitted(Protocol):
    """An open connection, as admission sees it."""

    @property
    def group(self) -> str: ...

    @property
    def opened(self) -> float: ...

    @property
    def counted(self) -> bool:
        """Open and not on its way out."""
        ...

    @property
    def pending(self) -> bool:
        """Counted and not logged in yet."""
        ...


@dataclass(frozen=True)
class Refusal:
    code: int
    reason: str  # sent to the client in the disconnect message
    why: str  # for the log


@dataclass(frozen=True)
class Decision:
    refusal: Refusal | None = None
    evict: Admitted | None = None  # a waiting connection whose place the newcomer takes


def admit(limits: Limits, group: str, blocked: bool, connections: Iterable[Admitted]) -> Decision:
    """Whether a connection from `group` may stay, given the connections already open."""
    counted = [c for c in connections if c.counted]
    if len(counted) >= limits.max_connections:
        return Decision(Refusal(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections",
                                f"{len(counted)} connections open"))
    if blocked:
        return Decision(Refusal(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                                "too many failed logins from this address, try again later",
                                "address blocked after repeated failed logins"))
    pending = [c for c in counted if c.pending]
    per_group = Counter(c.group for c in pending)
    if per_group[group] >= limits.max_pending_per_address:
        return Decision(Refusal(asyncssh.DISC_TOO_MANY_CONNECTIONS,
                                "too many connections from this address",
                                "too many connections from this address not logged in yet"))
    if len(pending) < limits.max_pending:
        return Decision()
    busiest, most = per_group.most_common(1)[0]
    if most <= per_group[group]:
        return Decision(Refusal(asyncssh.DISC_TOO_MANY_CONNECTIONS, PENDING_FULL,
                                f"{len(pending)} connections waiting to log in"))
    return Decision(evict=min((c for c in pending if c.group == busiest),
                              key=lambda c: c.opened))
