"""authorized_keys kept in a bucket (`s3://BUCKET/KEY`), shared by every gateway.

Several gateways behind one name must agree on who may log in: the file lives next to the
registry's data and each gateway polls it. Logins never wait on the network: asyncssh's
`validate_public_key` reads the copy in memory. A poll is one HEAD; the object is read only
when its ETag changed. A failed poll keeps the last good copy in use and is logged once (and
its recovery once). A missing object means no key may log in, as a missing local file does.

`sshreg keys add/remove` edit the object with a conditional write (If-Match on the ETag read,
If-None-Match when there was none), recomputing the edit when another admin got there first,
so two edits never lose each other.

The object is reached through the storage driver contract (`storage.base.Driver`), so any
driver with conditional writes can hold it; `open_bucket_file` opens an `s3://` URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from ..storage.base import Driver, PreconditionFailed, SmallObject
from .entries import KeyEntry, parse_authorized_keys
from .lines import ENCODING, KeyAdminError, Line, parse_lines

log = logging.getLogger("sshreg.keys")

T = TypeVar("T")

FETCH_TIMEOUT = 30.0
EDIT_ATTEMPTS = 8


class BucketFile:
    """One object of a driver, read with its ETag and written conditionally; `url` names it
    in messages. Closing it closes the driver."""

    def __init__(self, driver: Driver, name: str, url: str) -> None:
        self.url = url
        self.name = name
        self._driver = driver

    def __str__(self) -> str:
        return self.url

    async def etag(self) -> str | None:
        info = await self._driver.stat(self.name)
        return info.etag if info else None

    async def read(self) -> SmallObject | None:
        return await self._driver.get(self.name)

    async def write(self, data: bytes, etag: str | None) -> None:
        """Replace the object if it still has `etag` (create it if `etag` is None and it does
        not exist); raise PreconditionFailed otherwise."""
        if etag is None:
            await self._driver.put(self.name, data, if_none_match=True)
        else:
            await self._driver.put(self.name, data, if_match=etag)

    async def close(self) -> None:
        await self._driver.close()


def open_bucket_file(url: str, *, endpoint_url: str | None = None, region: str = "auto"
                     ) -> BucketFile:
    """The object `s3://BUCKET/KEY` names. Credentials and endpoint as for the storage
    (environment, profiles)."""
    from ..storage.s3 import S3Driver, S3Settings

    parts = urlsplit(url)
    folder, name = posixpath.split(parts.path.strip("/"))
    if parts.scheme != "s3" or not parts.netloc or not name:
        raise ValueError(f"not an s3://BUCKET/KEY URL: {url!r}")
    driver = S3Driver(S3Settings(bucket=parts.netloc, prefix=folder,
                                 endpoint_url=endpoint_url or None, region=region,
                                 max_attempts=2, read_timeout=20.0))
    return BucketFile(driver, name, url)


class SharedAuthorizedKeys:
    """The entries of an authorized_keys in a bucket, polled every `interval` seconds."""

    def __init__(self, source: BucketFile, interval: float = 10.0, *,
                 fetch_timeout: float = FETCH_TIMEOUT) -> None:
        self.source = source
        self.interval = interval
        self.fetch_timeout = fetch_timeout
        self._entries: list[KeyEntry] = []
        self._seen: str | None = None  # ETag of the copy in use, "" for no object, None: not yet
        self._failing = False
        self._loaded_at = 0.0
        self._poller: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[bool] | None = None

    def entries(self) -> list[KeyEntry]:
        return self._entries

    def reload_if_changed(self) -> bool:
        """Check the bucket now (SIGHUP); never waits for it. Returns False: the answer
        comes later."""
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = asyncio.get_running_loop().create_task(self._poll_once())
        return False

    async def refresh(self) -> bool:
        """Fetch the object if it changed; True if the entries were replaced."""
        etag = await self.source.etag() or ""
        if etag == self._seen:
            return False
        blob = await self.source.read() if etag else None
        if blob is None:
            self._entries, self._seen, self._loaded_at = [], "", time.time()
            log.warning("%(source)s does not exist: no key can log in", {"source": str(self.source)})
            return True
        text = blob.data.decode("utf-8", errors="replace")
        self._entries = parse_authorized_keys(text, str(self.source))
        self._seen, self._loaded_at = blob.etag, time.time()
        log.info("loaded %(keys)d key(s) from %(source)s",
                 {"keys": len(self._entries), "source": str(self.source)})
        return True

    async def _poll_once(self) -> bool:
        try:
            async with asyncio.timeout(self.fetch_timeout):
                changed = await self.refresh()
        except Exception as exc:  # keep the last good copy, whatever went wrong
            if not self._failing:
                self._failing = True
                since = (time.strftime("%H:%M:%S", time.localtime(self._loaded_at))
                         if self._loaded_at else "never")
                log.error("cannot fetch %(source)s: %(error)s; logins use the copy loaded at "
                          "%(loaded_at)s (%(keys)d key(s))",
                          {"source": str(self.source), "error": str(exc) or type(exc).__name__,
                           "loaded_at": since, "keys": len(self._entries)})
            return False
        if self._failing:
            self._failing = False
            log.info("%(source)s can be fetched again", {"source": str(self.source)})
        return changed

    async def start(self) -> None:
        """Fetch once (a failure is logged: logins then wait for the first good copy), then
        poll in the background."""
        await self._poll_once()
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._poll_once()

    async def close(self) -> None:
        for task in (self._poller, self._refreshing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.source.close()


async def read_shared(source: BucketFile) -> list[Line]:
    """The object's lines, parsed as the server parses them; none if it does not exist."""
    current = await source.read()
    return parse_lines(current.data.decode(*ENCODING)) if current else []


async def edit_shared(source: BucketFile, change: Callable[[list[Line]], tuple[str, T]]) -> T:
    """Apply `change` (the file's lines -> its new text and a result) to the object with a
    conditional write; when another edit landed first, read again and redo it."""
    for _ in range(EDIT_ATTEMPTS):
        current = await source.read()
        lines = parse_lines(current.data.decode(*ENCODING)) if current else []
        text, result = change(lines)
        try:
            await source.write(text.encode(*ENCODING), current.etag if current else None)
            return result
        except PreconditionFailed:
            log.info("%(source)s changed while it was edited; editing again",
                     {"source": str(source)})
    raise KeyAdminError(f"{source} kept changing while it was edited; try again")
