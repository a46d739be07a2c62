"""A gateway keeps the blob records it served, so a warm blob GET reads the link and the
bytes only; a record that changed under it (the blob collected, or collected and pushed
again through another gateway) never makes it serve missing or wrong bytes."""

from __future__ import annotations

import asyncio
import urllib.request

from sshreg.references import Digest
from sshreg.storage.filesystem import FilesystemDriver
from sshreg.store.registry_store import RegistryStore

from .helpers_api import CountingDriver, assert_error, push_blob, serving

BLOB = bytes(range(256)) * 64


async def push_again_elsewhere(driver, digest: str) -> None:
    """What another gateway does: collect the blob entirely (record, then bytes), then take
    a push of the same content, which lands under a new bytes key. The link stays."""
    other = RegistryStore(driver)
    d = Digest.parse(digest)
    old = await other.blobs.get(d)
    await other.blobs.delete(d)
    upload = await other.blobs.begin_upload()
    await upload.write(BLOB)
    new = await other.blobs.commit(d, upload)
    assert old is not None and new.key != old.key


async def test_a_warm_blob_get_reads_no_record(client, registry):
    digest = await push_blob(client, "cache/blob", BLOB)
    counting = CountingDriver(registry.store.driver)
    registry.store = RegistryStore(counting)
    for _ in range(3):
        resp = await client.get(f"/v2/cache/blob/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == BLOB
    assert counting.calls["get"] == 1  # the first GET's record; the link is a stat, the bytes a read


async def test_a_blob_pushed_again_after_collection_is_served_from_its_new_bytes(
        client, registry, driver):
    digest = await push_blob(client, "cache/blob", BLOB)
    assert (await client.get(f"/v2/cache/blob/blobs/{digest}")).status == 200
    await push_again_elsewhere(driver, digest)

    resp = await client.get(f"/v2/cache/blob/blobs/{digest}")
    assert resp.status == 200 and await resp.read() == BLOB
    resp = await client.get(f"/v2/cache/blob/blobs/{digest}", headers={"Range": "bytes=5-9"})
    assert resp.status == 206 and await resp.read() == BLOB[5:10]
    resp = await client.head(f"/v2/cache/blob/blobs/{digest}")
    assert resp.status == 200 and resp.headers["Content-Length"] == str(len(BLOB))


async def test_a_blob_collected_while_cached_is_unknown_not_a_broken_body(client, driver):
    digest = await push_blob(client, "cache/blob", BLOB)
    assert (await client.get(f"/v2/cache/blob/blobs/{digest}")).status == 200
    await RegistryStore(driver).blobs.delete(Digest.parse(digest))  # another gateway's GC

    await assert_error(await client.get(f"/v2/cache/blob/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    await assert_error(await client.get(f"/v2/cache/blob/blobs/{digest}",
                                        headers={"Range": "bytes=0-9"}), 404, "BLOB_UNKNOWN")


async def test_with_redirects_the_url_names_the_bytes_stored_now(driver):
    async with serving(driver, redirect_expiry=300) as (_registry, client):
        digest = await push_blob(client, "cache/blob", BLOB)
        await client.get(f"/v2/cache/blob/blobs/{digest}", headers={"Range": "bytes=0-0"})
        await push_again_elsewhere(driver, digest)

        resp = await client.get(f"/v2/cache/blob/blobs/{digest}", allow_redirects=False)
        if isinstance(driver, FilesystemDriver):
            assert resp.status == 200 and await resp.read() == BLOB
        else:
            assert resp.status == 307
            url = resp.headers["Location"]
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
            assert body == BLOB
