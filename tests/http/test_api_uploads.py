"""Blob uploads in every style real clients use, their session protocol and their errors."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator

import pytest

from sshreg.registry.app import Registry
from sshreg.registry.settings import RegistrySettings
from sshreg.storage.base import StorageError
from sshreg.store.registry_store import RegistryStore
from tests.conftest import identify_from_test_header
from tests.support.hashing import digest_of

from .helpers_api import (
    CountingDriver,
    as_identity,
    assert_error,
    blob_copies,
    error_detail,
    has_blob_record,
    leftover_uploads,
    push_blob,
    serving,
    start_upload,
)

BLOB = os.urandom(100_000)
DIGEST = digest_of(BLOB)
SESSION_PATH = re.compile(
    r"/v2/app/blobs/uploads/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


async def blob_bytes(client, name: str, digest: str) -> bytes:
    resp = await client.get(f"/v2/{name}/blobs/{digest}")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    return await resp.read()


def assert_created(resp, name: str, digest: str) -> None:
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/{name}/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest


async def chunked(data: bytes, piece: int = 7_000) -> AsyncIterator[bytes]:
    """A body aiohttp sends with `Transfer-Encoding: chunked` and no Content-Length."""
    for i in range(0, len(data), piece):
        yield data[i:i + piece]


# -- the styles ---------------------------------------------------------------------------


async def test_single_post_with_digest_and_body_is_201(client):
    resp = await client.post("/v2/app/blobs/uploads/", params={"digest": DIGEST}, data=BLOB)
    assert_created(resp, "app", DIGEST)
    assert await blob_bytes(client, "app", DIGEST) == BLOB


async def test_single_post_may_stream_its_body_with_chunked_encoding(client):
    resp = await client.post("/v2/app/blobs/uploads/", params={"digest": DIGEST}, data=chunked(BLOB))
    assert_created(resp, "app", DIGEST)
    assert await blob_bytes(client, "app", DIGEST) == BLOB


async def test_post_then_monolithic_put_with_the_body_is_201(client):
    location = await start_upload(client, "app")
    resp = await client.put(location, params={"digest": DIGEST}, data=BLOB,
                            headers={"Content-Type": "application/octet-stream"})
    assert_created(resp, "app", DIGEST)
    assert await blob_bytes(client, "app", DIGEST) == BLOB


async def test_one_streamed_patch_without_length_then_empty_put_is_201(client):
    """docker's flow: the whole layer as one chunked PATCH with no Content-Range."""
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=chunked(BLOB))
    assert resp.status == 202
    assert resp.headers["Range"] == f"0-{len(BLOB) - 1}"
    resp = await client.put(resp.headers["Location"], params={"digest": DIGEST})
    assert_created(resp, "app", DIGEST)
    assert await blob_bytes(client, "app", DIGEST) == BLOB


async def test_one_patch_with_content_length_then_empty_put_is_201(client):
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=BLOB)
    assert resp.status == 202
    resp = await client.put(resp.headers["Location"], params={"digest": DIGEST},
                            headers={"Content-Length": "0"})
    assert_created(resp, "app", DIGEST)


async def test_several_patches_with_content_range_then_put_is_201(client):
    location = await start_upload(client, "app")
    for start in range(0, len(BLOB), 30_000):
        chunk = BLOB[start:start + 30_000]
        resp = await client.patch(location, data=chunk, headers={
            "Content-Range": f"{start}-{start + len(chunk) - 1}",
            "Content-Type": "application/octet-stream"})
        assert resp.status == 202
        assert resp.headers["Range"] == f"0-{start + len(chunk) - 1}"
        location = resp.headers["Location"]
    resp = await client.put(location, params={"digest": DIGEST})
    assert_created(resp, "app", DIGEST)
    assert await blob_bytes(client, "app", DIGEST) == BLOB


async def test_ranged_patches_may_stream_with_chunked_encoding(client):
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=chunked(BLOB[:60_000]), headers={"Content-Range": "0-59999"})
    assert resp.status == 202
    resp = await client.patch(location, data=chunked(BLOB[60_000:]),
                              headers={"Content-Range": f"60000-{len(BLOB) - 1}"})
    assert resp.status == 202
    resp = await client.put(location, params={"digest": DIGEST})
    assert_created(resp, "app", DIGEST)


async def test_final_chunk_carried_by_the_closing_put_is_201(client):
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=BLOB[:60_000], headers={"Content-Range": "0-59999"})
    assert resp.status == 202
    resp = await client.put(resp.headers["Location"], params={"digest": DIGEST}, data=BLOB[60_000:],
                            headers={"Content-Range": f"60000-{len(BLOB) - 1}"})
    assert_created(resp, "app", DIGEST)
    assert await blob_bytes(client, "app", DIGEST) == BLOB


async def test_final_chunk_in_closing_put_without_content_range_is_201(client):
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=BLOB[:50_000])
    resp = await client.put(resp.headers["Location"], params={"digest": DIGEST}, data=BLOB[50_000:])
    assert_created(resp, "app", DIGEST)
    assert await blob_bytes(client, "app", DIGEST) == BLOB


async def test_closing_put_may_stream_its_chunk_with_chunked_encoding(client):
    location = await start_upload(client, "app")
    resp = await client.put(location, params={"digest": DIGEST}, data=chunked(BLOB))
    assert_created(resp, "app", DIGEST)
    assert await blob_bytes(client, "app", DIGEST) == BLOB


async def test_blob_larger_than_one_upload_batch_is_stored_intact(client, registry):
    data = os.urandom(registry.settings.upload_batch * 2 + 12_345)
    digest = digest_of(data)
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=chunked(data, 1 << 20))
    assert resp.status == 202
    assert resp.headers["Range"] == f"0-{len(data) - 1}"
    resp = await client.put(location, params={"digest": digest})
    assert_created(resp, "app", digest)
    assert await blob_bytes(client, "app", digest) == data


async def test_empty_blob_can_be_uploaded_by_post_then_put(client):
    digest = digest_of(b"")
    location = await start_upload(client, "app")
    resp = await client.put(location, params={"digest": digest})
    assert_created(resp, "app", digest)
    assert await blob_bytes(client, "app", digest) == b""


async def test_pushing_an_existing_blob_again_succeeds_and_keeps_one_copy(client, driver):
    await push_blob(client, "app", BLOB)
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=BLOB)
    resp = await client.put(location, params={"digest": DIGEST})
    assert_created(resp, "app", DIGEST)
    assert len(await blob_copies(driver)) == 1
    assert await leftover_uploads(driver) == 0
    assert await blob_bytes(client, "app", DIGEST) == BLOB


# -- the session protocol -----------------------------------------------------------------


async def test_post_opens_a_session_with_location_uuid_and_empty_range(client):
    resp = await client.post("/v2/app/blobs/uploads/", headers={"Content-Length": "0"})
    assert resp.status == 202
    match = SESSION_PATH.fullmatch(resp.headers["Location"])
    assert match is not None
    assert resp.headers["Docker-Upload-UUID"] == match[1]
    assert resp.headers["Range"] == "0-0"


async def test_post_without_trailing_slash_opens_a_session_too(client):
    resp = await client.post("/v2/app/blobs/uploads")
    assert resp.status == 202
    assert SESSION_PATH.fullmatch(resp.headers["Location"])


async def test_every_session_response_names_the_same_uuid(client):
    location = await start_upload(client, "app")
    uuid = SESSION_PATH.fullmatch(location)[1]
    resp = await client.patch(location, data=BLOB[:10])
    assert resp.headers["Docker-Upload-UUID"] == uuid
    assert resp.headers["Location"] == location
    resp = await client.get(location)
    assert resp.headers["Docker-Upload-UUID"] == uuid
    assert resp.headers["Location"] == location


async def test_each_post_opens_a_distinct_session(client):
    assert len({await start_upload(client, "app") for _ in range(5)}) == 5


async def test_get_on_a_session_is_204_with_the_received_range(client):
    location = await start_upload(client, "app")
    resp = await client.get(location)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-0"
    assert resp.headers["Location"] == location
    await client.patch(location, data=BLOB[:1000], headers={"Content-Range": "0-999"})
    resp = await client.get(location)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-999"


async def test_patch_with_out_of_order_range_is_416_and_upload_resumes(client):
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=BLOB[:40_000], headers={"Content-Range": "0-39999"})
    assert resp.status == 202
    assert resp.headers["Range"] == "0-39999"

    # A chunk that skips ahead, and the same first chunk sent again: both out of order.
    resp = await client.patch(location, data=BLOB[50_000:60_000],
                              headers={"Content-Range": "50000-59999"})
    assert resp.status == 416
    assert resp.headers["Range"] == "0-39999"
    assert resp.headers["Location"] == location
    resp = await client.patch(location, data=BLOB[:40_000], headers={"Content-Range": "0-39999"})
    assert resp.status == 416

    resp = await client.get(location)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-39999"
    resp = await client.patch(location, data=BLOB[40_000:], headers={
        "Content-Range": f"40000-{len(BLOB) - 1}"})
    assert resp.status == 202
    resp = await client.put(location, params={"digest": DIGEST})
    assert_created(resp, "app", DIGEST)
    assert await blob_bytes(client, "app", DIGEST) == BLOB


async def test_first_chunk_not_starting_at_zero_is_416(client):
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=BLOB[10:20], headers={"Content-Range": "10-19"})
    assert resp.status == 416
    assert (await client.get(location)).headers["Range"] == "0-0"


async def test_closing_put_with_out_of_order_range_is_416(client):
    location = await start_upload(client, "app")
    await client.patch(location, data=BLOB[:100], headers={"Content-Range": "0-99"})
    resp = await client.put(location, params={"digest": DIGEST}, data=BLOB[200:],
                            headers={"Content-Range": f"200-{len(BLOB) - 1}"})
    assert resp.status == 416
    resp = await client.put(location, params={"digest": DIGEST}, data=BLOB[100:],
                            headers={"Content-Range": f"100-{len(BLOB) - 1}"})
    assert_created(resp, "app", DIGEST)


async def test_content_range_and_content_length_disagreeing_is_400(client):
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=BLOB[:100], headers={"Content-Range": "0-199"})
    assert resp.status == 400
    assert await resp.json()  # the error envelope
    assert (await client.get(location)).headers["Range"] == "0-0"


async def test_chunked_body_shorter_than_its_content_range_is_blob_upload_invalid(client):
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=chunked(BLOB[:100]), headers={"Content-Range": "0-199"})
    await assert_error(resp, 400, "BLOB_UPLOAD_INVALID")


async def test_chunked_body_longer_than_its_content_range_is_rejected_and_the_session_survives(client):
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=chunked(BLOB[:300]), headers={"Content-Range": "0-199"})
    await assert_error(resp, 400, "BLOB_UPLOAD_INVALID")
    assert (await client.get(location)).headers["Range"] == "0-0"
    resp = await client.put(location, params={"digest": DIGEST}, data=BLOB)
    assert_created(resp, "app", DIGEST)


async def test_closing_put_whose_chunked_body_is_shorter_than_its_content_range_is_refused(client):
    """Even when the digest matches the bytes that did come: the range announced more. The
    session stays where it was, and the upload can still be finished."""
    location = await start_upload(client, "app")
    await client.patch(location, data=BLOB[:100], headers={"Content-Range": "0-99"})
    resp = await client.put(location, params={"digest": digest_of(BLOB[:200])},
                            data=chunked(BLOB[100:200]), headers={"Content-Range": "100-299"})
    await assert_error(resp, 400, "BLOB_UPLOAD_INVALID")
    assert (await client.get(f"/v2/app/blobs/{digest_of(BLOB[:200])}")).status == 404
    assert (await client.get(location)).headers["Range"] == "0-99"
    resp = await client.put(location, params={"digest": DIGEST}, data=BLOB[100:],
                            headers={"Content-Range": f"100-{len(BLOB) - 1}"})
    assert_created(resp, "app", DIGEST)


async def test_chunked_body_running_on_past_its_content_range_in_a_later_chunk_is_rejected(client):
    """The first chunk ends exactly where the range does; the excess comes after it."""
    location = await start_upload(client, "app")

    async def two_chunks() -> AsyncIterator[bytes]:
        yield BLOB[:100]
        await asyncio.sleep(0.1)
        yield BLOB[100:200]

    resp = await client.patch(location, data=two_chunks(), headers={"Content-Range": "0-99"})
    await assert_error(resp, 400, "BLOB_UPLOAD_INVALID")
    assert (await client.get(location)).headers["Range"] == "0-0"


async def test_malformed_content_range_is_400_blob_upload_invalid(client):
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=b"abc", headers={"Content-Range": "zero-two"})
    await assert_error(resp, 400, "BLOB_UPLOAD_INVALID")


async def test_session_urls_tolerate_stale_query_strings(client):
    location = await start_upload(client, "app")
    stale = f"{location}?_state=stale-token&foo=bar"
    resp = await client.patch(stale, data=BLOB[:50_000], headers={"Content-Range": "0-49999"})
    assert resp.status == 202
    resp = await client.get(stale)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-49999"
    resp = await client.put(f"{location}?_state=older-token&digest={DIGEST}", data=BLOB[50_000:])
    assert_created(resp, "app", DIGEST)


async def test_delete_cancels_the_session_with_204_then_it_is_404_blob_upload_unknown(client, driver):
    location = await start_upload(client, "app")
    await client.patch(location, data=BLOB)
    resp = await client.delete(location)
    assert resp.status == 204
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        resp = await client.request(method, location, params={"digest": DIGEST})
        await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
    assert await blob_copies(driver) == set()
    assert await leftover_uploads(driver) == 0


async def test_unknown_session_is_404_blob_upload_unknown_naming_it(client):
    session = "00000000-0000-0000-0000-000000000000"
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        resp = await client.request(method, f"/v2/app/blobs/uploads/{session}",
                                    params={"digest": DIGEST})
        await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
        assert await error_detail(resp) == {"session": session}


async def test_session_is_bound_to_its_repository(client):
    location = await start_upload(client, "app")
    resp = await client.get(location.replace("/v2/app/", "/v2/other/"))
    await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_session_is_bound_to_the_key_that_opened_it(client):
    location = await start_upload(client, "team/app")
    resp = await client.get(location, headers=as_identity("team"))
    await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
    resp = await client.get(location)
    assert resp.status == 204


async def test_completed_session_is_gone(client):
    location = await start_upload(client, "app")
    resp = await client.put(location, params={"digest": DIGEST}, data=BLOB)
    assert resp.status == 201
    resp = await client.get(location)
    await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


# -- digests -------------------------------------------------------------------------------


async def test_sha512_blob_by_single_post(client):
    digest = digest_of(BLOB, "sha512")
    resp = await client.post("/v2/app/blobs/uploads/", params={"digest": digest}, data=BLOB)
    assert_created(resp, "app", digest)
    assert await blob_bytes(client, "app", digest) == BLOB


async def test_sha512_blob_by_post_then_monolithic_put(client):
    digest = digest_of(BLOB, "sha512")
    location = await start_upload(client, "app")
    resp = await client.put(location, params={"digest": digest}, data=BLOB)
    assert_created(resp, "app", digest)
    assert await blob_bytes(client, "app", digest) == BLOB


async def test_sha512_digest_announced_only_at_the_closing_put_after_patches(client):
    digest = digest_of(BLOB, "sha512")
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=BLOB[:70_000], headers={"Content-Range": "0-69999"})
    assert resp.status == 202
    resp = await client.patch(location, data=chunked(BLOB[70_000:]))
    assert resp.status == 202
    resp = await client.put(location, params={"digest": digest})
    assert_created(resp, "app", digest)
    assert await blob_bytes(client, "app", digest) == BLOB


async def test_bytes_hashed_as_they_arrive_are_not_read_back_from_storage(driver):
    """Reading a blob back costs as much as its push: it is done only for a digest announced
    at the closing PUT in another algorithm than the PATCHes were hashed with."""
    counting = CountingDriver(driver)
    async with serving(counting) as (_registry, client):
        await push_blob(client, "app", os.urandom(1000))
        await push_blob(client, "app", os.urandom(1000), algorithm="sha512")
        for algorithm in ("sha256", "sha512"):
            data = os.urandom(1000)
            location = await start_upload(client, "app")
            resp = await client.put(location, params={"digest": digest_of(data, algorithm)},
                                    data=data)
            assert resp.status == 201
        data = os.urandom(1000)
        location = await start_upload(client, "app")
        resp = await client.patch(location, data=data)
        resp = await client.put(resp.headers["Location"], params={"digest": digest_of(data)})
        assert resp.status == 201
        assert counting.calls["read"] == 0
        location = await start_upload(client, "app")
        resp = await client.patch(location, data=data[::-1])
        resp = await client.put(resp.headers["Location"],
                                params={"digest": digest_of(data[::-1], "sha512")})
        assert resp.status == 201
        assert counting.calls["read"] == 1


async def test_wrong_sha512_digest_at_the_closing_put_is_400_and_nothing_is_stored(client, driver):
    wrong = "sha512:" + hashlib.sha512(b"other").hexdigest()
    location = await start_upload(client, "app")
    await client.patch(location, data=BLOB)
    resp = await client.put(location, params={"digest": wrong})
    await assert_error(resp, 400, "DIGEST_INVALID")
    assert (await client.get(f"/v2/app/blobs/{wrong}")).status == 404
    assert not await has_blob_record(driver, wrong)
    assert await blob_copies(driver) == set()
    assert await leftover_uploads(driver) == 0


async def test_wrong_sha512_digest_of_a_monolithic_put_is_400_naming_the_digest_of_the_bytes(
        client, driver):
    """The bytes are hashed with sha512 as they arrive, and the error says what they hash to."""
    wrong = "sha512:" + hashlib.sha512(b"other").hexdigest()
    location = await start_upload(client, "app")
    resp = await client.put(location, params={"digest": wrong}, data=BLOB)
    await assert_error(resp, 400, "DIGEST_INVALID")
    detail = (await resp.json())["errors"][0]["detail"]
    assert detail == {"expected": wrong, "computed": digest_of(BLOB, "sha512")}
    assert await blob_copies(driver) == set()
    assert await leftover_uploads(driver) == 0


@pytest.mark.parametrize("style", ["single-post", "monolithic-put", "patch-then-put"])
async def test_digest_mismatch_is_400_digest_invalid_and_nothing_is_stored(client, driver, style):
    wrong = digest_of(b"not the body")
    if style == "single-post":
        resp = await client.post("/v2/app/blobs/uploads/", params={"digest": wrong}, data=BLOB)
    else:
        location = await start_upload(client, "app")
        if style == "monolithic-put":
            resp = await client.put(location, params={"digest": wrong}, data=BLOB)
        else:
            await client.patch(location, data=chunked(BLOB))
            resp = await client.put(location, params={"digest": wrong})
    await assert_error(resp, 400, "DIGEST_INVALID")
    assert (await client.get(f"/v2/app/blobs/{wrong}")).status == 404
    assert (await client.get(f"/v2/app/blobs/{DIGEST}")).status == 404
    assert not await has_blob_record(driver, wrong)
    assert not await has_blob_record(driver, DIGEST)
    assert await blob_copies(driver) == set()
    assert await leftover_uploads(driver) == 0


async def test_closing_put_without_digest_is_400_and_the_session_survives(client):
    location = await start_upload(client, "app")
    await client.patch(location, data=BLOB)
    resp = await client.put(location)
    await assert_error(resp, 400, "DIGEST_INVALID")
    resp = await client.put(location, params={"digest": DIGEST})
    assert_created(resp, "app", DIGEST)


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + hashlib.md5(BLOB).hexdigest(), "nonsense"],
                         ids=["short", "md5", "nonsense"])  # BLOB is random: stable test ids
async def test_malformed_or_unsupported_upload_digest_is_400_digest_invalid(client, digest):
    resp = await client.post("/v2/app/blobs/uploads/", params={"digest": digest}, data=BLOB)
    await assert_error(resp, 400, "DIGEST_INVALID")
    location = await start_upload(client, "app")
    resp = await client.put(location, params={"digest": digest}, data=BLOB)
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_upload_to_an_invalid_repository_name_is_400_name_invalid(client):
    resp = await client.post("/v2/App/blobs/uploads/")
    await assert_error(resp, 400, "NAME_INVALID")


# -- interrupted and abandoned uploads ------------------------------------------------------


async def test_patch_cut_mid_body_keeps_what_was_stored_and_the_upload_resumes(client, registry):
    """A client whose connection died asks where the upload stands and sends the rest."""
    data = os.urandom(registry.settings.upload_batch * 2 + 1000)
    location = await start_upload(client, "app")
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"PATCH {location} HTTP/1.1\r\nHost: localhost\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:len(data) * 2 // 3])
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()

    for _ in range(50):
        resp = await client.get(location)
        assert resp.status == 204
        end = int(resp.headers["Range"].split("-")[1])
        offset = end + 1 if end else 0
        assert offset <= len(data) * 2 // 3
        resp = await client.patch(location, data=data[offset:],
                                  headers={"Content-Range": f"{offset}-{len(data) - 1}"})
        if resp.status != 416:  # the cut request was still being wound up: ask again
            break
        await asyncio.sleep(0.02)
    assert resp.status == 202
    resp = await client.put(location, params={"digest": digest_of(data)})
    assert_created(resp, "app", digest_of(data))
    assert await blob_bytes(client, "app", digest_of(data)) == data


async def test_a_patch_whose_client_stalls_mid_body_is_408_and_its_session_released_at_once(
        driver):
    """Nobody is coming back for a session whose client stopped sending: it is aborted with
    the 408, its storage upload with it, without waiting for the idle sweep."""
    async with serving(driver, body_idle_timeout=0.3) as (registry, client):
        location = await start_upload(client, "app")
        reader, writer = await asyncio.open_connection(client.host, client.port)
        try:
            writer.write(f"PATCH {location} HTTP/1.1\r\nHost: localhost\r\n"
                         f"Content-Length: {len(BLOB)}\r\n\r\n".encode() + BLOB[:1000])
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()
        assert status_line.startswith(b"HTTP/1.1 408 ")
        assert len(registry.sessions) == 0
        await assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
        assert await leftover_uploads(driver) == 0


async def test_a_patch_storage_fails_to_take_is_503_and_its_session_released_at_once(
        client, registry, driver, monkeypatch):
    """A session whose bytes storage did not take can never be committed: it goes with the
    error, its storage upload and its slot with it."""
    begin = registry.store.blobs.begin_upload

    async def failing_begin(*args):
        upload = await begin(*args)

        async def broken(data):
            raise StorageError("no space left on device")
        upload.write = broken
        return upload

    monkeypatch.setattr(registry.store.blobs, "begin_upload", failing_begin)
    location = await start_upload(client, "app")
    resp = await client.patch(location, data=BLOB)
    await assert_error(resp, 503, "UNAVAILABLE")
    await assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert len(registry.sessions) == 0
    assert registry.sessions.admitted == 0
    assert await leftover_uploads(driver) == 0


async def test_idle_session_is_aborted_by_the_sweep_and_its_storage_released(client, registry, driver):
    location = await start_upload(client, "app")
    await client.patch(location, data=BLOB)
    registry.sessions.idle_timeout = 0.0
    await asyncio.sleep(0.01)
    assert await registry.sessions.sweep() == 1
    resp = await client.get(location)
    await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
    assert await leftover_uploads(driver) == 0


async def test_the_idle_sweep_aborts_only_sessions_idle_longer_than_the_timeout(
        client, registry, driver):
    """One upload keeps sending chunks, a shorter pause than the timeout between them;
    another stopped after its first. Sweeps run all along: only the stopped one is aborted
    (its session unknown, its storage upload released), the other completes."""
    timeout, pause, chunks = 1.0, 0.2, 12  # the busy upload runs 2.4 s, over twice the timeout
    registry.sessions.idle_timeout = timeout
    idle = await start_upload(client, "app")
    assert (await client.patch(idle, data=b"first and last chunk")).status == 202
    busy = await start_upload(client, "app")
    began = asyncio.get_running_loop().time()
    swept = 0
    size = len(BLOB) // chunks + 1
    for offset in range(0, len(BLOB), size):
        chunk = BLOB[offset:offset + size]
        resp = await client.patch(busy, data=chunk, headers={
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
        assert resp.status == 202, await resp.text()
        busy = resp.headers["Location"]
        await asyncio.sleep(pause)
        swept += await registry.sessions.sweep()
    assert asyncio.get_running_loop().time() - began > 2 * timeout
    assert swept == 1
    await assert_error(await client.get(idle), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(await client.patch(idle, data=b"more"), 404, "BLOB_UPLOAD_UNKNOWN")
    resp = await client.put(busy, params={"digest": DIGEST})
    assert_created(resp, "app", DIGEST)
    assert await blob_bytes(client, "app", DIGEST) == BLOB
    assert await leftover_uploads(driver) == 0  # the idle one's was aborted by the sweep


async def test_a_session_is_idle_from_the_end_of_its_last_request_not_its_start(
        client, registry):
    """A PATCH whose body takes longer than the idle timeout is activity: a sweep right
    after it ends keeps the session, and the upload completes."""
    registry.sessions.idle_timeout = 0.5
    location = await start_upload(client, "app")
    third = len(BLOB) // 3 + 1

    async def slow_body():  # the request begins with the first chunk, lasts 0.8 s
        for offset in range(0, len(BLOB), third):
            await asyncio.sleep(0.4)
            yield BLOB[offset:offset + third]

    resp = await client.patch(location, data=slow_body())
    assert resp.status == 202, await resp.text()
    assert await registry.sessions.sweep() == 0
    resp = await client.put(resp.headers["Location"], params={"digest": DIGEST})
    assert_created(resp, "app", DIGEST)


async def test_asking_where_an_upload_stands_keeps_it_from_the_idle_sweep(client, registry):
    """A client that asks for the Range (to resume) is active even without sending bytes."""
    registry.sessions.idle_timeout = 0.2
    location = await start_upload(client, "app")
    await client.patch(location, data=BLOB[:100], headers={"Content-Range": "0-99"})
    await asyncio.sleep(0.3)
    resp = await client.get(location)
    assert resp.status == 204
    assert await registry.sessions.sweep() == 0
    resp = await client.put(location, params={"digest": DIGEST}, data=BLOB[100:],
                            headers={"Content-Range": f"100-{len(BLOB) - 1}"})
    assert_created(resp, "app", DIGEST)


async def test_the_registry_sweeps_abandoned_sessions_by_itself_a_second_after_it_starts(driver):
    """The idle sweep runs every quarter of the idle timeout but at least 1 s apart: a
    session idle for longer than a short timeout is gone after the first sweep, 1 s in."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with serving(driver, upload_idle_timeout=0.2) as (registry, client):
        location = await start_upload(client, "app")
        while len(registry.sessions) and loop.time() - began < 5:
            await asyncio.sleep(0.02)
        gone_after = loop.time() - began
        await assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert gone_after < 1.0 + 0.5  # 0.5 s for a busy machine; the next sweep is at 2 s


async def test_closing_the_registry_leaves_no_task_of_its_own_running(driver):
    before = asyncio.all_tasks()
    registry = Registry(RegistryStore(driver), RegistrySettings(),
                        identify=identify_from_test_header)
    await registry.start()
    assert asyncio.all_tasks() - before  # the idle sweep
    await registry.close()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


async def test_closing_the_registry_aborts_open_sessions(client, registry, driver):
    for _ in range(3):
        location = await start_upload(client, "app")
        await client.patch(location, data=BLOB)
    await registry.close()
    assert len(registry.sessions) == 0
    assert await leftover_uploads(driver) == 0
