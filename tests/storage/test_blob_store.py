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
