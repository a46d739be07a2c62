"""The event log: what pushes and deletes write, who sees it, replay, `wait`, and the log
shared by gateways on one bucket."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp.test_utils import RawTestServer, TestClient

from sshreg.events.log import EventLog, id_after
from sshreg.management.collection import Collection
from sshreg.management.commands import Management
from sshreg.management.settings import GcSettings
from sshreg.registry.app import Registry
from sshreg.registry.settings import RegistrySettings
from sshreg.store.registry_store import RegistryStore
from tests.conftest import IDENTITIES, identify_from_test_header
from tests.http.helpers_api import push_image

POLL = 0.1


async def gateway(driver, name):
    """A registry whose writes go to the event log, as gateway `name`."""
    events = EventLog(driver, name, poll=POLL)
    store = RegistryStore(driver)
    registry = Registry(store, RegistrySettings(), identify=identify_from_test_header,
                        events=events)
    await registry.start()
    client = TestClient(RawTestServer(registry.handle))
    await client.start_server()
    return registry, client, events


async def collect(follow, count, timeout=5.0):
    """The first `count` items a follower yields."""
    items = []
    async with asyncio.timeout(timeout):
        async for item in follow:
            items.append(item)
            if len(items) == count:
                return items
    return items


async def test_pushes_and_deletes_write_events_with_the_key_and_the_gateway(driver):
    registry, client, events = await gateway(driver, "box-a")
    try:
        start = id_after(time.time() - 1)
        image = await push_image(client, "team/app", "1", annotations={"x": "y"})
        assert (await client.delete("/v2/team/app/manifests/1")).status == 202
        assert (await client.delete(f"/v2/team/app/manifests/{image.digest}")).status == 202
        pushed, untagged, deleted = [e async for e in events.read_after(start)]
    finally:
        await client.close()
        await registry.close()
    assert (pushed.type, pushed.repository, pushed.tags, pushed.digest) == (
        "manifest.pushed", "team/app", ("1",), image.digest)
    assert (pushed.media_type, pushed.size) == (image.media_type, len(image.manifest))
    assert (pushed.fingerprint, pushed.comment, pushed.gateway) == (
        IDENTITIES["full"].fingerprint, "full@test", "box-a")
    assert (untagged.type, untagged.tags) == ("tag.deleted", ("1",))
    assert (deleted.type, deleted.digest) == ("manifest.deleted", image.digest)
    assert pushed.id < untagged.id < deleted.id


async def test_a_referrer_event_carries_its_artifact_type_and_subject(driver):
    registry, client, events = await gateway(driver, "box-a")
    try:
        start = id_after(time.time() - 1)
        image = await push_image(client, "team/app", "1")
        signature = await push_image(client, "team/app", seed="sig", subject=image.descriptor,
                                     artifact_type="application/vnd.example.sig")
        _, referrer = [e async for e in events.read_after(start)]
    finally:
        await client.close()
        await registry.close()
    assert (referrer.digest, referrer.artifact_type, referrer.subject, referrer.tags) == (
        signature.digest, "application/vnd.example.sig", image.digest, ())


async def test_an_event_taken_by_one_gateway_reaches_a_follower_on_another(driver):
    registry_a, client_a, _ = await gateway(driver, "box-a")
    events_b = EventLog(driver, "box-b", poll=POLL)
    try:
        follower = events_b.follow(id_after(time.time() - 1))
        waiting = asyncio.ensure_future(collect(follower, 1))
        await asyncio.sleep(0.3)
        image = await push_image(client_a, "team/app", "1")
        (event,) = await waiting
    finally:
        await client_a.close()
        await registry_a.close()
    assert (event.gateway, event.digest) == ("box-a", image.digest)


async def test_since_an_event_replays_exactly_the_events_after_it(driver):
    registry, client, events = await gateway(driver, "box-a")
    try:
        start = id_after(time.time() - 1)
        for n in range(4):
            await push_image(client, "team/app", str(n), seed=str(n))
        written = [e async for e in events.read_after(start)]
        replayed = await collect(events.follow(written[1].id), 2)
    finally:
        await client.close()
        await registry.close()
    assert [e.id for e in replayed] == [e.id for e in written[2:]]


async def test_an_event_written_late_with_an_earlier_time_is_still_followed(driver):
    events = EventLog(driver, "box-a", poll=POLL)
    follower = events.follow(id_after(time.time() - 8))
    first = await events.append("tag.deleted", repository="team/app", tags=("1",))
    assert [e.id for e in await collect(follower, 1)] == [first.id]
    # another gateway, whose clock is 3 s behind, writes after the follower moved on
    late = EventLog(driver, "box-b", poll=POLL)
    late_event = await late.append("tag.deleted", repository="team/app", tags=("2",))
    key = f"events/log/{late_event.id}"
    earlier = id_after(late_event.time - 3) + late_event.id[13:]
    data = (await driver.get(key)).data
    await driver.put(f"events/log/{earlier}", data.replace(late_event.id.encode(),
                                                           earlier.encode()))
    await driver.delete(key)
    (seen,) = await collect(follower, 1)
    assert seen.id == earlier
    await follower.aclose()


async def test_a_key_sees_only_the_events_of_repositories_it_may_pull(driver):
    registry, client, events = await gateway(driver, "box-a")
    commands = Management(registry.store, Collection(registry.store, GcSettings()),
                          events=events)
    try:
        since = f"--since {id_after(time.time() - 1)}"
        await push_image(client, "team/app", "1")
        await push_image(client, "other/app", "1", seed="other")
        lines = []
        team = await commands.run(IDENTITIES["team"], f"events {since} --json")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await team.follow.run(lines.append, lines.append)
        full = []
        everything = await commands.run(IDENTITIES["full"], f"events {since} --json")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await everything.follow.run(full.append, full.append)
    finally:
        await client.close()
        await registry.close()
    assert [json.loads(line)["repository"] for line in lines] == ["team/app"]
    assert [json.loads(line)["repository"] for line in full] == ["team/app", "other/app"]


async def test_wait_returns_the_digest_when_the_tag_lands(driver):
    registry, client, events = await gateway(driver, "box-a")
    commands = Management(registry.store, Collection(registry.store, GcSettings()),
                          events=events)
    try:
        result = await commands.run(IDENTITIES["reader"], "wait team/app:1 --timeout 10s")
        out: list[str] = []
        waiting = asyncio.ensure_future(result.follow.run(out.append, out.append))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        image = await push_image(client, "team/app", "1")
        started = time.monotonic()
        assert await waiting == 0
        assert time.monotonic() - started < 1.0  # woken by the event, not the recheck
        assert out == [f"{image.digest}\n"]
        moved = await commands.run(IDENTITIES["reader"],
                                   f"wait team/app:1 --not {image.digest} --timeout 1s")
        err: list[str] = []
        assert await moved.follow.run(out.append, err.append) == 1
        assert "did not move within 1s" in err[0]
    finally:
        await client.close()
        await registry.close()


async def test_wait_is_refused_without_pull_rights_and_with_bad_arguments(driver):
    events = EventLog(driver, "box-a", poll=POLL)
    store = RegistryStore(driver)
    commands = Management(store, Collection(store, GcSettings()), events=events)
    refused = await commands.run(IDENTITIES["team"], "wait other/app:1")
    assert refused.status == 1 and "may not pull other/app" in refused.stderr
    for bad in ("wait team/app", "wait team/app:1 --timeout soon", "events --since yesterday",
                "events --colour red"):
        assert (await commands.run(IDENTITIES["full"], bad)).status == 2, bad


async def test_a_garbage_collection_announces_its_summary_and_prunes_old_events(driver):
    events = EventLog(driver, "box-a", poll=POLL)
    store = RegistryStore(driver)
    old = await events.append("tag.deleted", repository="team/app", tags=("1",))
    await asyncio.sleep(1.1)  # S3 keeps whole seconds
    report = await Collection(store, GcSettings(grace=0, safety=0), events=events,
                              keep_events=1.0).run()
    remaining = [e async for e in events.read_after("")]
    assert old.id not in [e.id for e in remaining]
    (summary,) = remaining
    assert summary.type == "gc.finished" and summary.report["events_pruned"] == 1
    assert summary.report["seconds"] == round(report.seconds, 3)
    assert not summary.visible_to(IDENTITIES["reader"])
    assert summary.visible_to(IDENTITIES["full"])
