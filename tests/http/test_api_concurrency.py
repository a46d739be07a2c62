"""Concurrent pushes of the same content: all succeed, one copy is stored, nothing is left over."""

from __future__ import annotations

import asyncio
import os

from tests.support.hashing import digest_of

from .helpers_api import blob_copies, leftover_uploads, push_image, put_manifest, start_upload

BLOB = os.urandom(3 << 20)
DIGEST = digest_of(BLOB)


async def patch_style_upload(client, name: str) -> int:
    location = await start_upload(client, name)

    async def body():
        for i in range(0, len(BLOB), 256 << 10):
            yield BLOB[i:i + (256 << 10)]
            await asyncio.sleep(0)

    resp = await client.patch(location, data=body())
    assert resp.status == 202
    resp = await client.put(location, params={"digest": DIGEST})
    return resp.status


async def single_post_upload(client, name: str) -> int:
    resp = await client.post(f"/v2/{name}/blobs/uploads/", params={"digest": DIGEST}, data=BLOB)
    return resp.status


async def test_eight_concurrent_uploads_of_one_blob_all_succeed_and_store_one_copy(client, driver):
    uploads = [patch_style_upload(client, "app") if i % 2 else single_post_upload(client, "app")
               for i in range(8)]
    assert await asyncio.gather(*uploads) == [201] * 8
    assert len(await blob_copies(driver)) == 1
    assert await leftover_uploads(driver) == 0
    resp = await client.get(f"/v2/app/blobs/{DIGEST}")
    assert resp.headers["Docker-Content-Digest"] == DIGEST
    assert await resp.read() == BLOB


async def test_concurrent_uploads_of_one_blob_to_different_repositories_link_it_everywhere(client, driver):
    names = [f"repo{i}" for i in range(8)]
    assert await asyncio.gather(*(patch_style_upload(client, n) for n in names)) == [201] * 8
    assert len(await blob_copies(driver)) == 1
    assert await leftover_uploads(driver) == 0
    for name in names:
        resp = await client.get(f"/v2/{name}/blobs/{DIGEST}")
        assert resp.status == 200
        assert await resp.read() == BLOB


async def test_concurrent_pushes_of_one_manifest_under_many_tags_all_land(client, driver):
    image = await push_image(client, "app")
    tags = [f"t{i}" for i in range(8)]
    responses = await asyncio.gather(*(put_manifest(client, "app", t, image.manifest) for t in tags))
    assert [r.status for r in responses] == [201] * 8
    resp = await client.get("/v2/app/tags/list")
    assert (await resp.json())["tags"] == sorted(tags)
    # Config, layer and the manifest's own bytes: each stored once.
    assert len(await blob_copies(driver)) == 3
    assert await leftover_uploads(driver) == 0


async def test_concurrent_retags_leave_the_tag_on_one_of_the_pushed_manifests(client):
    images = [await push_image(client, "app", seed=str(i)) for i in range(6)]
    responses = await asyncio.gather(*(put_manifest(client, "app", "latest", im.manifest) for im in images))
    assert [r.status for r in responses] == [201] * 6
    resp = await client.get("/v2/app/manifests/latest")
    assert resp.headers["Docker-Content-Digest"] in {im.digest for im in images}
