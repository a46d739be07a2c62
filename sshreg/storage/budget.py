"""A byte budget for what uploads hold in memory, shared by every upload of a driver.

Upload sessions are cheap to open, so without a budget enough of them, each parking a
partly filled part buffer, could take all of the process's memory. An upload takes bytes
from the budget as its buffers grow and gives them all back when it is committed or
aborted; growth past the budget raises `Overloaded`, which the registry answers with
429 and `Retry-After`.
"""

from __future__ import annotations

from .base import Overloaded


class BufferBudget:
    """At most `limit` bytes held in upload buffers at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def has_room(self, n: int) -> bool:
        return self.used + n <= self.limit

    def take(self, n: int, what: str) -> None:
        """Count `n` more bytes, or raise `Overloaded` if they do not fit."""
        if not self.has_room(n):
            raise Overloaded(f"{what}: upload buffers are at their budget of {self.limit} "
                             "bytes; retry later")
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        assert self.used >= 0, "more bytes given back than taken"
