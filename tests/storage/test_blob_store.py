"""Blob records and the bytes they point at (`store/blobs.py`), on every storage."""

from __future__ import annotations

from sshreg.references import Digest
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
