"""Garbage collection and retention on both storages, driven through the registry's API."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import time

import pytest

from sshreg.management.gc import BloomFilter, GarbageCollector, GcSettings
from sshreg.management.retention import RetentionPolicy
from sshreg.references import Digest
from sshreg.storage.filesystem import FilesystemDriver
from sshreg.store import paths
from sshreg.store.registry_store import RegistryStore
from tests.support.hashing import digest_of

from .helpers_api import (
    OCI_CONFIG,
    OCI_LAYER,
    HookedDriver,
    Image,
    descriptor,
    image_manifest,
    push_blob,
    push_image,
    push_index,
    put_manifest,
)

NOW = dict(grace=0.0, safety=0.0)  # collect everything unreachable, right away


async def push_layers(client, name: str, tag: str | None, layers: list[bytes],
                      seed: str = "") -> Image:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    for blob in (config, *layers):
        await push_blob(client, name, blob)
    manifest = image_manifest(descriptor(OCI_CONFIG, config),
                              [descriptor(OCI_LAYER, layer) for layer in layers])
    digest = digest_of(manifest)
    resp = await put_manifest(client, name, tag or digest, manifest)
    assert resp.status == 201, await resp.text()
    return Image(manifest, digest, "application/vnd.oci.image.manifest.v1+json",
                 {digest_of(b): b for b in (config, *layers)})


async def blob_exists(registry, digest: str) -> bool:
    return await registry.store.blobs.get(Digest.parse(digest)) is not None


class SettledCollector(GarbageCollector):
    """S3 keeps modification times in whole seconds, and gc counts what was written in the
    second it starts as new: wait for that second to pass, as hours of grace would. The
    filesystem's times are finer, also seen through a test's wrapper (`HookedDriver`)."""

    async def run(self, dry_run: bool = False):
        if not isinstance(innermost(self.store.driver), FilesystemDriver):
            await asyncio.sleep(1.1)
        return await super().run(dry_run)


def innermost(driver):
    """The storage driver under the test wrappers of helpers_api, which keep it as `_driver`."""
    while (wrapped := vars(driver).get("_driver")) is not None:
        driver = wrapped
    return driver


def collector(registry, **settings) -> GarbageCollector:
    return SettledCollector(registry.store, GcSettings(**{**NOW, **settings}))


async def test_gc_removes_what_only_a_deleted_tag_reached_and_keeps_shared_blobs(client, registry):
    shared = os.urandom(5000)
    only_a, only_b = os.urandom(3000), os.urandom(4000)
    a = await push_layers(client, "app/a", "1", [shared, only_a], seed="a")
    b = await push_layers(client, "app/b", "1", [shared, only_b], seed="b")
    assert (await client.delete("/v2/app/a/manifests/1")).status == 202

    report = await collector(registry).run()

    assert await blob_exists(registry, digest_of(shared))
    assert not await blob_exists(registry, digest_of(only_a))
    assert not await blob_exists(registry, a.digest)
    assert f"app/a@{a.digest}" in report.manifests
    assert report.blob_bytes >= len(only_a)
    for digest, data in b.blobs.items():
        resp = await client.get(f"/v2/app/b/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == data
    resp = await client.get("/v2/app/b/manifests/1")
    assert await resp.read() == b.manifest
    # app/a no longer serves the shared layer either: its link went with the manifest.
    assert (await client.get(f"/v2/app/a/blobs/{digest_of(shared)}")).status == 404


async def test_a_link_is_removed_even_when_it_is_all_there_is_to_remove(client, registry):
    shared = os.urandom(2000)
    await push_layers(client, "links/kept", "1", [shared], seed="kept")
    await push_blob(client, "links/loose", shared)  # no manifest of links/loose uses it

    report = await collector(registry).run()

    assert (report.links, report.blobs, report.manifests) == (1, 0, [])
    assert (await client.get(f"/v2/links/loose/blobs/{digest_of(shared)}")).status == 404
    resp = await client.get(f"/v2/links/kept/blobs/{digest_of(shared)}")
    assert resp.status == 200 and await resp.read() == shared


async def test_a_manifest_is_unlinked_even_when_it_is_all_there_is_to_remove(client, registry):
    """Untagged in one repository, the manifest uses blobs a tagged one there uses too, and
    is itself tagged in another repository: its link is the only garbage."""
    await push_image(client, "only/app", "1", seed="same")
    untagged = await push_image(client, "only/app", seed="same", annotations={"v": "2"})
    tagged = await push_image(client, "only/other", "2", seed="same", annotations={"v": "2"})
    assert tagged.digest == untagged.digest

    report = await collector(registry).run()

    assert (report.manifests, report.links, report.blobs) == (
        [f"only/app@{untagged.digest}"], 0, 0)
    assert (await client.get(f"/v2/only/app/manifests/{untagged.digest}")).status == 404
    assert await unreadable(client, "only/other", "2", tagged) == []


async def test_dry_run_reports_what_would_go_and_deletes_nothing(client, registry, driver):
    doomed = os.urandom(2000)
    image = await push_layers(client, "dry/run", "x", [doomed])
    assert (await client.delete("/v2/dry/run/manifests/x")).status == 202
    before = {o.key async for o in driver.list("") if o.key != "gc/clock"}

    report = await collector(registry).run(dry_run=True)

    assert report.dry_run and f"dry/run@{image.digest}" in report.manifests
    assert report.blobs >= 2 and report.bytes_reclaimed >= len(doomed)
    assert {o.key async for o in driver.list("") if o.key != "gc/clock"} == before


async def test_a_dry_run_reports_exactly_what_the_real_run_then_removes(client, registry):
    shared, doomed, crashed = os.urandom(5000), os.urandom(2000), b"left behind by a crash"
    await push_layers(client, "dry/kept", "1", [shared], seed="kept")
    gone = await push_layers(client, "dry/gone", "1", [shared, doomed], seed="gone")
    assert (await client.delete("/v2/dry/gone/manifests/1")).status == 202
    for _ in range(2):  # bytes no record points at
        leftover = await registry.store.blobs.begin_upload()
        await leftover.write(crashed)
        await leftover.commit()

    planned = (await collector(registry).run(dry_run=True)).to_dict()
    done = (await collector(registry).run()).to_dict()

    assert (planned["dry_run"], done["dry_run"]) == (True, False)
    assert 0 <= planned["seconds"] < 60 and 0 <= done["seconds"] < 60  # how long each took
    assert planned["manifests"] == [f"dry/gone@{gone.digest}"]
    # Unlinked from dry/gone: its config, its layer and the shared layer. Deleted: the
    # records and bytes of its manifest, config and layer, and the two crash leftovers.
    assert (planned["links"], planned["blobs"], planned["orphans"]) == (3, 3, 2)
    only_gone = [data for data in gone.blobs.values() if data != shared]
    assert planned["bytes_reclaimed"] == (
        len(gone.manifest) + sum(map(len, only_gone)) + 2 * len(crashed))
    assert {k: v for k, v in planned.items() if k not in ("dry_run", "seconds")} == {
        k: v for k, v in done.items() if k not in ("dry_run", "seconds")}


async def test_blobs_of_a_push_in_progress_survive_gc_within_the_grace_period(client, registry):
    layer = os.urandom(6000)
    config = b'{"architecture":"amd64","os":"linux"}'
    await push_blob(client, "race/app", layer)
    await push_blob(client, "race/app", config)  # blobs uploaded, manifest not yet put

    await collector(registry, grace=3600.0).run()

    manifest = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    resp = await put_manifest(client, "race/app", "1", manifest)
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/race/app/blobs/{digest_of(layer)}")
    assert await resp.read() == layer


async def unreadable(client, name: str, reference: str, image: Image) -> list[str]:
    """What of `image` (pulled by `reference`) a client cannot read right now."""
    resp = await client.get(f"/v2/{name}/manifests/{reference}")
    gone = [] if resp.status == 200 and await resp.read() == image.manifest else [reference]
    for digest, data in image.blobs.items():
        resp = await client.get(f"/v2/{name}/blobs/{digest}")
        if resp.status != 200 or await resp.read() != data:
            gone.append(digest)
    return gone


def watched_collector(registry, driver, collector_class=None, **hooks) -> GarbageCollector:
    """A collector of this gateway (its pins) seeing storage through `HookedDriver(**hooks)`."""
    store = RegistryStore(HookedDriver(driver, **hooks), pins=registry.store.pins)
    return (collector_class or SettledCollector)(store, GcSettings(**NOW))


async def test_a_manifest_written_during_the_safety_pause_spares_the_old_blob_it_uses(
        client, registry, driver):
    """A client found the old blob still there (HEAD) and puts a manifest using it while gc,
    having decided the blob is garbage, pauses before deleting. The second look after the
    pause spares it: it is readable at every moment of the sweep, not deleted and put back."""
    old = os.urandom(3000)
    first = await push_layers(client, "reuse/app", "old", [old], seed="1")
    assert (await client.delete(f"/v2/reuse/app/manifests/{first.digest}")).status == 202
    garbage = await push_layers(client, "reuse/app", "other", [os.urandom(2000)], seed="2")
    assert (await client.delete(f"/v2/reuse/app/manifests/{garbage.digest}")).status == 202
    pausing = asyncio.Event()
    deletions: list[str] = []
    missing: set[str] = set()

    class Observed(SettledCollector):
        async def _pause(self) -> None:
            pausing.set()
            await asyncio.sleep(0.5)

    async def after_delete(key: str) -> None:
        deletions.append(key)
        missing.update(await unreadable(client, "reuse/app", "new", first))

    gc = watched_collector(registry, driver, Observed, after_delete=after_delete)
    run = asyncio.create_task(gc.run())
    await asyncio.wait_for(pausing.wait(), 30)
    resp = await put_manifest(client, "reuse/app", "new", first.manifest)
    assert resp.status == 201, await resp.text()
    report = await run
    assert missing == set()
    assert report.spared == 5  # the manifest and its config and layer: records and links
    assert report.blobs == 3 and len(deletions) > 3  # the other image went meanwhile
    assert await unreadable(client, "reuse/app", "new", first) == []
    assert await unreadable(client, "reuse/app", garbage.digest, garbage) != []


async def test_a_manifest_written_after_the_second_look_gets_back_what_the_sweep_removed(
        client, registry, driver):
    """The push lands after gc's second look, just before its first deletion: gc deletes
    what the push uses, and its last look puts all of it back before any bytes go."""
    first = await push_layers(client, "late/app", "old", [os.urandom(3000)], seed="1")
    assert (await client.delete(f"/v2/late/app/manifests/{first.digest}")).status == 202
    pushed: list[int] = []

    async def before_delete(key: str) -> None:
        if not pushed:
            resp = await put_manifest(client, "late/app", "new", first.manifest)
            pushed.append(resp.status)

    report = await watched_collector(registry, driver, before_delete=before_delete).run()
    assert pushed == [201]
    assert report.blobs == 0 and report.links == 0
    assert report.spared == 5  # put back: the three records and the two links
    assert await unreadable(client, "late/app", "new", first) == []


async def test_an_image_tagged_again_after_the_second_look_gets_back_its_referrers(
        client, registry, driver):
    """An untagged image and its signature are garbage; the image is tagged again just
    before gc's first deletion. The last look puts back the image and its signature, which
    only the sweep's own record of what it removed still links to the image; another
    untagged manifest of the repository stays removed."""
    image = await push_image(client, "late/signed", "old", seed="image")
    signature = await push_image(client, "late/signed", seed="signature",
                                 subject=image.descriptor,
                                 artifact_type="application/vnd.example.signature")
    other = await push_image(client, "late/signed", seed="other")
    assert (await client.delete("/v2/late/signed/manifests/old")).status == 202
    pushed: list[int] = []

    async def before_delete(key: str) -> None:
        if not pushed:
            resp = await put_manifest(client, "late/signed", "new", image.manifest)
            pushed.append(resp.status)

    report = await watched_collector(registry, driver, before_delete=before_delete).run()
    assert pushed == [201]
    assert await unreadable(client, "late/signed", "new", image) == []
    assert await unreadable(client, "late/signed", signature.digest, signature) == []
    resp = await client.get(f"/v2/late/signed/referrers/{image.digest}")
    assert [m["digest"] for m in (await resp.json())["manifests"]] == [signature.digest]
    assert report.manifests == [f"late/signed@{other.digest}"]
    assert report.spared == 12  # records, links and manifest links of image and signature
    assert (await client.get(f"/v2/late/signed/manifests/{other.digest}")).status == 404


async def test_a_child_deleted_while_gc_runs_from_a_new_index_does_not_stop_gc(
        client, registry):
    """During gc's safety pause an index is pushed, then one of its children is deleted by
    digest: gc's looks at the new index find that child's bytes but no link, and go on."""
    child = await push_image(client, "pause/multi", "child", seed="child")
    garbage = await push_image(client, "pause/multi", seed="garbage")

    class PushingDuringThePause(SettledCollector):
        async def _pause(self) -> None:
            await push_index(client, "pause/multi", [child], "latest")
            resp = await client.delete(f"/v2/pause/multi/manifests/{child.digest}")
            assert resp.status == 202

    report = await PushingDuringThePause(registry.store, GcSettings(**NOW)).run()
    assert report.manifests == [f"pause/multi@{garbage.digest}"]
    assert (await client.get("/v2/pause/multi/manifests/latest")).status == 200


async def test_a_repository_created_during_the_pause_keeps_the_old_blobs_it_mounted(
        client, registry):
    """gc decided an image is garbage; during its pause a client pushes the same image to a
    repository that did not exist when gc started, mounting the blobs from the old one."""
    old = await push_layers(client, "mount/old", "1", [os.urandom(3000)], seed="old")
    assert (await client.delete("/v2/mount/old/manifests/1")).status == 202

    class PushingDuringThePause(SettledCollector):
        async def _pause(self) -> None:
            for digest in old.blobs:
                resp = await client.post(
                    f"/v2/mount/new/blobs/uploads/?mount={digest}&from=mount/old")
                assert resp.status == 201
            resp = await put_manifest(client, "mount/new", "1", old.manifest)
            assert resp.status == 201, await resp.text()

    report = await PushingDuringThePause(registry.store, GcSettings(**NOW)).run()
    assert await unreadable(client, "mount/new", "1", old) == []
    assert report.manifests == [f"mount/old@{old.digest}"] and report.blobs == 0


class CoarseTimes(HookedDriver):
    """Storage whose modification times are coarse, like S3's whole seconds: everything
    written from `since` on carries the time `since`, as if it all happened in one second."""

    def __init__(self, driver, since: float, **hooks) -> None:
        super().__init__(driver, **hooks)
        self.since = since

    def _coarse(self, info):
        if info is None or info.modified < self.since:
            return info
        return dataclasses.replace(info, modified=self.since)

    async def stat(self, key: str):
        return self._coarse(await self._driver.stat(key))

    async def list(self, prefix: str, start_after: str = ""):
        async for obj in self._driver.list(prefix, start_after):
            yield self._coarse(obj)


async def test_what_is_written_in_the_second_gc_started_counts_as_new(client, registry, driver):
    """With whole-second times, writes during gc's pause may carry exactly the time the run
    started: they are new (spared by the second look), not old."""
    image = await push_layers(client, "coarse/app", None, [os.urandom(3000)], seed="untagged")
    loose = os.urandom(4000)
    await push_blob(client, "coarse/next", loose)  # no manifest uses it
    if not isinstance(driver, FilesystemDriver):
        await asyncio.sleep(1.1)  # into the next whole second
    since = await registry.store.inventory.storage_now()
    # In that second too, before the run: a blob stored with no link yet, and bytes with no
    # record yet (two pushes half done); neither is old enough to be collected.
    unlinked = b"stored, not linked yet"
    await registry.store.blobs.put_bytes(Digest.parse(digest_of(unlinked)), unlinked)
    unrecorded = await registry.store.blobs.begin_upload()
    await unrecorded.write(b"stored, no record yet")
    await unrecorded.commit()

    class PushingAgainDuringThePause(GarbageCollector):
        async def _pause(self) -> None:
            resp = await put_manifest(client, "coarse/app", image.digest, image.manifest)
            assert resp.status == 201, await resp.text()
            await push_blob(client, "coarse/next", loose)

    store = RegistryStore(CoarseTimes(driver, since), pins=registry.store.pins)
    report = await PushingAgainDuringThePause(store, GcSettings(**NOW)).run()
    assert await unreadable(client, "coarse/app", image.digest, image) == []
    resp = await client.get(f"/v2/coarse/next/blobs/{digest_of(loose)}")
    assert resp.status == 200 and await resp.read() == loose
    # The manifest and its two links, the loose blob's link; the records of all four blobs.
    assert (report.spared, report.manifests, report.blobs, report.orphans) == (8, [], 0, 0)
    assert await blob_exists(registry, digest_of(unlinked))
    assert await driver.stat(unrecorded.key) is not None


async def test_what_is_pushed_again_during_the_sweep_is_never_unlinked(
        client, registry, driver):
    """Three untagged images and a loose blob are garbage; once the sweep has begun, in the
    second the run started, the second image (in the sweep's order) is pushed again with a
    tag, and the blob too. The sweep leaves their links alone, and goes on with the rest."""
    images = sorted([await push_image(client, "sweep/app", seed=f"s{i}") for i in range(3)],
                    key=lambda image: image.digest)
    first, again, third = images
    loose = os.urandom(1000)
    while not digest_of(loose).startswith("sha256:00"):  # swept before the images' blobs
        loose = os.urandom(1000)
    await push_blob(client, "sweep/app", loose)
    if not isinstance(driver, FilesystemDriver):
        await asyncio.sleep(1.1)  # into the next whole second
    since = await registry.store.inventory.storage_now()
    deleted: list[str] = []

    async def before_delete(key: str) -> None:
        if not deleted:
            resp = await put_manifest(client, "sweep/app", "again", again.manifest)
            assert resp.status == 201, await resp.text()
            await push_blob(client, "sweep/app", loose)
        deleted.append(key)

    store = RegistryStore(CoarseTimes(driver, since, before_delete=before_delete),
                          pins=registry.store.pins)
    report = await GarbageCollector(store, GcSettings(**NOW)).run()
    assert paths.manifest_revision("sweep/app", Digest.parse(again.digest)) not in deleted
    assert paths.layer_link("sweep/app", Digest.parse(digest_of(loose))) not in deleted
    assert report.manifests == [f"sweep/app@{first.digest}", f"sweep/app@{third.digest}"]
    assert report.links == 4  # the config and layer links of the first and third images
    resp = await client.get(f"/v2/sweep/app/blobs/{digest_of(loose)}")
    assert resp.status == 200 and await resp.read() == loose
    assert await unreadable(client, "sweep/app", "again", again) == []
    for gone in (first, third):
        assert (await client.get(f"/v2/sweep/app/manifests/{gone.digest}")).status == 404


async def test_gc_keeps_every_child_of_a_multi_arch_index_and_their_blobs(client, registry):
    amd = await push_image(client, "multi/app", seed="amd64")
    arm = await push_image(client, "multi/app", seed="arm64")
    index = await push_index(client, "multi/app", [amd, arm], "latest")

    report = await collector(registry).run()

    assert report.manifests == [] and report.blobs == 0
    for image in (amd, arm):
        resp = await client.get(f"/v2/multi/app/manifests/{image.digest}")
        assert resp.status == 200 and await resp.read() == image.manifest
        for digest, data in image.blobs.items():
            assert await (await client.get(f"/v2/multi/app/blobs/{digest}")).read() == data
    assert (await client.get(f"/v2/multi/app/manifests/{index.digest}")).status == 200


async def test_referrers_of_a_kept_image_survive_and_those_of_a_deleted_image_go(
        client, registry):
    kept = await push_image(client, "sig/app", "kept", seed="kept")
    gone = await push_image(client, "sig/app", "gone", seed="gone")
    signature = await push_image(client, "sig/app", seed="sig-kept", subject=kept.descriptor,
                                 artifact_type="application/vnd.example.signature")
    sbom = await push_image(client, "sig/app", seed="sbom-gone", subject=gone.descriptor,
                            artifact_type="application/vnd.example.sbom")
    assert (await client.delete("/v2/sig/app/manifests/gone")).status == 202

    await collector(registry).run()

    resp = await client.get(f"/v2/sig/app/referrers/{kept.digest}")
    assert [m["digest"] for m in (await resp.json())["manifests"]] == [signature.digest]
    assert (await client.get(f"/v2/sig/app/manifests/{signature.digest}")).status == 200
    assert (await client.get(f"/v2/sig/app/manifests/{sbom.digest}")).status == 404
    resp = await client.get(f"/v2/sig/app/referrers/{gone.digest}")
    assert (await resp.json())["manifests"] == []
    for digest in sbom.blobs:
        assert not await blob_exists(registry, digest)


async def test_keep_untagged_keeps_manifests_pushed_by_digest(client, registry):
    image = await push_image(client, "bydigest/app", seed="untagged")
    report = await collector(registry, keep_untagged=True).run()
    assert report.manifests == []
    assert (await client.get(f"/v2/bydigest/app/manifests/{image.digest}")).status == 200
    report = await collector(registry).run()
    assert report.manifests == [f"bydigest/app@{image.digest}"]


async def test_retention_keeps_the_newest_tags_and_protected_ones(client, registry):
    for i in range(5):
        await push_image(client, "ret/app", f"build-{i}", seed=f"b{i}")
        await asyncio.sleep(0.02)  # distinct write times
    await push_image(client, "ret/app", "v1.0", seed="release")
    await push_image(client, "keep/app", "build-0", seed="other")
    policy = RetentionPolicy("ret/*", keep_last=2, keep_tags=r"v[0-9.]+")

    report = await collector(registry, retention=(policy,)).run()

    resp = await client.get("/v2/ret/app/tags/list")
    # v1.0 is protected by its pattern; of the other tags the two newest stay.
    assert sorted((await resp.json())["tags"]) == ["build-3", "build-4", "v1.0"]
    assert sorted(report.tags) == ["ret/app:build-0", "ret/app:build-1", "ret/app:build-2"]
    resp = await client.get("/v2/keep/app/tags/list")
    assert (await resp.json())["tags"] == ["build-0"]


def test_retention_drops_tags_older_than_max_age():
    policy = RetentionPolicy("**", max_age=86400)
    now = time.time()
    tags = [("fresh", now - 60), ("stale", now - 3 * 86400)]
    assert policy.expired_tags(tags, now) == ["stale"]
    assert RetentionPolicy("**").expired_tags(tags, now) == []


async def test_gc_removes_stored_bytes_no_record_points_at(registry, driver):
    upload = await registry.store.blobs.begin_upload()
    await upload.write(b"left behind by a crash between the bytes and their record")
    await upload.commit()
    assert await driver.stat(upload.key) is not None

    report = await collector(registry).run()

    assert report.orphans == 1
    assert await driver.stat(upload.key) is None


async def test_pinned_digests_are_never_collected(client, registry):
    layer = os.urandom(1000)
    digest = await push_blob(client, "pin/app", layer)
    with registry.store.pins.hold([Digest.parse(digest)]):
        await collector(registry).run()
    assert await blob_exists(registry, digest)
    await collector(registry).run()
    assert not await blob_exists(registry, digest)


async def test_a_blob_a_request_starts_using_during_the_pause_is_kept_and_the_rest_goes(
        client, registry):
    used = os.urandom(1000)
    while not digest_of(used).startswith("sha256:00"):  # swept before the other blobs
        used = os.urandom(1000)
    await push_blob(client, "pin/late", used)
    await push_layers(client, "pin/late", None, [os.urandom(2000)], seed="untagged")
    holding = contextlib.ExitStack()

    class PinnedDuringThePause(SettledCollector):
        async def _pause(self) -> None:
            holding.enter_context(registry.store.pins.hold([Digest.parse(digest_of(used))]))

    with holding:
        report = await PinnedDuringThePause(registry.store, GcSettings(**NOW)).run()
        assert await blob_exists(registry, digest_of(used))
    assert report.blobs == 3  # the untagged image's manifest, config and layer


def poisson_bound(mean: float, beyond: float = 1e-6) -> int:
    """The smallest count a Poisson variable of `mean` exceeds with probability < `beyond`."""
    count, term = 0, math.exp(-mean)
    total = term
    while 1 - total >= beyond:
        count += 1
        term *= mean / count
        total += term
    return count


# 2000 members in 2^16 bits; and 6836, the load GcSettings' 2^26 bits are sized for
# (7 million blobs) scaled down to 2^16 bits.
@pytest.mark.parametrize(("members", "strangers"), [(2000, 10_000), (6836, 20_000)])
def test_bloom_filter_never_forgets_and_rarely_invents(members: int, strangers: int):
    bits, hashes = 1 << 16, 7
    bloom = BloomFilter(bits=bits, hashes=hashes)
    added = [f"sha256:{i:064x}" for i in range(members)]
    for item in added:
        bloom.add(item)
    assert all(item in bloom for item in added)
    invented = sum(f"sha256:{i:064x}" in bloom
                   for i in range(members, members + strangers))
    # A false positive rate of (1 - e^(-kn/m))^k: about 0.001 % at 2000 members (0.1 of the
    # 10,000 strangers expected), 1 % at 6836 (200 of 20,000). The margin: a filter with
    # that rate gives more than the bound less than once in a million runs.
    rate = (1 - math.exp(-hashes * members / bits)) ** hashes
    assert invented <= poisson_bound(rate * strangers), (invented, rate * strangers)


@pytest.mark.parametrize("grace", [3600.0])
async def test_nothing_young_is_collected(client, registry, grace):
    image = await push_image(client, "young/app", seed="young")
    report = await collector(registry, grace=grace).run()
    assert report.manifests == [] and report.blobs == 0
    assert (await client.get(f"/v2/young/app/manifests/{image.digest}")).status == 200
