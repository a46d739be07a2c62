"""Eviction of cached images: by the time of their last pull and by the cache's size, never
the team's own images, with garbage collection removing what nothing else links."""

from __future__ import annotations

import asyncio
import time

from sshreg.management.collection import Collection
from sshreg.management.eviction import evictions
from sshreg.management.settings import GcSettings
from sshreg.mirror.settings import MirrorSettings
from sshreg.store import paths
from tests.http.helpers_api import CountingDriver, has_blob_record, push_image, tags_of
from tests.http.helpers_mirror import PREFIX, mirroring
from tests.http.test_mirror import pull, pushed_upstream

NOW_GC = GcSettings(grace=0, safety=0)


async def test_an_image_not_pulled_for_keep_is_evicted_and_own_images_stay(
        driver, upstream, tmp_path):
    cached = await pushed_upstream(upstream, name="team/old", seed="old")
    fresh = await pushed_upstream(upstream, name="team/fresh", seed="fresh")
    async with mirroring(driver, upstream, tmp_path / "spool", keep=2) as (registry, client):
        await pull(client, f"{PREFIX}/team/old", "1", cached)
        own = await push_image(client, "team/own", "1", seed="own")  # as old as the cache
        await asyncio.sleep(3)  # S3 keeps whole seconds
        await pull(client, f"{PREFIX}/team/fresh", "1", fresh)
        report = await Collection(registry.store, NOW_GC, registry.mirrors.settings).run()
        assert report.tags == [f"{PREFIX}/team/old:1"]
        assert await tags_of(client, f"{PREFIX}/team/fresh") == ["1"]
        assert await tags_of(client, "team/own") == ["1"]
        for digest in own.blobs:
            assert await has_blob_record(driver, digest)
        for digest in cached.blobs:  # no other repository links them
            assert not await has_blob_record(driver, digest)
        fetched = upstream.requests[("GET", "/v2/team/old/manifests/1")]
        await pull(client, f"{PREFIX}/team/old", "1", cached)  # pulled through again
        assert upstream.requests[("GET", "/v2/team/old/manifests/1")] == fetched + 1


async def test_beyond_max_bytes_the_least_recently_pulled_images_go_first(
        driver, upstream, tmp_path):
    images = {name: await pushed_upstream(upstream, name=f"team/{name}", seed=name)
              for name in ("a", "b", "c")}
    one_image = sum(len(b) for b in images["a"].blobs.values()) + len(images["a"].manifest)
    async with mirroring(driver, upstream, tmp_path / "spool",
                         max_bytes=2 * one_image) as (registry, client):
        for name in ("b", "a", "c"):  # b is the least recently pulled
            await pull(client, f"{PREFIX}/team/{name}", "1", images[name])
            await asyncio.sleep(1.1)
        evicted = await evictions(registry.store, registry.mirrors.settings, time.time())
    assert [e.repository for e in evicted] == [f"{PREFIX}/team/b"]


async def test_images_within_keep_and_max_bytes_are_not_evicted(driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    async with mirroring(driver, upstream, tmp_path / "spool", max_bytes=1 << 30
                         ) as (registry, client):
        await pull(client, f"{PREFIX}/team/app", "1", image)
        assert await evictions(registry.store, registry.mirrors.settings, time.time()) == ()


async def test_a_pull_is_noted_at_most_once_per_interval(driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    counting = CountingDriver(driver)
    marker = paths.mirror_pulled(f"{PREFIX}/team/app")
    puts: list[str] = []
    original_put = driver.put

    async def put(key, *args, **kwargs):
        puts.append(key)
        return await original_put(key, *args, **kwargs)

    counting.put = put
    async with mirroring(counting, upstream, tmp_path / "spool", keep=10) as (_, client):
        for _ in range(5):  # within one second: one mark (the interval is keep / 10)
            await pull(client, f"{PREFIX}/team/app", "1", image)
        assert puts.count(marker) == 1
        await asyncio.sleep(1.1)
        await pull(client, f"{PREFIX}/team/app", "1", image)
    assert puts.count(marker) == 2


def test_the_pull_mark_interval_is_hourly_and_a_tenth_of_a_short_keep():
    assert MirrorSettings("a", "https://a").pull_mark_interval == 3600
    assert MirrorSettings("a", "https://a", keep=600).pull_mark_interval == 60
