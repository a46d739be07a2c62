"""Blob records and the bytes they point at (`store/blobs.py`), on every storage."""

from __future__ import annotations

import os

from sshreg.references import Digest
from sshreg.storage.filesystem.driver import READ_CHUNK as FILESYSTEM_READ
from sshreg.storage.s3.driver import READ_CHUNK as S3_READ
from sshreg.store.registry_store import RegistryStore

DATA = b"a small blob"
DIGEST = Digest.of(DATA)


async def test_a_deleted_blob_leaves_neither_its_record_nor_its_bytes(driver):
    store = RegistryStore(driver)
    record = await store.blobs.put_bytes(DIGEST, DATA)
    assert await driver.stat(record.key) is not None
    await store.blobs.delete(DIGEST)
    assert await store.blobs.get(DIGEST) is None
    assert await driver.stat(record.key) is None


async def test_restoring_a_removed_record_puts_it_back(driver):
    store = RegistryStore(driver)
    record = await store.blobs.put_bytes(DIGEST, DATA)
    await store.blobs.delete_record(DIGEST)
    assert await store.blobs.get(DIGEST) is None
    await store.blobs.restore_record(record)
    assert await store.blobs.get(DIGEST) == record
    assert await store.blobs.read_all(record) == DATA


async def test_restoring_a_removed_record_keeps_the_record_of_a_push_made_meanwhile(driver):
    """Garbage collection removed the record, the blob was pushed again (new bytes, new
    record), then the collection puts its record back: the push's record stays."""
    store = RegistryStore(driver)
    removed = await store.blobs.put_bytes(DIGEST, DATA)
    await store.blobs.delete_record(DIGEST)
    pushed = await store.blobs.put_bytes(DIGEST, DATA)
    assert pushed.key != removed.key
    await store.blobs.restore_record(removed)
    assert await store.blobs.get(DIGEST) == pushed
    assert await store.blobs.read_all(pushed) == DATA


async def test_reading_a_blob_whole_joins_every_chunk_storage_reads(driver):
    """Larger than one read of either storage (4 MiB on the filesystem, 1 MiB on S3)."""
    data = os.urandom(max(FILESYSTEM_READ, S3_READ) + 12345)
    store = RegistryStore(driver)
    record = await store.blobs.put_bytes(Digest.of(data), data)
    assert await store.blobs.read_all(record) == data
