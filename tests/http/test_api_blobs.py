"""Blob GET, HEAD (with ranges) and DELETE."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

from sshreg.references import Digest
from sshreg.storage.filesystem import FilesystemDriver
from tests.support.hashing import digest_of

from .helpers_api import UNKNOWN_DIGEST, assert_error, push_blob, serving

BLOB = bytes(range(256)) * 4  # 1024 bytes


@pytest.fixture
async def blob(client) -> str:
    return await push_blob(client, "app", BLOB)


async def test_get_blob_returns_its_bytes_with_length_and_digest(client, blob):
    resp = await client.get(f"/v2/app/blobs/{blob}")
    assert resp.status == 200
    assert await resp.read() == BLOB
    assert resp.headers["Content-Length"] == str(len(BLOB))
    assert resp.headers["Docker-Content-Digest"] == blob
    assert resp.headers["Accept-Ranges"] == "bytes"


async def test_head_blob_has_length_and_digest_and_no_body(client, blob):
    resp = await client.head(f"/v2/app/blobs/{blob}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(BLOB))
    assert resp.headers["Docker-Content-Digest"] == blob
    assert await resp.read() == b""


async def test_empty_blob_is_served_with_zero_length(client):
    digest = await push_blob(client, "app", b"")
    resp = await client.get(f"/v2/app/blobs/{digest}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "0"
    assert await resp.read() == b""


async def test_blob_larger_than_one_read_chunk_streams_back_intact(client):
    data = os.urandom(3 * (1 << 20) + 17)
    digest = await push_blob(client, "app", data)
    resp = await client.get(f"/v2/app/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-99", 0, 99),
    ("bytes=100-199", 100, 199),
    ("bytes=1000-", 1000, 1023),
    ("bytes=-24", 1000, 1023),
    ("bytes=1000-5000", 1000, 1023),
    ("bytes=1023-1023", 1023, 1023),
])
async def test_range_get_returns_206_with_content_range(client, blob, header, start, end):
    resp = await client.get(f"/v2/app/blobs/{blob}", headers={"Range": header})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(BLOB)}"
    assert resp.headers["Content-Length"] == str(end - start + 1)
    assert resp.headers["Docker-Content-Digest"] == blob
    assert await resp.read() == BLOB[start:end + 1]


async def test_resuming_a_cut_download_with_an_open_range_completes_the_blob(client, blob):
    first = (await (await client.get(f"/v2/app/blobs/{blob}")).read())[:300]
    resp = await client.get(f"/v2/app/blobs/{blob}", headers={"Range": f"bytes={len(first)}-"})
    assert resp.status == 206
    assert first + await resp.read() == BLOB


@pytest.mark.parametrize("header", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
async def test_unsatisfiable_range_is_416_with_the_blob_size(client, blob, header):
    resp = await client.get(f"/v2/app/blobs/{blob}", headers={"Range": header})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(BLOB)}"


async def test_malformed_range_is_ignored_and_the_whole_blob_returned(client, blob):
    resp = await client.get(f"/v2/app/blobs/{blob}", headers={"Range": "bytes=9-3"})
    assert resp.status == 200
    assert await resp.read() == BLOB


async def test_unknown_blob_is_404_blob_unknown_for_get_and_head(client, blob):
    resp = await client.get(f"/v2/app/blobs/{UNKNOWN_DIGEST}")
    await assert_error(resp, 404, "BLOB_UNKNOWN")
    resp = await client.head(f"/v2/app/blobs/{UNKNOWN_DIGEST}")
    assert resp.status == 404


async def test_malformed_digest_in_blob_path_is_400_digest_invalid(client):
    resp = await client.get("/v2/app/blobs/sha256:totallywrong")
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_blob_pushed_to_one_repository_is_404_in_another(client, blob):
    """Knowing a digest does not give access to a blob through a repository that lacks it."""
    await push_blob(client, "other", b"something else")
    for method in ("GET", "HEAD"):
        resp = await client.request(method, f"/v2/other/blobs/{blob}")
        assert resp.status == 404
    resp = await client.get(f"/v2/never-pushed/blobs/{blob}")
    await assert_error(resp, 404, "BLOB_UNKNOWN")


async def test_sha512_blob_is_served_under_its_sha512_digest(client):
    digest = await push_blob(client, "app", BLOB, algorithm="sha512")
    assert digest.startswith("sha512:")
    resp = await client.get(f"/v2/app/blobs/{digest}")
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await resp.read() == BLOB
    # The same bytes under their sha256 digest are a different, unknown blob.
    resp = await client.get(f"/v2/app/blobs/{digest_of(BLOB)}")
    assert resp.status == 404


async def test_delete_blob_is_202_then_the_blob_is_404(client, blob):
    resp = await client.delete(f"/v2/app/blobs/{blob}")
    assert resp.status == 202
    resp = await client.get(f"/v2/app/blobs/{blob}")
    await assert_error(resp, 404, "BLOB_UNKNOWN")
    resp = await client.head(f"/v2/app/blobs/{blob}")
    assert resp.status == 404


async def test_delete_blob_leaves_other_repositories_linking_it_intact(client, blob):
    await push_blob(client, "other", BLOB)
    assert (await client.delete(f"/v2/app/blobs/{blob}")).status == 202
    resp = await client.get(f"/v2/other/blobs/{blob}")
    assert resp.status == 200
    assert await resp.read() == BLOB


async def test_delete_unknown_blob_is_404_blob_unknown(client, blob):
    resp = await client.delete(f"/v2/app/blobs/{UNKNOWN_DIGEST}")
    await assert_error(resp, 404, "BLOB_UNKNOWN")
    assert (await client.delete(f"/v2/app/blobs/{blob}")).status == 202
    resp = await client.delete(f"/v2/app/blobs/{blob}")
    await assert_error(resp, 404, "BLOB_UNKNOWN")


async def test_blob_deleted_then_pushed_again_is_served_again(client, blob):
    assert (await client.delete(f"/v2/app/blobs/{blob}")).status == 202
    assert await push_blob(client, "app", BLOB) == blob
    resp = await client.get(f"/v2/app/blobs/{blob}")
    assert await resp.read() == BLOB


async def test_a_blob_whose_bytes_were_lost_is_stored_again_by_its_next_push(
        client, registry, driver, blob):
    """A record left pointing at bytes storage no longer has must not turn the next push of
    the blob into a no-op (a 201, then a 404 or 500 for every pull): the push stores it."""
    record = await registry.store.blobs.get(Digest.parse(blob))
    assert record is not None
    await driver.delete(record.key)  # the record is kept
    assert await push_blob(client, "app", BLOB) == blob  # 201
    resp = await client.get(f"/v2/app/blobs/{blob}")
    assert resp.status == 200 and await resp.read() == BLOB


async def test_with_redirects_a_blob_get_is_sent_to_a_url_that_serves_it_for_that_long(driver):
    """With `redirect_expiry`, a whole-blob GET answers 307 to a presigned storage URL valid
    that long (S3); storage that has no such URLs (the filesystem) serves the bytes through
    the registry. A ranged GET is always served by the registry."""
    async with serving(driver, redirect_expiry=300) as (_registry, client):
        digest = await push_blob(client, "app", BLOB)
        resp = await client.get(f"/v2/app/blobs/{digest}", allow_redirects=False)
        if isinstance(driver, FilesystemDriver):
            assert resp.status == 200
            assert await resp.read() == BLOB
        else:
            assert resp.status == 307
            assert resp.headers["Docker-Content-Digest"] == digest
            url = resp.headers["Location"]
            assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["300"]
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
            assert body == BLOB
        resp = await client.get(f"/v2/app/blobs/{digest}", headers={"Range": "bytes=1-2"},
                                allow_redirects=False)
        assert resp.status == 206
        assert await resp.read() == BLOB[1:3]
