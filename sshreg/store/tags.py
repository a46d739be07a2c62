"""Tags: per repository, a small object holding the digest it points at.

A tag is moved by compare-and-swap, so no update is lost silently; concurrent writers of
one tag in this process are coalesced, the latest value winning (`coalesce.py`), since R2
takes one write per second per key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ..references import Digest
from ..storage.base import Driver, ObjectInfo, PreconditionFailed
from . import paths
from .coalesce import SUPERSEDED, LatestWins

TAG_WRITE_ATTEMPTS = 8


class TagStore:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self._writes = LatestWins()

    async def get(self, name: str, tag: str) -> Digest | None:
        obj = await self.driver.get(paths.tag(name, tag))
        return Digest.parse(obj.data.decode()) if obj else None

    async def set(self, name: str, tag: str, digest: Digest) -> Digest | None:
        """Point a tag at a manifest, as a compare-and-swap so no update is lost silently.
        Returns the digest the tag pointed at before (None if it was new), or `digest` itself
        when a later writer of this tag in this process superseded this one (nothing to undo).
        """
        key = paths.tag(name, tag)
        result = await self._writes.run(key, lambda: self._swap(name, tag, digest))
        return digest if result is SUPERSEDED else result

    async def _swap(self, name: str, tag: str, digest: Digest) -> Digest | None:
        key = paths.tag(name, tag)
        value = str(digest).encode()
        for _ in range(TAG_WRITE_ATTEMPTS):
            current = await self.driver.get(key)
            if current is not None and current.data == value:
                return digest
            try:
                if current is None:
                    await self.driver.put(key, value, if_none_match=True)
                    return None
                await self.driver.put(key, value, if_match=current.etag)
                return Digest.parse(current.data.decode())
            except PreconditionFailed:
                continue
        raise PreconditionFailed(f"tag {name}:{tag} kept changing")

    async def undo(self, name: str, tag: str, digest: Digest, previous: Digest | None) -> None:
        """Put a tag back where it was before `set(name, tag, digest)`, unless it has
        been moved since (a conditional write: another writer's update wins)."""
        if previous == digest:
            return
        key = paths.tag(name, tag)
        current = await self.driver.get(key)
        if current is None or current.data != str(digest).encode():
            return
        if previous is None:
            await self.driver.delete(key)  # S3 has no conditional delete: a tiny window
            return
        with contextlib.suppress(PreconditionFailed):
            await self.driver.put(key, str(previous).encode(), if_match=current.etag)

    async def delete(self, name: str, tag: str) -> bool:
        key = paths.tag(name, tag)
        if await self.driver.stat(key) is None:
            return False
        await self.driver.delete(key)
        return True

    async def entries(self, name: str, last: str = "") -> AsyncIterator[tuple[str, Digest, float]]:
        """(tag, digest, time the tag was last written) for every tag of a repository in
        lexical order after `last`."""
        async for obj in self._listing(name, last):
            value = await self.driver.get(obj.key)
            if value is not None:
                yield paths.tag_of(name, obj.key), Digest.parse(value.data.decode()), obj.modified

    async def names(self, name: str, last: str = "") -> AsyncIterator[str]:
        """Tags in lexical order after `last` (cheaper than `entries`: no reads)."""
        async for obj in self._listing(name, last):
            yield paths.tag_of(name, obj.key)

    def _listing(self, name: str, last: str) -> AsyncIterator[ObjectInfo]:
        prefix = paths.tags(name)
        return self.driver.list(prefix, start_after=prefix + last if last else "")
