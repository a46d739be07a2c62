"""Repositories: the catalog of names, and which blobs each repository may serve.

The only local state is `_known`, which holds facts that cannot become false: a catalog
marker is never removed (garbage collection may empty a repository, never unlist it).
"""

from __future__ import annotations

import contextlib

from ..references import Digest
from ..storage.base import Driver, ObjectInfo, PreconditionFailed
from . import paths
from .blobs import BlobRecord, BlobStore
from .immutable import write_immutable


class RepositoryStore:
    """Catalog markers and blob links, per repository."""

    def __init__(self, driver: Driver, blobs: BlobStore) -> None:
        self.driver = driver
        self.blobs = blobs
        self._known: set[str] = set()

    async def ensure(self, name: str) -> None:
        if name in self._known:
            return
        key = paths.repository_marker(name)
        if await self.driver.stat(key) is None:  # never removed: no age to renew
            with contextlib.suppress(PreconditionFailed):
                await self.driver.put(key, b"", if_none_match=True)
        self._known.add(name)

    async def exists(self, name: str) -> bool:
        if name in self._known:
            return True
        return await self.driver.stat(paths.repository_marker(name)) is not None

    async def names(self) -> list[str]:
        """All repository names, sorted."""
        names = [name async for obj in self.driver.list(paths.CATALOG)
                 if (name := paths.marked_repository(obj.key)) is not None]
        return sorted(names)

    async def link_blob(self, name: str, digest: Digest) -> None:
        await self.ensure(name)
        await write_immutable(self.driver, paths.layer_link(name, digest), b"")

    async def unlink_blob(self, name: str, digest: Digest) -> None:
        await self.driver.delete(paths.layer_link(name, digest))

    async def is_blob_linked(self, name: str, digest: Digest) -> bool:
        return await self.blob_link_info(name, digest) is not None

    async def blob(self, name: str, digest: Digest) -> BlobRecord | None:
        """The blob, if this repository may serve it: its record as stored now."""
        if not await self.is_blob_linked(name, digest):
            return None
        return await self.blobs.get(digest)

    async def blob_for_reading(self, name: str, digest: Digest) -> BlobRecord | None:
        """The blob to serve, if this repository may serve it: its record perhaps from
        this process's cache, for `BlobStore.read` only."""
        if not await self.is_blob_linked(name, digest):
            return None
        return await self.blobs.record_for_reading(digest)

    async def blob_link_info(self, name: str, digest: Digest) -> ObjectInfo | None:
        """The link object (its age), if this repository links the blob."""
        return await self.driver.stat(paths.layer_link(name, digest))
