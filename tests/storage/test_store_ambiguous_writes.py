"""A conditional write can succeed on the server and still be reported as failed: boto3
retries a PutObject whose answer was lost, and the retry meets its own object (412). The
store must not then take its own blob for a rival's and delete the bytes."""

from __future__ import annotations

import hashlib

from sshreg.references import Digest
from sshreg.storage.base import PreconditionFailed
from sshreg.store.registry_store import RegistryStore


class LostAnswers:
    """Wraps a driver: the first `put(if_none_match=True)` of each key is written, then
    reported as PreconditionFailed, as a retried S3 request would see it."""

    def __init__(self, driver) -> None:
        self._driver = driver
        self._seen: set[str] = set()

    def __getattr__(self, name: str):
        return getattr(self._driver, name)

    async def put(self, key, data, *, if_match=None, if_none_match=False):
        etag = await self._driver.put(key, data, if_match=if_match, if_none_match=if_none_match)
        if if_none_match and key not in self._seen:
            self._seen.add(key)
            raise PreconditionFailed(key)
        return etag


async def test_a_blob_whose_publication_was_retried_keeps_its_bytes(driver):
    store = RegistryStore(LostAnswers(driver))
    data = b"layer bytes" * 1000
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
    upload = await store.blobs.begin_upload()
    await upload.write(data)
    record = await store.blobs.commit(digest, upload)
    assert await driver.stat(record.key) is not None
    assert await store.blobs.read_all(await store.blobs.get(digest)) == data
