"""Manifest reads cost as few storage round trips as possible (each is one S3 GET)."""

from __future__ import annotations

from sshreg.store.registry_store import RegistryStore

from .helpers_api import CountingDriver, push_image


async def test_head_and_warm_get_of_a_tag_cost_two_reads(client, registry):
    image = await push_image(client, "cache/app", "1", seed="c")
    counting = CountingDriver(registry.store.driver)
    registry.store = RegistryStore(counting)
    assert (await client.head("/v2/cache/app/manifests/1")).status == 200
    assert counting.calls["get"] == 2  # tag, link
    resp = await client.get("/v2/cache/app/manifests/1")
    assert await resp.read() == image.manifest
    counting.calls.clear()
    resp = await client.get("/v2/cache/app/manifests/1")
    assert await resp.read() == image.manifest and counting.calls["get"] == 2
