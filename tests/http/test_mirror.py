"""The pull-through cache over HTTP: what is fetched upstream, when, and what is stored."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import aiohttp
import pytest

from sshreg.events.log import EventLog, id_after
from sshreg.management.commands import Management
from sshreg.management.gc import GarbageCollector
from sshreg.mirror.settings import MirrorSettings
from tests.conftest import IDENTITIES
from tests.http.helpers_api import (
    as_identity,
    assert_error,
    has_blob_record,
    push_blob,
    push_image,
    push_index,
)
from tests.http.helpers_mirror import PREFIX, mirroring
from tests.support.upstream import PASSWORD, USER

MANIFEST_ACCEPT = ("application/vnd.oci.image.manifest.v1+json, "
                   "application/vnd.oci.image.index.v1+json")


async def pushed_upstream(upstream, name="team/app", tag="1", seed=""):
    async with upstream.client() as client:
        return await push_image(client, name, tag, seed=seed)


async def pull(client, name, reference, image=None, **headers):
    """GET the manifest, then every blob; assert each is byte for byte the upstream's."""
    resp = await client.get(f"/v2/{name}/manifests/{reference}",
                            headers={"Accept": MANIFEST_ACCEPT, **headers})
    assert resp.status == 200, await resp.text()
    body = await resp.read()
    if image is not None:
        assert body == image.manifest
        for digest, data in image.blobs.items():
            blob = await client.get(f"/v2/{name}/blobs/{digest}", headers=headers)
            assert blob.status == 200, await blob.text()
            assert await blob.read() == data
    return body


async def test_an_image_is_pulled_through_the_prefix_and_then_served_from_storage(
        driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        await pull(client, f"{PREFIX}/team/app", "1", image)
        served = dict(upstream.requests)
        await pull(client, f"{PREFIX}/team/app", "1", image)
        await pull(client, f"{PREFIX}/team/app", image.digest, image)
    assert dict(upstream.requests) == served  # tag younger than tag_ttl: nothing asked again
    for digest in image.blobs:
        assert upstream.blob_fetches(digest) == 1
        assert await has_blob_record(driver, digest)


async def test_a_manifest_by_digest_is_fetched_once_and_never_asked_again(
        driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    path = f"/v2/team/app/manifests/{image.digest}"
    async with mirroring(driver, upstream, tmp_path / "spool", tag_ttl=0) as (_, client):
        await pull(client, f"{PREFIX}/team/app", image.digest, image)
        await pull(client, f"{PREFIX}/team/app", image.digest, image)
    assert upstream.requests[("GET", path)] == 1
    assert upstream.requests[("HEAD", path)] == 0


async def test_a_moved_tag_is_seen_after_its_ttl_and_not_before(driver, upstream, tmp_path):
    first = await pushed_upstream(upstream, seed="first")
    async with mirroring(driver, upstream, tmp_path / "spool", tag_ttl=2) as (_, client):
        await pull(client, f"{PREFIX}/team/app", "1", first)
        second = await pushed_upstream(upstream, seed="second")
        await pull(client, f"{PREFIX}/team/app", "1", first)  # within the ttl: as stored
        await asyncio.sleep(2.5)
        await pull(client, f"{PREFIX}/team/app", "1", second)


async def test_after_the_ttl_an_unchanged_tag_costs_one_head_and_no_get(
        driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    tag_path = "/v2/team/app/manifests/1"
    async with mirroring(driver, upstream, tmp_path / "spool", tag_ttl=0) as (_, client):
        await pull(client, f"{PREFIX}/team/app", "1", image)
        gets = upstream.requests[("GET", tag_path)]
        for _ in range(3):
            await pull(client, f"{PREFIX}/team/app", "1", image)
    assert upstream.requests[("GET", tag_path)] == gets == 1
    assert upstream.requests[("HEAD", tag_path)] == 3  # none before the first GET


async def test_concurrent_first_pulls_of_a_tag_share_one_look_upstream(driver, upstream,
                                                                       tmp_path):
    image = await pushed_upstream(upstream)
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        bodies = await asyncio.gather(*(pull(client, f"{PREFIX}/team/app", "1")
                                        for _ in range(10)))
    assert all(body == image.manifest for body in bodies)
    assert upstream.requests[("GET", "/v2/team/app/manifests/1")] == 1
    assert upstream.requests[("HEAD", "/v2/team/app/manifests/1")] == 0


async def test_a_stored_tag_is_served_while_the_upstream_is_down(driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    async with mirroring(driver, upstream, tmp_path / "spool", tag_ttl=0) as (registry, client):
        await pull(client, f"{PREFIX}/team/app", "1", image)
        upstream.available = False
        await pull(client, f"{PREFIX}/team/app", "1", image)
        missing = await client.get(f"/v2/{PREFIX}/team/app/manifests/2")
        await assert_error(missing, 503, "UNAVAILABLE")
        assert registry.metrics.value("sshreg_mirror_stale_total", mirror=PREFIX) == 1
        assert registry.mirrors.status[PREFIX].last_error


async def test_a_name_the_upstream_does_not_have_is_manifest_unknown(driver, upstream, tmp_path):
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        resp = await client.get(f"/v2/{PREFIX}/team/nothing/manifests/1")
        await assert_error(resp, 404, "MANIFEST_UNKNOWN")
        blob = await client.get(f"/v2/{PREFIX}/team/nothing/blobs/sha256:{'0' * 64}")
        await assert_error(blob, 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("method,path", [
    ("PUT", "/manifests/1"), ("DELETE", "/manifests/1"), ("POST", "/blobs/uploads/"),
    ("DELETE", f"/blobs/sha256:{'0' * 64}")])
async def test_pushing_or_deleting_under_a_mirror_prefix_is_unsupported(
        driver, upstream, tmp_path, method, path):
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        resp = await client.request(method, f"/v2/{PREFIX}/team/app{path}", data=b"{}")
        await assert_error(resp, 405, "UNSUPPORTED")
    assert not upstream.requests


async def test_pulling_through_a_mirror_needs_pull_rights_on_the_prefixed_name(
        driver, upstream, tmp_path):
    await pushed_upstream(upstream)
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        resp = await client.get(f"/v2/{PREFIX}/team/app/manifests/1",
                                headers=as_identity("team"))  # may pull team/* only
        await assert_error(resp, 403, "DENIED")
    assert not upstream.requests


@pytest.mark.parametrize("auth", ["token", "basic"])
async def test_an_upstream_that_wants_credentials_gets_them(driver, upstream, tmp_path, auth):
    image = await pushed_upstream(upstream)
    upstream.auth = auth
    os.environ["SSHREG_TEST_UPSTREAM_PASSWORD"] = PASSWORD
    async with mirroring(driver, upstream, tmp_path / "spool", username=USER,
                         password_env="SSHREG_TEST_UPSTREAM_PASSWORD") as (_, client):
        await pull(client, f"{PREFIX}/team/app", "1", image)
    if auth == "token":  # one token for every request of the repository, until it expires
        assert upstream.token_requests == 1


async def test_an_anonymous_token_is_fetched_without_credentials(driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    upstream.auth = "token"
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        await pull(client, f"{PREFIX}/team/app", "1", image)
    assert upstream.token_requests == 1


async def test_an_expired_token_is_fetched_again(driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    upstream.auth, upstream.expires_in = "token", 2
    async with mirroring(driver, upstream, tmp_path / "spool", tag_ttl=0) as (_, client):
        await pull(client, f"{PREFIX}/team/app", "1", image)
        assert upstream.token_requests == 1
        await asyncio.sleep(2.1)
        await pull(client, f"{PREFIX}/team/app", "1")
    assert upstream.token_requests == 2


async def test_refused_credentials_answer_unavailable_naming_the_upstream(
        driver, upstream, tmp_path):
    await pushed_upstream(upstream)
    upstream.auth = "basic"
    os.environ["SSHREG_TEST_UPSTREAM_PASSWORD"] = "wrong"
    async with mirroring(driver, upstream, tmp_path / "spool", username=USER,
                         password_env="SSHREG_TEST_UPSTREAM_PASSWORD") as (_, client):
        resp = await client.get(f"/v2/{PREFIX}/team/app/manifests/1")
        await assert_error(resp, 503, "UNAVAILABLE")
        assert "credentials" in (await resp.json())["errors"][0]["detail"]["error"]


async def test_a_redirected_blob_is_fetched_without_the_upstream_credentials(
        driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    upstream.auth, upstream.redirect_blobs = "token", True
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        await pull(client, f"{PREFIX}/team/app", "1", image)
    assert upstream.sent_to_other_host == [None, None]  # config and layer, no Authorization


async def test_bytes_that_do_not_match_the_digest_fail_the_pull_and_store_nothing(
        driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    layer = next(d for d, data in image.blobs.items() if data.startswith(b"layer"))
    upstream.corrupt = True
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        resp = await client.get(f"/v2/{PREFIX}/team/app/blobs/{layer}")
        await assert_error(resp, 503, "UNAVAILABLE")  # checked before an answer could go
        assert "do not match" in (await resp.json())["errors"][0]["detail"]["error"]
        assert not await has_blob_record(driver, layer)
        upstream.corrupt = False  # the next pull tries again
        again = await client.get(f"/v2/{PREFIX}/team/app/blobs/{layer}")
        assert await again.read() == image.blobs[layer]


async def test_a_bad_blob_streaming_to_the_client_ends_short_of_its_last_byte(
        driver, upstream, tmp_path):
    data = os.urandom(1 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with upstream.client() as up:
        await push_blob(up, "team/big", data)
    upstream.corrupt, upstream.throttle = True, 0.01  # the answer starts before the check
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        resp = await client.get(f"/v2/{PREFIX}/team/big/blobs/{digest}")
        assert resp.status == 200 and resp.content_length == len(data)
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                received += chunk
        assert len(received) < len(data)  # the client never holds a whole wrong body
        assert not await has_blob_record(driver, digest)


async def test_concurrent_pulls_of_one_blob_share_one_upstream_fetch(driver, upstream, tmp_path):
    data = os.urandom(3 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with upstream.client() as up:
        await push_blob(up, "team/big", data)
    upstream.throttle = 0.005  # about 5 s for the whole blob: every pull joins the fill
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        async def fetch() -> bytes:
            resp = await client.get(f"/v2/{PREFIX}/team/big/blobs/{digest}")
            assert resp.status == 200
            return await resp.read()

        bodies = await asyncio.gather(*(fetch() for _ in range(8)))
    assert all(body == data for body in bodies)
    assert upstream.blob_fetches(digest) == 1


async def test_a_client_that_leaves_mid_fill_does_not_stop_the_fill(driver, upstream, tmp_path):
    data = os.urandom(2 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with upstream.client() as up:
        await push_blob(up, "team/big", data)
    upstream.throttle = 0.002
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        resp = await client.get(f"/v2/{PREFIX}/team/big/blobs/{digest}")
        await resp.content.readexactly(100_000)
        resp.close()  # the client goes away
        for _ in range(200):
            if await has_blob_record(driver, digest):
                break
            await asyncio.sleep(0.05)
        again = await client.get(f"/v2/{PREFIX}/team/big/blobs/{digest}")
        assert await again.read() == data
    assert upstream.blob_fetches(digest) == 1


async def test_an_index_and_the_platform_manifests_clients_ask_for_are_pulled_through(
        driver, upstream, tmp_path):
    async with upstream.client() as up:
        amd = await push_image(up, "team/multi", seed="amd64")
        arm = await push_image(up, "team/multi", seed="arm64")
        index = await push_index(up, "team/multi", [amd, arm], "1")
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        assert await pull(client, f"{PREFIX}/team/multi", "1") == index.manifest
        await pull(client, f"{PREFIX}/team/multi", arm.digest, arm)


async def test_referrers_are_the_upstreams_when_it_offers_the_api(driver, upstream, tmp_path):
    async with upstream.client() as up:
        image = await push_image(up, "team/app", "1")
        signature = await push_image(up, "team/app", seed="sig", subject=image.descriptor,
                                     artifact_type="application/vnd.example.sig")
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        resp = await client.get(f"/v2/{PREFIX}/team/app/referrers/{image.digest}")
        assert resp.status == 200
        index = await resp.json()
        assert [m["digest"] for m in index["manifests"]] == [signature.digest]
        await pull(client, f"{PREFIX}/team/app", signature.digest, signature)


async def test_tags_are_listed_from_the_upstream(driver, upstream, tmp_path):
    for tag in ("1", "2", "3"):
        await pushed_upstream(upstream, tag=tag)
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        resp = await client.get(f"/v2/{PREFIX}/team/app/tags/list", params={"n": "2"})
        assert await resp.json() == {"name": f"{PREFIX}/team/app", "tags": ["1", "2"]}
        assert "last=2" in resp.headers["Link"]


async def test_the_default_mirror_serves_names_that_are_no_local_repository(
        driver, upstream, tmp_path):
    mirrored = await pushed_upstream(upstream, name="library/alpine", seed="upstream")
    await pushed_upstream(upstream, name="team/app", seed="upstream")
    async with mirroring(driver, upstream, tmp_path / "spool", default=True) as (_, client):
        local = await push_image(client, "team/app", "1", seed="local")  # a push stays local
        await pull(client, "team/app", "1", local)
        await pull(client, "library/alpine", "1", mirrored)  # docker's registry-mirrors ask
        await pull(client, f"{PREFIX}/library/alpine", "1", mirrored)  # the same cache
    assert upstream.requests[("GET", "/v2/library/alpine/manifests/1")] == 1
    assert upstream.requests[("GET", "/v2/team/app/manifests/1")] == 0


def test_docker_hub_one_segment_names_mean_library():
    from sshreg.mirror.names import by_prefix

    hub = MirrorSettings(prefix="docker.io", upstream="https://registry-1.docker.io")
    other = MirrorSettings(prefix="ghcr.io", upstream="https://ghcr.io")
    assert by_prefix((hub, other), "docker.io/alpine").remote == "library/alpine"
    assert by_prefix((hub, other), "docker.io/alpine").name == "docker.io/library/alpine"
    assert by_prefix((hub, other), "docker.io/me/app").remote == "me/app"
    assert by_prefix((hub, other), "ghcr.io/app").remote == "app"
    assert by_prefix((hub, other), "team/app") is None


async def test_the_mirrors_command_counts_hits_misses_bytes_and_the_last_error(
        driver, upstream, tmp_path):
    image = await pushed_upstream(upstream)
    async with mirroring(driver, upstream, tmp_path / "spool") as (registry, client):
        await pull(client, f"{PREFIX}/team/app", "1", image)
        await pull(client, f"{PREFIX}/team/app", "1", image)
        upstream.available = False
        await client.get(f"/v2/{PREFIX}/team/other/manifests/1")
        commands = Management(registry.store, GarbageCollector(registry.store), registry.mirrors)
        result = await commands.run(IDENTITIES["reader"], "mirrors --json")
        (row,) = json.loads(result.stdout)
        assert (row["prefix"], row["upstream"]) == (PREFIX, upstream.url)
        # manifest, config, layer, the manifest the upstream could not give; then 3 hits
        assert (row["misses"], row["hits"]) == (4, 3)
        assert row["bytes_fetched"] == sum(len(b) for b in image.blobs.values())
        assert row["errors"] == 1 and "503" in row["last_error"]
        text = (await commands.run(IDENTITIES["reader"], "mirrors")).stdout
        assert text.splitlines()[1].split()[:2] == [PREFIX, upstream.url]
        repos = (await commands.run(IDENTITIES["reader"], "repos")).stdout
        assert repos == f"{PREFIX}/team/app  (mirror of {upstream.url})\n"


async def test_a_head_of_a_missing_blob_asks_upstream_and_starts_no_fill(driver, upstream,
                                                                         tmp_path):
    image = await pushed_upstream(upstream)
    layer, data = next((d, b) for d, b in image.blobs.items() if b.startswith(b"layer"))
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        head = await client.head(f"/v2/{PREFIX}/team/app/blobs/{layer}")
        assert head.status == 200 and head.headers["Content-Length"] == str(len(data))
        missing = await client.head(f"/v2/{PREFIX}/team/app/blobs/sha256:{'0' * 64}")
        assert missing.status == 404
    assert upstream.blob_fetches(layer) == 0
    assert not await has_blob_record(driver, layer)


async def test_a_head_of_a_blob_being_filled_answers_its_size_without_waiting_for_it(
        driver, upstream, tmp_path):
    data = os.urandom(2 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with upstream.client() as up:
        await push_blob(up, "team/big", data)
    upstream.throttle = 0.01  # about 3 s for the whole blob
    async with mirroring(driver, upstream, tmp_path / "spool") as (_, client):
        started = asyncio.get_running_loop().time()
        head = await client.head(f"/v2/{PREFIX}/team/big/blobs/{digest}")
        assert head.status == 200 and head.headers["Content-Length"] == str(len(data))
        assert asyncio.get_running_loop().time() - started < 1.5
        resp = await client.get(f"/v2/{PREFIX}/team/big/blobs/{digest}")  # joins the fill
        assert await resp.read() == data
    assert upstream.blob_fetches(digest) == 1


async def test_a_tag_fetched_from_upstream_is_announced_as_a_mirror_fill(driver, upstream,
                                                                         tmp_path):
    image = await pushed_upstream(upstream)
    events = EventLog(driver, "box-a")
    async with mirroring(driver, upstream, tmp_path / "spool", events=events) as (_, client):
        start = id_after(time.time() - 1)
        await pull(client, f"{PREFIX}/team/app", "1", image)
        await pull(client, f"{PREFIX}/team/app", "1", image)  # from storage: no event
        (event,) = [e async for e in events.read_after(start)]
    assert (event.type, event.repository, event.tags, event.digest) == (
        "mirror.filled", f"{PREFIX}/team/app", ("1",), image.digest)
    assert event.comment == f"mirror of {upstream.url}" and event.fingerprint == ""
