"""R2 takes one write per second per key (issue 20): the store does not write what is
already there, and coalesces concurrent writers of one tag in a gateway. On both storages."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

from sshreg.references import Digest
from sshreg.store import immutable
from sshreg.store.coalesce import SUPERSEDED, LatestWins
from sshreg.store.manifests import ManifestLink
from sshreg.store.paths import GC_LEASE_KEY
from sshreg.store.registry_store import RegistryStore

DIGEST = Digest.parse("sha256:" + hashlib.sha256(b"manifest").hexdigest())
LINK = ManifestLink(DIGEST, "application/vnd.oci.image.manifest.v1+json", 8)


class CountingWrites:
    """Wraps a driver and counts the `put`s of each key."""

    def __init__(self, driver) -> None:
        self._driver = driver
        self.puts: Counter[str] = Counter()

    def __getattr__(self, name: str):
        return getattr(self._driver, name)

    async def put(self, key, data, **conditions):
        self.puts[key] += 1
        return await self._driver.put(key, data, **conditions)


async def test_links_written_again_at_once_are_not_rewritten(driver):
    counting = CountingWrites(driver)
    store = RegistryStore(counting)
    for _ in range(3):
        await store.repositories.link_blob("app", DIGEST)
        await store.manifests.restore("app", LINK)
    assert set(counting.puts.values()) == {1}, counting.puts


async def test_links_are_rewritten_while_a_gc_holds_its_lease(driver):
    """A running collection spares only what was written since it started."""
    counting = CountingWrites(driver)
    store = RegistryStore(counting)
    await store.manifests.restore("app", LINK)
    await driver.put(GC_LEASE_KEY, b"{}")
    await store.manifests.restore("app", LINK)
    assert list(counting.puts.values()) == [2]


async def test_links_older_than_the_fresh_time_are_renewed(driver, monkeypatch):
    monkeypatch.setattr(immutable, "FRESH_SECONDS", 0.0)
    counting = CountingWrites(driver)
    store = RegistryStore(counting)
    await store.repositories.link_blob("app", DIGEST)
    await store.repositories.link_blob("app", DIGEST)
    assert counting.puts[f"repositories/app/_layers/sha256/{DIGEST.hex}"] == 2


async def test_waiting_writers_of_one_key_are_superseded_by_the_latest():
    coalescer, written, writers = LatestWins(), [], 10

    async def write(value: int) -> int:
        written.append(value)
        await asyncio.sleep(0.05)
        return value

    results = await asyncio.gather(*(coalescer.run("tag", lambda v=v: write(v))
                                     for v in range(writers)))
    assert written == [0, writers - 1]  # the one in flight, then the latest
    assert results[0] == 0 and results[-1] == writers - 1
    assert all(r is SUPERSEDED for r in results[1:-1])
    other = await coalescer.run("another tag", lambda: write(99))
    assert other == 99


async def test_concurrent_set_tag_in_one_store_writes_the_latest_and_skips_the_rest(driver):
    counting = CountingWrites(driver)
    store = RegistryStore(counting)
    digests = [Digest.parse("sha256:" + hashlib.sha256(bytes([i])).hexdigest())
               for i in range(8)]
    await asyncio.gather(*(store.tags.set("app", "latest", d) for d in digests))
    assert await store.tags.get("app", "latest") == digests[-1]
    assert counting.puts["repositories/app/_manifests/tags/latest"] <= 2
