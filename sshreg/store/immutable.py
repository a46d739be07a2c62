"""Writing objects whose bytes never change (links, referrer entries) without writing them
again: R2 takes one write per second per key."""

from __future__ import annotations

import contextlib
import time

from ..storage.base import Driver, PreconditionFailed
from . import paths

# An immutable object written less than this long ago is not written again. Its write time
# is what garbage collection ages it by, so an older one is renewed: never within a second
# of the last write (S3 keeps whole seconds), as R2 asks.
FRESH_SECONDS = 2.0


async def write_immutable(driver: Driver, key: str, body: bytes) -> None:
    """Write an object whose bytes at `key` are always `body`, without writing it again.

    Missing: created with `if_none_match` (losing that race to another writer is fine).
    Present and younger than FRESH_SECONDS: left alone, unless a garbage collection is
    running (its sweep spares only what was written since it started, so the write must
    happen). Older: written again, to renew the age garbage collection judges it by."""
    info = await driver.stat(key)
    if info is None:
        with contextlib.suppress(PreconditionFailed):
            await driver.put(key, body, if_none_match=True)
        return
    if time.time() - info.modified < FRESH_SECONDS and not await gc_running(driver):
        return
    await driver.put(key, body)


async def gc_running(driver: Driver) -> bool:
    """Whether a garbage collection that deletes holds its lease on this storage."""
    return await driver.stat(paths.GC_LEASE_KEY) is not None
