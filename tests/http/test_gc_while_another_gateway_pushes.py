"""Garbage collection on one gateway while another gateway pushes, on both storages.

Two `Registry` objects on one storage driver are two gateways: each has its own store
object and its own pins, so nothing but storage tells the collector what the other one is
doing (as with two `sshreg serve` processes on one bucket). The storage seen by the
collector is wrapped so that a test can run the other gateway's push at the worst moment
of a collection: between a check and a delete, between the deletions and the last look.

What must hold whatever the interleaving: a manifest PUT answered 201 leaves its image
complete (manifest, tag, every blob readable through the repository); a PUT that lost the
race is reported as failed, and the client's retry then succeeds. Each interleaving here has
one right outcome, and the tests require it: a push whose writes land before gc deletes
what it uses succeeds, one whose re-check comes after fails.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiohttp.test_utils import RawTestServer, TestClient

from sshreg.management import lease
from sshreg.management.gc import GcBusy, GcSettings
from sshreg.references import Digest
from sshreg.registry.app import Registry
from sshreg.storage.base import PreconditionFailed
from sshreg.storage.filesystem import FilesystemDriver
from sshreg.store import paths
from sshreg.store.registry_store import RegistryStore
from tests.conftest import identify_from_test_header

from .helpers_api import HookedDriver, assert_error, push_image, put_manifest, tags_of
from .test_gc import NOW, SettledCollector


class PausingStore(RegistryStore):
    """The other gateway's store: a manifest PUT can be held after its checks passed and
    its manifest bytes were found stored, before the manifest is linked and tagged."""

    def __init__(self, driver) -> None:
        super().__init__(driver)
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()
        put_bytes = self.blobs.put_bytes  # the one BlobStore every part of this store uses

        async def paused_put_bytes(digest, data):
            record = await put_bytes(digest, data)
            if self.hold is not None:
                self.held.set()
                await self.hold.wait()
            return record

        self.blobs.put_bytes = paused_put_bytes  # type: ignore[method-assign]


async def other_gateway(driver) -> tuple[Registry, TestClient]:
    registry = Registry(PausingStore(driver), identify=identify_from_test_header)
    await registry.start()
    client = TestClient(RawTestServer(registry.handle))
    await client.start_server()
    return registry, client


def collector_on(registry: Registry, driver: HookedDriver) -> SettledCollector:
    """The collector of the gateway `registry` belongs to, seeing storage through `driver`."""
    return SettledCollector(RegistryStore(driver, pins=registry.store.pins), GcSettings(**NOW))


async def assert_complete(client: TestClient, name: str, tag: str, image) -> None:
    resp = await client.get(f"/v2/{name}/manifests/{tag}")
    assert resp.status == 200, await resp.text()
    assert await resp.read() == image.manifest
    for digest, data in image.blobs.items():
        resp = await client.get(f"/v2/{name}/blobs/{digest}")
        assert resp.status == 200, (digest, await resp.text())
        assert await resp.read() == data


async def garbage_image(client: TestClient, name: str, *, untag_only: bool = False):
    """An image that became garbage, still stored: its manifest was deleted (or, with
    `untag_only`, only its tag, which leaves an untagged manifest for gc to remove)."""
    image = await push_image(client, name, "old", seed=os.urandom(8).hex())
    reference = "old" if untag_only else image.digest
    assert (await client.delete(f"/v2/{name}/manifests/{reference}")).status == 202
    return image


async def test_a_push_checked_before_gc_unlinked_its_blobs_and_written_after_fails_then_succeeds(
        driver, registry, client):
    """Gateway 2 checks the manifest's blobs (still linked), gc on gateway 1 unlinks them and
    removes their records, then gateway 2 links and tags the manifest. Its re-check sees the
    records gone: the PUT fails with MANIFEST_BLOB_UNKNOWN and leaves no tag; gc's last look
    sees the manifest it wrote and puts back what it uses; the client's retry succeeds."""
    name = "race/unlinked"
    image = await garbage_image(client, name)
    records = {paths.blob_record(Digest.parse(d)) for d in (*image.blobs, image.digest)}
    other, other_client = await other_gateway(driver)
    put: asyncio.Task | None = None
    deleted: set[str] = set()

    async def before_delete(key: str) -> None:
        nonlocal put
        if put is None and "/_layers/" in key:  # the first unlink: gateway 2 checks now
            other.store.hold = asyncio.Event()
            put = asyncio.create_task(put_manifest(other_client, name, "new", image.manifest))
            await asyncio.wait_for(other.store.held.wait(), 30)

    async def after_delete(key: str) -> None:
        deleted.add(key)
        if key in records and records <= deleted:  # every record gone: gateway 2 goes on
            assert put is not None and other.store.hold is not None
            other.store.hold.set()
            await asyncio.wait_for(asyncio.shield(put), 30)

    try:
        gc = collector_on(registry, HookedDriver(driver, before_delete=before_delete,
                                                 after_delete=after_delete))
        report = await gc.run()
        assert put is not None and put.done()
        resp = put.result()
        await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
        gone = (await resp.json())["errors"][0]["detail"]["removed_meanwhile"]
        assert sorted(gone) == sorted([image.digest, *image.blobs])
        assert "new" not in await tags_of(other_client, name)
        assert report.blobs == 0 and report.links == 0  # all put back, nothing lost its bytes
        # Nothing broken is served: by digest, the manifest gateway 2 linked is whole.
        await assert_complete(other_client, name, image.digest, image)
        other.store.hold = None
        for digest in image.blobs:  # the client's retry: HEAD finds every blob, then PUT
            assert (await other_client.head(f"/v2/{name}/blobs/{digest}")).status == 200
        resp = await put_manifest(other_client, name, "new", image.manifest)
        assert resp.status == 201, await resp.text()
        await assert_complete(other_client, name, "new", image)
        await assert_complete(client, name, "new", image)
    finally:
        await other_client.close()
        await other.close()


async def test_a_push_written_before_gcs_first_deletion_on_another_gateway_is_kept(
        driver, registry, client):
    """The same push finished, re-check included, while gc (past its second look) was about
    to unlink the first blob it uses: the PUT succeeds, gc deletes what it uses anyway, and
    its last look puts all of it back. A push during a collection does succeed."""
    name = "race/kept"
    image = await garbage_image(client, name)
    other, other_client = await other_gateway(driver)
    put: list = []

    async def before_delete(key: str) -> None:
        if not put and "/_layers/" in key:  # gc's first unlink
            put.append(await put_manifest(other_client, name, "new", image.manifest))

    try:
        report = await collector_on(registry, HookedDriver(driver, before_delete=before_delete)
                                    ).run()
        assert put and put[0].status == 201, await put[0].text()
        assert report.blobs == 0 and report.links == 0 and report.spared == 5
        await assert_complete(other_client, name, "new", image)
        await assert_complete(client, name, "new", image)
    finally:
        await other_client.close()
        await other.close()


async def test_a_tag_put_on_a_doomed_manifest_between_gcs_check_and_its_delete_survives(
        driver, registry, client):
    """gc on gateway 1 finds an untagged manifest old and unreachable and is about to delete
    it; in between, gateway 2 pushes the same manifest again under a tag. The tag stays and
    the image stays whole (gc must neither delete the new tag nor leave it dangling)."""
    name = "race/retagged"
    image = await garbage_image(client, name, untag_only=True)
    revision = f"repositories/{name}/_manifests/revisions/{image.digest.replace(':', '/')}"
    other, other_client = await other_gateway(driver)
    put: list = []

    async def after_stat(key: str) -> None:
        if key == revision and not put:  # gc's last check before deleting the manifest
            put.append(await put_manifest(other_client, name, "new", image.manifest))

    try:
        gc = collector_on(registry, HookedDriver(driver, after_stat=after_stat))
        await gc.run()
        assert put and put[0].status == 201, await put[0].text()
        assert await tags_of(client, name) == ["new"]
        await assert_complete(client, name, "new", image)
        await assert_complete(other_client, name, "new", image)
    finally:
        await other_client.close()
        await other.close()


async def test_a_repository_made_on_one_gateway_is_known_to_the_other_after_gc(
        driver, registry, client):
    """The only local cache, the set of repositories a store knows exist, holds facts that
    cannot become false: gc never removes a repository's catalog entry, even when it
    empties the repository, so the other gateway's answers stay right."""
    other, other_client = await other_gateway(driver)
    try:
        assert (await other_client.get("/v2/made/here/tags/list")).status == 404
        await push_image(other_client, "made/here", "1", seed="cache")  # gateway 2 caches it
        resp = await client.get("/v2/_catalog")
        assert "made/here" in (await resp.json())["repositories"]
        assert await tags_of(client, "made/here") == ["1"]
        assert (await client.delete("/v2/made/here/manifests/1")).status == 202
        await collector_on(registry, HookedDriver(driver)).run()  # empties the repository
        for gateway in (client, other_client):
            assert await tags_of(gateway, "made/here") == []
            resp = await gateway.get("/v2/_catalog")
            assert "made/here" in (await resp.json())["repositories"]
        await push_image(other_client, "made/here", "2", seed="again")
        assert await tags_of(client, "made/here") == ["2"]
        markers = [o.key async for o in driver.list("catalog/")]
        assert "catalog/made/here/_repository" in markers
    finally:
        await other_client.close()
        await other.close()


async def test_tags_list_of_a_repository_unknown_everywhere_is_name_unknown(driver, client):
    """The negative answer is never cached: a repository pushed elsewhere appears at once."""
    other, other_client = await other_gateway(driver)
    try:
        resp = await client.get("/v2/later/app/tags/list")
        assert resp.status == 404
        assert json.loads(await resp.read())["errors"][0]["code"] == "NAME_UNKNOWN"
        await push_image(other_client, "later/app", "1", seed="later")
        assert await tags_of(client, "later/app") == ["1"]
    finally:
        await other_client.close()
        await other.close()


# -- one collection at a time --------------------------------------------------------------


async def test_a_second_collection_on_another_gateway_is_refused_while_one_runs(
        driver, registry, client):
    await garbage_image(client, "lease/app")
    pausing, finish = asyncio.Event(), asyncio.Event()

    class Paused(SettledCollector):
        async def _pause(self) -> None:
            pausing.set()
            await finish.wait()

    first = Paused(registry.store, GcSettings(**NOW))
    other = SettledCollector(RegistryStore(driver), GcSettings(**NOW))
    running = asyncio.create_task(first.run())
    await asyncio.wait_for(pausing.wait(), 30)
    with pytest.raises(GcBusy, match=r"already running \(.* pid \d+\)"):
        await other.run()
    assert (await other.run(dry_run=True)).dry_run  # looking needs no lease
    finish.set()
    report = await asyncio.wait_for(running, 30)
    assert report.blobs == 3
    assert await driver.stat(lease.KEY) is None
    await other.run()  # free again


async def test_the_lease_is_given_back_when_a_collection_fails(driver, registry, client):
    await garbage_image(client, "lease/fails")

    class Failing(SettledCollector):
        async def _pause(self) -> None:
            raise RuntimeError("storage went away")

    with pytest.raises(RuntimeError):
        await Failing(registry.store, GcSettings(**NOW)).run()
    assert await driver.stat(lease.KEY) is None


class HeldCollector(SettledCollector):
    """A collector of `registry`'s gateway that holds its lease and waits in its safety
    pause until `finish` is set."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry.store, GcSettings(**NOW))
        self.pausing, self.finish = asyncio.Event(), asyncio.Event()

    async def _pause(self) -> None:
        self.pausing.set()
        await self.finish.wait()


RIVAL = b'{"owner": "box3 pid 42", "started": 0}'

# The lease tests count their waits in these seconds. On S3 they are real seconds: S3 keeps
# whole seconds, and R2 takes one write a second per key. The filesystem keeps finer times,
# so the mutation run (tests/MUTATION.md), where every mutant of the push path re-runs these
# tests, shortens its second with $SSHREG_TEST_FS_SECOND. Every wait keeps its ratio to the
# lease's REFRESH and STALE, so each test proves the same order of events.
FS_SECOND = float(os.environ.get("SSHREG_TEST_FS_SECOND", "1"))


def second(driver) -> float:
    return FS_SECOND if isinstance(driver, FilesystemDriver) else 1.0


@pytest.mark.parametrize("taken_over", [False, True])  # a fresh lease, or an abandoned one
async def test_a_long_collection_renews_its_lease_so_it_never_looks_abandoned(
        driver, registry, client, monkeypatch, taken_over):
    # R2 takes one write a second per key: renewals every second would leave no room for
    # the other collection's attempt, so every 2 s.
    s = second(driver)
    monkeypatch.setattr(lease, "REFRESH", 2.0 * s)
    await garbage_image(client, "lease/long")
    if taken_over:
        await driver.put(lease.KEY, RIVAL)
        monkeypatch.setattr(lease, "STALE", 0.5 * s)
        await asyncio.sleep(1.1 * s)  # S3 keeps whole seconds
    first = HeldCollector(registry)
    running = asyncio.create_task(first.run())
    await asyncio.wait_for(first.pausing.wait(), 30)
    monkeypatch.setattr(lease, "STALE", 5.0 * s)
    await asyncio.sleep(6.5 * s)  # longer than STALE since the lease was taken
    with pytest.raises(GcBusy, match="already running"):
        await SettledCollector(RegistryStore(driver), GcSettings(**NOW)).run()
    first.finish.set()
    assert (await asyncio.wait_for(running, 30)).blobs == 3
    assert await driver.stat(lease.KEY) is None


async def test_a_collection_whose_lease_was_taken_over_leaves_the_new_holders_lease_alone(
        driver, registry, client, monkeypatch):
    """Its lease looked abandoned (a stopped VM, say) and another collection took it over:
    the first one neither renews the lease over the new holder's nor removes it at its end."""
    s = second(driver)
    monkeypatch.setattr(lease, "REFRESH", 2.0 * s)
    await garbage_image(client, "lease/lost")
    first = HeldCollector(registry)
    running = asyncio.create_task(first.run())
    await asyncio.wait_for(first.pausing.wait(), 30)
    await driver.put(lease.KEY, RIVAL)  # the take-over
    await asyncio.sleep(4.5 * s)  # two renewals due
    assert (await driver.get(lease.KEY)).data == RIVAL
    first.finish.set()
    await asyncio.wait_for(running, 30)
    assert (await driver.get(lease.KEY)).data == RIVAL


async def test_of_two_collections_taking_over_an_abandoned_lease_only_one_gets_it(
        driver, registry, client, monkeypatch):
    await garbage_image(client, "lease/race")
    await driver.put(lease.KEY, b'{"owner": "dead pid 1", "started": 0}')
    monkeypatch.setattr(lease, "STALE", 0.5 * second(driver))
    await asyncio.sleep(1.1 * second(driver))  # S3 keeps whole seconds
    took: list[str] = []

    async def rival_takes_it_first(key: str) -> None:
        if key == lease.KEY and not took:  # after this collection found the lease stale
            took.append(await driver.put(lease.KEY, RIVAL))

    watched = collector_on(registry, HookedDriver(driver, after_stat=rival_takes_it_first))
    with pytest.raises(GcBusy, match="took the lease first"):
        await watched.run()
    assert took and (await driver.get(lease.KEY)).data == RIVAL


class LeaseGivenBack(HookedDriver):
    """Storage on which the collection holding the gc lease gives it back right after
    another one found it taken."""

    async def put(self, key: str, data: bytes, **conditions) -> str:
        try:
            return await self._driver.put(key, data, **conditions)
        except PreconditionFailed:
            if key == lease.KEY:
                await self._driver.delete(key)
            raise


async def test_a_collection_that_finds_the_lease_being_given_back_is_refused_once(
        driver, registry, client):
    await garbage_image(client, "lease/ending")
    await driver.put(lease.KEY, RIVAL)
    with pytest.raises(GcBusy, match=r"already running \(a collection that just ended\)"):
        await collector_on(registry, LeaseGivenBack(driver)).run()
    assert (await collector_on(registry, HookedDriver(driver)).run()).blobs == 3


class LeaseStolenAtOnce(HookedDriver):
    """Storage on which another collection overwrites the gc lease right after it is taken."""

    async def put(self, key: str, data: bytes, **conditions) -> str:
        etag = await self._driver.put(key, data, **conditions)
        if key == lease.KEY:
            await self._driver.put(key, RIVAL)
        return etag


async def test_a_collection_whose_lease_is_lost_as_soon_as_taken_deletes_nothing(
        driver, registry, client):
    image = await garbage_image(client, "lease/stolen")
    with pytest.raises(GcBusy, match="lost"):
        await collector_on(registry, LeaseStolenAtOnce(driver)).run()
    assert (await driver.get(lease.KEY)).data == RIVAL
    for digest, data in image.blobs.items():  # garbage, but still there
        resp = await client.get(f"/v2/lease/stolen/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == data


# A lease names its holder; one cut short by a crash or written by hand names nobody.
@pytest.mark.parametrize(("body", "holder"), [
    (b'{"owner": "box3 pid 42", "started": 0}', "box3 pid 42"),
    (b'{"owner": "box3 pi', "unknown"),
    (b'["box3 pid 42"]', "unknown"),
])
async def test_a_lease_left_by_a_dead_collection_is_taken_over_once_stale(
        driver, registry, client, monkeypatch, body, holder):
    image = await garbage_image(client, "lease/dead")
    await driver.put(lease.KEY, body)
    with pytest.raises(GcBusy, match=rf"already running \({holder}\)"):
        await collector_on(registry, HookedDriver(driver)).run()
    monkeypatch.setattr(lease, "STALE", 0.5 * second(driver))
    await asyncio.sleep(1.1 * second(driver))  # S3 keeps whole seconds
    report = await collector_on(registry, HookedDriver(driver)).run()
    assert f"lease/dead@{image.digest}" not in report.manifests  # deleted by digest already
    assert report.blobs == 3
    assert await driver.stat(lease.KEY) is None
