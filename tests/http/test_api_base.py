"""`GET /v2/`, routing errors and the error envelope common to every endpoint."""

from __future__ import annotations

import asyncio

from sshreg.storage.base import PreconditionFailed, StorageError
from tests.conftest import TEST_IDENTITY_HEADER

from .helpers_api import as_identity, assert_error, push_image, put_manifest, raw_request, start_upload


async def test_v2_base_answers_200_with_an_empty_json_object(client):
    resp = await client.get("/v2/")
    assert resp.status == 200
    assert await resp.json() == {}
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_v2_base_without_trailing_slash_answers_the_same(client):
    resp = await raw_request(client, "GET", "/v2")
    assert resp.status == 200
    assert resp.json() == {}


async def test_v2_base_accepts_a_read_only_key(client):
    resp = await client.get("/v2/", headers=as_identity("reader"))
    assert resp.status == 200


async def test_request_without_an_identity_is_401_unauthorized(client):
    resp = await client.get("/v2/", headers=as_identity("nobody"))
    await assert_error(resp, 401, "UNAUTHORIZED")


async def test_unknown_endpoint_is_404_with_the_error_envelope(client):
    for path in ("/v2/x/unknown/thing", "/v1/", "/", "/v2/x/manifests/"):
        resp = await client.get(path)
        await assert_error(resp, 404, "UNSUPPORTED")


async def test_wrong_method_on_a_known_endpoint_is_405_with_allow(client):
    resp = await client.post("/v2/x/manifests/latest")
    await assert_error(resp, 405, "UNSUPPORTED")
    assert set(resp.headers["Allow"].split(", ")) == {"GET", "HEAD", "PUT", "DELETE"}


async def test_error_responses_carry_the_api_version_header(client):
    resp = await client.get("/v2/x/manifests/latest")
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def expect_continue(client, target: str, body: bytes, identity: str = "full") -> tuple[bytes, bytes]:
    """Send headers with `Expect: 100-continue`; return what came back before the body was
    sent (within a second) and, if that was `100 Continue`, what came back after the body.
    Like curl, give up on the connection when the early answer is a final one."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write((f"PATCH {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                      f"{TEST_IDENTITY_HEADER}: {identity}\r\n"
                      f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode())
        await writer.drain()
        try:
            early = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1)
        except TimeoutError:
            early = b""
        if not early.startswith(b"HTTP/1.1 100"):
            return early, b""
        writer.write(body)
        await writer.drain()
        return early, await reader.read()
    finally:
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent(client):
    location = await start_upload(client, "app")
    early, final = await expect_continue(client, location, b"x" * 1000)
    assert early == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 202 ")
    assert b"Range: 0-999\r\n" in final


async def test_refused_request_with_expect_gets_its_final_status_without_100(client):
    location = await start_upload(client, "app")
    early, _ = await expect_continue(client, location, b"x" * 1000, identity="reader")
    assert early.startswith(b"HTTP/1.1 403 ")


async def test_storage_failure_is_503_unavailable_with_retry_after(client, registry, monkeypatch):
    async def broken(*args, **kwargs):
        raise StorageError("disk on fire")

    monkeypatch.setattr(registry.store.driver, "get", broken)
    resp = await client.get("/v2/app/manifests/latest")
    await assert_error(resp, 503, "UNAVAILABLE")
    assert resp.headers["Retry-After"] == "5"


async def test_lost_compare_and_swap_is_429_toomanyrequests_with_retry_after(client, registry, monkeypatch):
    image = await push_image(client, "app")

    async def always_changed(*args, **kwargs):
        raise PreconditionFailed("tag moved")

    monkeypatch.setattr(registry.store.tags, "set", always_changed)
    resp = await put_manifest(client, "app", "latest", image.manifest)
    await assert_error(resp, 429, "TOOMANYREQUESTS")
    assert resp.headers["Retry-After"] == "1"


async def test_unexpected_failure_is_500_with_the_error_envelope(client, registry, monkeypatch):
    async def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(registry.store.repositories, "names", bug)
    resp = await client.get("/v2/_catalog")
    await assert_error(resp, 500, "UNKNOWN")
