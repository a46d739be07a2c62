"""Latest-value-wins coalescing of writes to one key within this process.

R2 takes one write per second per key, so twenty clients setting one tag at once through
one gateway must not become twenty writes racing for it. `LatestWins.run(key, write)` lets
one write per key run at a time; a writer that is still waiting when a later writer of the
same key arrives is superseded: it returns `SUPERSEDED` without writing, as if its value had
been written and at once replaced by the later one (both requests were in flight together,
so either order is a correct outcome). If the later write then fails, its own client sees
the error; the superseded ones have already been answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

T = TypeVar("T")


class _Superseded:
    def __repr__(self) -> str:
        return "SUPERSEDED"


SUPERSEDED: Final = _Superseded()


@dataclass
class _Queue:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    latest: int = 0  # ticket of the most recent writer
    users: int = 0


class LatestWins:
    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}

    async def run(self, key: str, write: Callable[[], Awaitable[T]]) -> T | _Superseded:
        queue = self._queues.setdefault(key, _Queue())
        queue.latest += 1
        ticket = queue.latest
        queue.users += 1
        try:
            async with queue.lock:  # FIFO: the latest ticket gets the lock last
                if queue.latest != ticket:
                    return SUPERSEDED
                return await write()
        finally:
            queue.users -= 1
            if not queue.users:
                del self._queues[key]
