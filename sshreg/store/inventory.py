"""What garbage collection walks: every blob record, every object of blob bytes, and each
repository's links with their objects (whose write time is their age), page by page; and
the storage's clock, which those ages are compared with."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from ..references import Digest
from ..storage.base import Driver, ObjectInfo
from . import paths
from .blobs import BlobStore

log = logging.getLogger("sshreg.store")


async def digests_under(driver: Driver, prefix: str) -> AsyncIterator[tuple[Digest, ObjectInfo]]:
    """The objects under `prefix` whose keys end in `<alg>/<hex>`, with those digests."""
    async for obj in driver.list(prefix):
        try:
            yield paths.digest_from_path(obj.key[len(prefix):]), obj
        except ValueError:
            log.warning("ignoring unexpected object %(key)s", {"key": obj.key})


class Inventory:
    def __init__(self, driver: Driver, blobs: BlobStore) -> None:
        self.driver = driver
        self._records = blobs  # for sizes: `blobs()` lists the records themselves

    async def blobs(self) -> AsyncIterator[tuple[Digest, ObjectInfo]]:
        """Every blob record in the store, in key order, page by page."""
        async for obj in self.driver.list(paths.BLOB_RECORDS):
            try:
                yield paths.blob_record_digest(obj.key), obj
            except ValueError:
                log.warning("ignoring unexpected object %(key)s", {"key": obj.key})

    def blob_data(self) -> AsyncIterator[ObjectInfo]:
        """Every object holding blob bytes, referenced by a record or not."""
        return self.driver.list(paths.BLOB_DATA)

    def blob_links(self, name: str) -> AsyncIterator[tuple[Digest, ObjectInfo]]:
        """The blobs this repository links, with their link objects (for age)."""
        return digests_under(self.driver, paths.layer_links(name))

    def manifest_revisions(self, name: str) -> AsyncIterator[tuple[Digest, ObjectInfo]]:
        """The manifests of a repository, with their link objects (for age)."""
        return digests_under(self.driver, paths.manifest_revisions(name))

    async def linked(self, name: str) -> set[Digest]:
        """Every blob and manifest a repository links."""
        digests = {d async for d, _ in self.blob_links(name)}
        return digests | {d async for d, _ in self.manifest_revisions(name)}

    async def sizes(self, digests: set[Digest]) -> dict[Digest, int]:
        """The stored size of each digest (0 when it has no record)."""
        sizes = {}
        for digest in digests:
            record = await self._records.get(digest)
            sizes[digest] = record.size if record else 0
        return sizes

    async def storage_now(self) -> float:
        """The current time by the storage's clock, at the storage's resolution.

        Ages are compared with modification times the storage assigned (S3 keeps whole
        seconds), so "written since the run started" must use that clock too."""
        key = paths.GC_CLOCK_KEY
        await self.driver.put(key, str(time.time()).encode())
        info = await self.driver.stat(key)
        assert info is not None
        return info.modified
