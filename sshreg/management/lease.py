"""One garbage collection at a time on a bucket, whichever gateway or `sshreg gc` runs it.

Two collections at once undo each other's safety net: one removes a blob record and puts it
back when a push needs it, while the other, seeing bytes that no record points at, deletes
them as a crash leftover. So a collection that deletes holds a lease in storage: an object
created with If-None-Match, rewritten (If-Match) every `REFRESH` seconds while it runs, and
removed at the end. A lease not rewritten for `STALE` seconds belongs to a collection that
died; the next collection takes it over with If-Match on its ETag, so only one can.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator

from ..storage.base import Driver, PreconditionFailed
from ..store.paths import GC_LEASE_KEY

log = logging.getLogger("sshreg.gc")

KEY = GC_LEASE_KEY
REFRESH = 60.0
STALE = 600.0


class GcBusy(Exception):
    """Another garbage collection holds the lease."""


class Lease:
    """The lease of a running collection; see `hold`."""

    def __init__(self, driver: Driver, etag: str, body: bytes) -> None:
        self.driver = driver
        self.etag = etag
        self.body = body

    @classmethod
    @contextlib.asynccontextmanager
    async def hold(cls, driver: Driver, now: float) -> AsyncIterator[Lease]:
        """Take the lease (`now` by the storage's clock), keep it fresh, give it back."""
        lease = await cls.acquire(driver, now)
        refresher = asyncio.get_running_loop().create_task(lease._refresh_forever())
        try:
            yield lease
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await lease.release()

    @classmethod
    async def acquire(cls, driver: Driver, now: float) -> Lease:
        body = json.dumps({"owner": f"{socket.gethostname()} pid {os.getpid()}",
                           "started": now}).encode()
        try:
            return cls(driver, await driver.put(KEY, body, if_none_match=True), body)
        except PreconditionFailed:
            pass
        info = await driver.stat(KEY)
        current = await driver.get(KEY)
        holder = _owner(current.data) if current else "a collection that just ended"
        if info is None or info.modified > now - STALE:
            raise GcBusy(f"garbage collection is already running ({holder}); try again later")
        log.warning("taking over the gc lease of %(holder)s, not renewed for %(seconds).0fs",
                    {"holder": holder, "seconds": now - info.modified})
        try:
            return cls(driver, await driver.put(KEY, body, if_match=info.etag), body)
        except PreconditionFailed:
            raise GcBusy("another garbage collection took the lease first") from None

    async def taken_at(self) -> float:
        """When the lease object was written, by the storage's clock."""
        info = await self.driver.stat(KEY)
        if info is None or info.etag != self.etag:
            raise GcBusy("the gc lease was lost as soon as it was taken")
        return info.modified

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            try:
                self.etag = await self.driver.put(KEY, self.body, if_match=self.etag)
            except PreconditionFailed:
                log.error("the gc lease was taken over (not renewed for %(seconds).0fs?)",
                          {"seconds": STALE})
                return
            except Exception as exc:  # keep trying: the run itself will meet the trouble
                log.warning("renewing the gc lease failed: %(error)s", {"error": str(exc)})

    async def release(self) -> None:
        current = await self.driver.get(KEY)
        if current is not None and current.etag == self.etag:
            await self.driver.delete(KEY)


def _owner(data: bytes) -> str:
    try:
        return str(json.loads(data)["owner"])
    except (ValueError, KeyError, TypeError):
        return "unknown"
