"""Blobs: bytes under a fresh `data/` key, published by a record under their digest.

Blob bytes are written once under a fresh `data/` key and published by writing the
record with `if_none_match`, which is O(1) whatever the size and makes concurrent pushes
of one blob safe: the loser deletes its copy. A blob is readable through a repository
only if the repository links it (`repositories.py`), so knowing a digest does not leak
content.

Serving a blob looks its record up in a per-process cache (`record_for_reading`), as a
record only ever changes when garbage collection removed the blob and it was pushed again:
then the cached key's bytes are gone, and `read` finds the new record and reads from it.
Everything that decides what is stored (pushes, mounts, the manifest check, GC) reads the
record from storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..references import Digest
from ..storage.base import Driver, PreconditionFailed, Upload
from . import paths
from .lru import Lru


class DigestMismatch(ValueError):
    """Bytes read back from storage do not hash to the digest the client claimed."""


@dataclass(frozen=True)
class BlobRecord:
    digest: Digest
    size: int
    key: str  # where the bytes live

    def to_json(self) -> bytes:
        return json.dumps({"key": self.key, "size": self.size}).encode()

    @classmethod
    def from_json(cls, digest: Digest, data: bytes) -> BlobRecord:
        doc = json.loads(data)
        return cls(digest, doc["size"], doc["key"])


class BlobStore:
    """Blob records and the bytes they point at, shared by every repository."""

    def __init__(self, driver: Driver, cached_records: int = 20_000) -> None:
        self.driver = driver
        self._records: Lru[Digest, BlobRecord] = Lru(cached_records)

    async def get(self, digest: Digest) -> BlobRecord | None:
        """The record as stored now."""
        obj = await self.driver.get(paths.blob_record(digest))
        record = BlobRecord.from_json(digest, obj.data) if obj else None
        cached = self._records.get(digest)
        if cached is not None and cached != record:
            self._records.pop(digest)  # collected, or collected and pushed again
        return record

    async def record_for_reading(self, digest: Digest) -> BlobRecord | None:
        """The record to serve the blob from, from the cache if it is there: only for
        reads, which `read` makes safe against a record that changed."""
        record = self._records.get(digest)
        if record is None:
            record = await self.get(digest)
            if record is not None:
                self._records.put(digest, record)
        return record

    async def begin_upload(self, part_size: int | None = None) -> Upload:
        return await self.driver.begin_upload(paths.new_blob_data(), part_size)

    async def commit(self, digest: Digest, upload: Upload, *, verified: bool = True
                     ) -> BlobRecord:
        """Publish finished upload bytes as `digest`.

        `verified=False` means the caller hashed with another algorithm than the digest's
        (a sha512 digest announced only at the end): the bytes are then read back once and
        hashed before anything becomes visible.
        """
        await upload.commit()
        record = BlobRecord(digest, upload.size, upload.key)
        if not verified:
            hasher = digest.hasher()
            async for chunk in self.driver.read(upload.key):
                await asyncio.to_thread(hasher.update, chunk)
            if hasher.hexdigest() != digest.hex:
                await self.driver.delete(upload.key)
                raise DigestMismatch(f"content does not match {digest}")
        return await self._publish(record)

    async def put_bytes(self, digest: Digest, data: bytes) -> BlobRecord:
        """Store a small blob (a manifest) given whole."""
        existing = await self.get(digest)
        if existing and await self.driver.stat(existing.key):
            return existing
        upload = await self.begin_upload()
        try:
            await upload.write(data)
        except BaseException:
            await upload.abort()
            raise
        return await self.commit(digest, upload)

    async def _publish(self, record: BlobRecord) -> BlobRecord:
        body = record.to_json()
        key = paths.blob_record(record.digest)
        try:
            await self.driver.put(key, body, if_none_match=True)
            return record
        except PreconditionFailed:
            pass
        # Someone published this digest first. Keep theirs if its bytes are still there.
        current = await self.driver.get(key)
        if current is not None:
            existing = BlobRecord.from_json(record.digest, current.data)
            if existing.key == record.key:
                return record  # our write landed; a retry of it was what failed (S3)
            if await self.driver.stat(existing.key):
                await self.driver.delete(record.key)
                return existing
            try:
                await self.driver.put(key, body, if_match=current.etag)
                return record
            except PreconditionFailed:
                pass
        else:
            try:
                await self.driver.put(key, body, if_none_match=True)
                return record
            except PreconditionFailed:
                pass
        winner = await self.get(record.digest)
        if winner is None:
            raise RuntimeError(f"blob record for {record.digest} vanished while publishing")
        if winner.key != record.key:
            await self.driver.delete(record.key)
        return winner

    async def read(self, record: BlobRecord, start: int = 0, end: int | None = None
                   ) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the blob. If the record's bytes are gone (collected, and
        the blob pushed again under a new key), read from the record stored now; raise
        FileNotFoundError if there is none."""
        chunks = self.driver.read(record.key, start, end)
        try:
            try:
                first = await anext(chunks)
            except FileNotFoundError:
                current = await self.get(record.digest)
                if current is None or current.key == record.key:
                    raise
                await chunks.aclose()
                chunks = self.driver.read(current.key, start, end)
                first = await anext(chunks)
            yield first
            async for chunk in chunks:
                yield chunk
        except StopAsyncIteration:
            return
        finally:
            await chunks.aclose()

    async def read_all(self, record: BlobRecord) -> bytes:
        return b"".join([chunk async for chunk in self.read(record)])

    async def presign(self, record: BlobRecord, expires: int) -> str | None:
        """A URL the bytes can be fetched from directly for `expires` seconds, if the
        storage gives one."""
        return await self.driver.presign(record.key, expires)

    async def delete(self, digest: Digest) -> None:
        """Remove a blob from the store entirely: its record, then its bytes."""
        record = await self.get(digest)
        await self.delete_record(digest)
        if record is not None:
            await self.delete_data(record.key)

    async def delete_record(self, digest: Digest) -> None:
        """Make a blob invisible (garbage collection); its bytes are deleted separately."""
        self._records.pop(digest)
        await self.driver.delete(paths.blob_record(digest))

    async def delete_data(self, key: str) -> None:
        """Delete stored bytes (a record's, or ones no record points at) by their key."""
        await self.driver.delete(key)

    async def restore_record(self, record: BlobRecord) -> None:
        """Put back a record garbage collection removed, unless the blob was pushed again."""
        with contextlib.suppress(PreconditionFailed):
            await self.driver.put(paths.blob_record(record.digest), record.to_json(),
                                  if_none_match=True)
