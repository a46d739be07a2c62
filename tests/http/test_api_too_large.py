"""A blob beyond what the storage can hold is refused with 413, not a retryable 503."""

from __future__ import annotations

import os

from aiohttp.test_utils import RawTestServer, TestClient

import sshreg.storage.s3.upload as s3_upload
from sshreg.registry.app import Registry
from sshreg.store.registry_store import RegistryStore
from tests.conftest import identify_from_test_header, s3_test_driver
from tests.support.hashing import digest_of


async def test_a_blob_beyond_the_part_limit_is_413_and_nothing_is_stored(s3_server, monkeypatch):
    monkeypatch.setattr(s3_upload, "MAX_PARTS", 2)  # 2 parts of 5 MiB: 10 MiB is the limit
    driver = s3_test_driver(s3_server)
    registry = Registry(RegistryStore(driver), identify=identify_from_test_header)
    await registry.start()
    try:
        async with TestClient(RawTestServer(registry.handle)) as client:
            data = os.urandom(11 << 20)
            resp = await client.post("/v2/big/blob/blobs/uploads/",
                                     params={"digest": digest_of(data)}, data=data)
            assert resp.status == 413
            assert (await resp.json())["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
            assert [o async for o in driver.list("blobs/")] == []
    finally:
        await registry.close()
        await driver.close()
