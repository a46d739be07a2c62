"""The channels one SSH connection may have open at once (`max_channels_per_connection`).

A place is taken when a channel open is accepted, before asyncssh confirms it, and given back
exactly once when that channel is cleaned up, whether it opened, failed to open or went down
with its connection. Counting only channels whose session has started would let a burst of
`CHANNEL_OPEN`s read in one go (thousands fit in one read) all pass the check before the
first one counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asyncssh.channel import SSHChannel


class Slot:
    """One taken place; `release` gives it back, once however often it is called."""

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back: Callable[[], None] | None = give_back

    def release(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()


class ChannelSlots:
    """The places of one connection; `on_change(+1 or -1)` follows every take and release."""

    def __init__(self, limit: int, on_change: Callable[[int], None]) -> None:
        self.limit = limit
        self.in_use = 0
        self._on_change = on_change

    @property
    def full(self) -> bool:
        return self.in_use >= self.limit

    def take(self) -> Slot:
        self.in_use += 1
        self._on_change(1)
        return Slot(self._give_back)

    def _give_back(self) -> None:
        self.in_use -= 1
        self._on_change(-1)


class SlotChannel(SSHChannel[Any]):
    """Mixin (put it first) for an asyncssh channel class: releases the channel's slot when
    asyncssh cleans the channel up (`_cleanup` runs on every way a channel ends, including
    an open that never completed because the connection closed first). Derived from
    `SSHChannel` so that it adds nothing to the instance layout: `SessionChannel` swaps the
    class of a channel asyncssh built."""

    _slot: Slot | None = None

    def hold(self, slot: Slot) -> None:
        self._slot = slot

    def _cleanup(self, exc: Exception | None = None) -> None:
        try:
            super()._cleanup(exc)
        finally:
            if self._slot is not None:
                self._slot.release()
