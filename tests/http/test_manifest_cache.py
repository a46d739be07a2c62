"""Manifest reads cost as few storage round trips as possible (each is one S3 GET)."""

from __future__ import annotations

from sshreg.references import Digest
from sshreg.store.manifests import ManifestCache
from sshreg.store.registry_store import RegistryStore

from .helpers_api import push_image


class CountingDriver:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.gets = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def get(self, key):
        self.gets += 1
        return await self.inner.get(key)


async def test_head_and_warm_get_of_a_tag_cost_two_reads(client, registry):
    image = await push_image(client, "cache/app", "1", seed="c")
    counting = CountingDriver(registry.store.driver)
    registry.store = RegistryStore(counting)
    assert (await client.head("/v2/cache/app/manifests/1")).status == 200
    assert counting.gets == 2  # tag, link
    resp = await client.get("/v2/cache/app/manifests/1")
    assert await resp.read() == image.manifest
    counting.gets = 0
    resp = await client.get("/v2/cache/app/manifests/1")
    assert await resp.read() == image.manifest and counting.gets == 2


def test_the_cache_keeps_within_its_byte_budget_and_drops_the_oldest():
    cache = ManifestCache(max_bytes=1000)
    digests = [Digest.of(bytes([i]) * 200) for i in range(8)]
    for i, d in enumerate(digests):
        cache.put(d, bytes([i]) * 200)
    assert cache.get(digests[0]) is None
    assert cache.get(digests[-1]) == bytes([7]) * 200
    assert sum(cache.get(d) is not None for d in digests) == 5
    cache.put(Digest.of(b"x" * 400), b"x" * 400)  # over a quarter of the budget: not kept
    assert cache.get(Digest.of(b"x" * 400)) is None
