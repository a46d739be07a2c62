"""Upload sessions are counted per key and in total, past either limit refused with 429
and Retry-After, and the counts always come back to 0; S3 part buffers are counted against
a memory budget that every commit and abort gives back.

In-process (aiohttp's test server, both storage backends); `test_resource_limits.py`
proves the same limits through a real server and real ssh tunnels.
"""

from __future__ import annotations

import os

import pytest

from sshreg.config import load_config
from sshreg.limits import Limits
from sshreg.registry.app import Registry
from sshreg.registry.settings import RegistrySettings
from sshreg.service import Service
from sshreg.settings import ConfigError
from sshreg.storage.base import Overloaded
from sshreg.storage.filesystem import FilesystemDriver
from sshreg.storage.s3.settings import MIN_PART_SIZE
from tests.conftest import s3_test_driver
from tests.support.hashing import digest_of

from .helpers_api import as_identity, assert_error, push_blob, start_upload

PER_KEY = 5
TOTAL = 8


@pytest.fixture
def settings() -> RegistrySettings:
    return RegistrySettings(limits=Limits(max_uploads_per_key=PER_KEY, max_uploads=TOTAL),
                            upload_batch=1 << 16)


def assert_counts_back_to_zero(registry: Registry) -> None:
    assert len(registry.sessions) == 0
    assert registry.sessions.admitted == 0


async def assert_limited(resp) -> None:
    await assert_error(resp, 429, "TOOMANYREQUESTS")
    assert int(resp.headers["Retry-After"]) > 0


async def test_a_key_past_its_session_limit_gets_429_while_another_key_still_uploads(
        client, registry):
    for _ in range(PER_KEY):
        await start_upload(client, "team/app", identity="team")
    refused = await client.post("/v2/team/app/blobs/uploads/", headers=as_identity("team"))
    await assert_limited(refused)
    # ... also for a one-request upload, before any byte is stored
    data = os.urandom(1000)
    refused = await client.post("/v2/team/app/blobs/uploads/", params={"digest": digest_of(data)},
                                data=data, headers=as_identity("team"))
    await assert_limited(refused)
    assert await push_blob(client, "other/app", data) == digest_of(data)
    assert registry.sessions.admitted_for("SHA256:team-test-key") == PER_KEY


async def test_sessions_past_the_total_limit_get_429_for_every_key(client, registry):
    for identity in ("team", "full"):
        for _ in range(PER_KEY if identity == "team" else TOTAL - PER_KEY):
            await start_upload(client, f"team/{identity}", identity=identity)
    await assert_limited(await client.post("/v2/team/x/blobs/uploads/"))
    await assert_limited(await client.post("/v2/team/x/blobs/uploads/",
                                           headers=as_identity("team")))


async def test_a_cancelled_session_frees_its_slot_at_once(client, registry):
    locations = [await start_upload(client, "app") for _ in range(PER_KEY)]
    await assert_limited(await client.post("/v2/app/blobs/uploads/"))
    assert (await client.delete(locations[0])).status == 204
    await start_upload(client, "app")
    await assert_limited(await client.post("/v2/app/blobs/uploads/"))  # one slot, not more


async def test_a_key_keeps_exactly_its_limit_as_its_sessions_come_and_go(client, registry):
    locations = [await start_upload(client, "app") for _ in range(PER_KEY)]
    for location in locations[1:]:
        assert (await client.delete(location)).status == 204
    assert registry.sessions.admitted_for("SHA256:full-access-test-key") == 1
    for _ in range(PER_KEY - 1):
        await start_upload(client, "app")
    await assert_limited(await client.post("/v2/app/blobs/uploads/"))


async def test_counts_return_to_zero_after_many_finished_failed_and_cancelled_uploads(
        client, registry):
    for round_ in range(3 * TOTAL):
        data = os.urandom(1000 + round_)
        digest = digest_of(data)
        kind = round_ % 5
        if kind == 0:  # one-request push
            await push_blob(client, "app", data)
        elif kind == 1:  # POST, PATCH, PUT
            location = await start_upload(client, "app")
            patched = await client.patch(location, data=data)
            assert patched.status == 202
            done = await client.put(patched.headers["Location"], params={"digest": digest})
            assert done.status == 201
        elif kind == 2:  # POST, DELETE
            location = await start_upload(client, "app")
            assert (await client.delete(location)).status == 204
        elif kind == 3:  # wrong digest at the closing PUT
            location = await start_upload(client, "app")
            wrong = await client.put(location, params={"digest": digest_of(b"other")}, data=data)
            await assert_error(wrong, 400, "DIGEST_INVALID")
        else:  # wrong digest on a one-request push
            wrong = await client.post("/v2/app/blobs/uploads/",
                                      params={"digest": digest_of(b"other")}, data=data)
            await assert_error(wrong, 400, "DIGEST_INVALID")
    assert_counts_back_to_zero(registry)


async def test_the_idle_sweep_gives_back_the_slots_of_abandoned_sessions(client, registry):
    for _ in range(PER_KEY):
        await start_upload(client, "app")
    registry.sessions.idle_timeout = 0
    assert await registry.sessions.sweep() == PER_KEY
    assert_counts_back_to_zero(registry)


async def test_the_active_uploads_gauge_follows_sessions_opened_finished_cancelled_and_swept(
        client, registry):
    def active() -> float:
        return registry.metrics.value("sshreg_uploads_active")

    data = os.urandom(1000)
    locations = [await start_upload(client, "app") for _ in range(4)]
    assert active() == 4
    assert (await client.delete(locations[0])).status == 204
    assert active() == 3
    resp = await client.put(locations[1], params={"digest": digest_of(data)}, data=data)
    assert resp.status == 201
    assert active() == 2
    await push_blob(client, "app", os.urandom(1000))  # a one-request push ends where it began
    assert active() == 2
    registry.sessions.idle_timeout = 0
    assert await registry.sessions.sweep() == 2
    assert active() == 0


async def test_a_session_whose_storage_upload_cannot_begin_gives_back_its_slot(
        client, registry, monkeypatch):
    async def broken(*args: object) -> None:
        raise OSError("no space left")

    monkeypatch.setattr(registry.store.blobs, "begin_upload", broken)
    resp = await client.post("/v2/app/blobs/uploads/")
    assert resp.status == 500
    assert_counts_back_to_zero(registry)


async def test_a_session_opens_no_file_until_its_first_byte(tmp_path):
    driver = FilesystemDriver(tmp_path)
    try:
        upload = await driver.begin_upload("data/x")
        assert not os.listdir(driver.tmp)
        await upload.write(b"first byte")
        assert len(os.listdir(driver.tmp)) == 1
        await upload.abort()
        assert not os.listdir(driver.tmp)
        empty = await driver.begin_upload("data/empty")
        await empty.commit()
        assert (tmp_path / "data" / "empty").read_bytes() == b""
    finally:
        await driver.close()


# -- S3 part buffers -----------------------------------------------------------------------------


async def test_s3_part_buffers_past_the_budget_are_refused_and_every_byte_given_back(s3_server):
    driver = s3_test_driver(s3_server, buffer_budget=2 * MIN_PART_SIZE, parts_in_flight=1)
    try:
        parked = [await driver.begin_upload(f"data/parked{i}") for i in range(3)]
        await parked[0].write(os.urandom(MIN_PART_SIZE - 1))
        await parked[1].write(os.urandom(MIN_PART_SIZE - 1))
        with pytest.raises(Overloaded):
            await parked[2].write(os.urandom(4096))
        with pytest.raises(Overloaded):  # the refused upload stays failed
            await parked[2].write(b"x")
        await parked[2].abort()
        await parked[0].abort()
        assert driver.buffers.used == MIN_PART_SIZE - 1
        await parked[1].commit()
        assert driver.buffers.used == 0
    finally:
        await driver.close()


async def test_a_large_s3_upload_at_the_budget_waits_for_its_own_parts_instead_of_failing(
        s3_server):
    """With room for two part buffers only, one upload of five parts reuses its buffers as
    parts come back and completes; the budget is whole again afterwards."""
    driver = s3_test_driver(s3_server, buffer_budget=2 * MIN_PART_SIZE, parts_in_flight=2,
                            part_concurrency=2)
    data = os.urandom(5 * MIN_PART_SIZE + 1234)
    try:
        upload = await driver.begin_upload("data/big")
        for start in range(0, len(data), 1 << 20):
            await upload.write(data[start:start + (1 << 20)])
            assert driver.buffers.used <= driver.buffers.limit
        await upload.commit()
        assert driver.buffers.used == 0
        assert b"".join([c async for c in driver.read("data/big")]) == data
    finally:
        await driver.close()


async def test_the_limits_are_read_from_the_config_file(tmp_path):
    path = tmp_path / "sshreg.toml"
    path.write_text('[limits]\nmax_uploads_per_key = 7\nmax_uploads = 70\n'
                    'upload_buffer_budget = "1GiB"\n[registry]\nmax_manifest_descriptors = 50\n')
    service = Service(load_config(path, keys=str(tmp_path / "keys"),
                                  storage=str(tmp_path / "data")))
    try:
        settings = service.registry.settings  # as the service hands them to the registry
        assert (settings.limits.max_uploads_per_key, settings.limits.max_uploads) == (7, 70)
        assert settings.max_manifest_descriptors == 50
    finally:
        await service.driver.close()
    assert load_config(path).limits.upload_buffer_budget == 1 << 30


def test_an_s3_buffer_budget_smaller_than_the_parts_in_flight_is_a_config_error(tmp_path):
    path = tmp_path / "sshreg.toml"
    path.write_text('[limits]\nupload_buffer_budget = "64MiB"\n')
    with pytest.raises(ConfigError, match="upload_buffer_budget"):
        load_config(path, storage="s3://bucket/registry")
    load_config(storage="s3://bucket/registry")  # the defaults fit
