"""A manifest PUT undercut by garbage collection on another gateway, on both storages.

The PUT checks that what the manifest references is stored, writes the manifest and its
tags, then looks again (`registry/manifests.py`). Collection elsewhere may remove a blob or
a child manifest in between: the PUT must then fail with MANIFEST_BLOB_UNKNOWN naming what
went, and put its tags back, rather than answer 201 for an image that cannot be pulled.
The removal is run where it would land at the worst: right after the manifest is written,
before its tags.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sshreg.oci import OCI_INDEX
from sshreg.references import Digest
from tests.support.hashing import digest_of

from .helpers_api import (
    OCI_CONFIG,
    OCI_LAYER,
    assert_error,
    descriptor,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    put_manifest,
    tags_of,
)


def collect_after_the_manifest_is_written(monkeypatch, registry,
                                          removal: Callable[[], Awaitable[None]]) -> None:
    """Run `removal` (what gc on another gateway deletes) once, between the PUT's reference
    check and its re-check: after the manifest is stored and linked, before its tags."""
    put = registry.store.manifests.put
    done = False

    async def put_then_collect(name, link, data) -> None:
        nonlocal done
        await put(name, link, data)
        if not done:
            done = True
            await removal()

    monkeypatch.setattr(registry.store.manifests, "put", put_then_collect)


async def removed_meanwhile(resp) -> list[str]:
    await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    return (await resp.json())["errors"][0]["detail"]["removed_meanwhile"]


async def test_a_blob_collected_while_the_manifest_is_written_fails_the_put_and_its_tags_go_back(
        client, registry, monkeypatch):
    earlier = await push_image(client, "app", "moved", seed="earlier")
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer gc takes meanwhile" * 9
    await push_blob(client, "app", config)
    await push_blob(client, "app", layer)
    manifest = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])

    async def sweep_the_layer() -> None:  # what gc's sweep does to a blob nothing reaches
        digest = Digest.parse(digest_of(layer))
        await registry.store.repositories.unlink_blob("app", digest)
        await registry.store.blobs.delete(digest)

    collect_after_the_manifest_is_written(monkeypatch, registry, sweep_the_layer)
    resp = await put_manifest(client, "app", digest_of(manifest), manifest,
                              params=[("tag", "fresh"), ("tag", "moved")])

    assert await removed_meanwhile(resp) == [digest_of(layer)]
    # "fresh" did not exist: gone again. "moved" pointed at another image: points there again.
    assert await tags_of(client, "app") == ["moved"]
    resp = await client.get("/v2/app/manifests/moved")
    assert resp.status == 200 and await resp.read() == earlier.manifest
    assert (await client.get("/v2/app/manifests/fresh")).status == 404
    # The client's retry (the layer pushed again) succeeds.
    await push_blob(client, "app", layer)
    resp = await put_manifest(client, "app", "fresh", manifest)
    assert resp.status == 201, await resp.text()
    assert await tags_of(client, "app") == ["fresh", "moved"]


async def test_a_child_manifest_collected_while_an_index_is_written_fails_the_put(
        client, registry, monkeypatch):
    kept = await push_image(client, "multi", seed="amd64")
    taken = await push_image(client, "multi", seed="arm64")
    index = index_manifest([kept.descriptor, taken.descriptor])

    async def unlink_the_child() -> None:  # what gc's sweep does to an untagged manifest
        await registry.store.manifests.delete("multi", Digest.parse(taken.digest),
                                              keep_tags=True)

    collect_after_the_manifest_is_written(monkeypatch, registry, unlink_the_child)
    resp = await put_manifest(client, "multi", "latest", index, OCI_INDEX)

    assert await removed_meanwhile(resp) == [taken.digest]
    assert await tags_of(client, "multi") == []
    assert (await client.get("/v2/multi/manifests/latest")).status == 404
    # The client's retry (the child pushed again) succeeds.
    resp = await put_manifest(client, "multi", taken.digest, taken.manifest)
    assert resp.status == 201, await resp.text()
    resp = await put_manifest(client, "multi", "latest", index, OCI_INDEX)
    assert resp.status == 201, await resp.text()
