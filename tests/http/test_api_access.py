"""Rights of the key behind a request: read-only keys, repository-scoped keys, DENIED (403)."""

from __future__ import annotations

import logging

import pytest

from sshreg.oci import OCI_MANIFEST
from tests.support.hashing import digest_of

from .helpers_api import (
    as_identity,
    assert_error,
    image_manifest,
    push_blob,
    push_image,
    start_upload,
)

READER = as_identity("reader")
TEAM = as_identity("team")
PUSHER = as_identity("pusher")


async def test_read_only_key_may_pull_manifests_blobs_tags_and_referrers(client):
    image = await push_image(client, "app", "latest")
    for path in ("/v2/app/manifests/latest", f"/v2/app/manifests/{image.digest}",
                 f"/v2/app/blobs/{next(iter(image.blobs))}", "/v2/app/tags/list",
                 f"/v2/app/referrers/{image.digest}", "/v2/_catalog"):
        resp = await client.get(path, headers=READER)
        assert resp.status == 200, path
    assert (await client.head("/v2/app/manifests/latest", headers=READER)).status == 200


async def test_read_only_key_is_denied_every_push(client):
    image = await push_image(client, "app", "latest")
    location = await start_upload(client, "app")
    blob = b"blob"
    attempts = [
        ("POST", "/v2/app/blobs/uploads/", {}),
        ("POST", "/v2/app/blobs/uploads/", {"digest": digest_of(blob)}),
        ("PATCH", location, {}),
        ("PUT", location, {"digest": digest_of(blob)}),
        ("GET", location, {}),
        ("DELETE", location, {}),
    ]
    for method, path, params in attempts:
        resp = await client.request(method, path, params=params, data=blob, headers=READER)
        await assert_error(resp, 403, "DENIED")
    resp = await client.put("/v2/app/manifests/other", data=image.manifest,
                            headers={**READER, "Content-Type": OCI_MANIFEST})
    await assert_error(resp, 403, "DENIED")
    # Nothing changed: the session is intact, no tag or blob appeared.
    assert (await client.get(location)).headers["Range"] == "0-0"
    assert (await client.get("/v2/app/manifests/other")).status == 404
    assert (await client.get(f"/v2/app/blobs/{digest_of(blob)}")).status == 404


async def test_read_only_key_is_denied_every_delete(client):
    image = await push_image(client, "app", "latest")
    blob = next(iter(image.blobs))
    for path in ("/v2/app/manifests/latest", f"/v2/app/manifests/{image.digest}",
                 f"/v2/app/blobs/{blob}"):
        resp = await client.delete(path, headers=READER)
        await assert_error(resp, 403, "DENIED")
    assert (await client.get("/v2/app/manifests/latest")).status == 200
    assert (await client.get(f"/v2/app/blobs/{blob}")).status == 200


async def test_team_key_pushes_pulls_and_deletes_in_its_repositories(client):
    data = b"team layer"
    digest = await push_blob(client, "team/app", data, identity="team")
    resp = await client.get(f"/v2/team/app/blobs/{digest}", headers=TEAM)
    assert await resp.read() == data
    assert (await client.delete(f"/v2/team/app/blobs/{digest}", headers=TEAM)).status == 202


async def test_push_only_key_pulls_where_it_may_push_and_nowhere_else(client):
    """A key with only `sshreg-push` pulls what it pushes (a client checks a blob or reads
    a base image before pushing), but reads nothing outside its globs and deletes nothing."""
    image = await push_image(client, "team/app", "latest")
    await push_image(client, "other/app", "latest", seed="other")
    blob = next(iter(image.blobs))
    for path, body in (("/v2/team/app/manifests/latest", image.manifest),
                       (f"/v2/team/app/blobs/{blob}", image.blobs[blob])):
        resp = await client.get(path, headers=PUSHER)
        assert resp.status == 200 and await resp.read() == body, path
    resp = await client.get("/v2/team/app/tags/list", headers=PUSHER)
    assert (await resp.json())["tags"] == ["latest"]
    assert await push_blob(client, "team/app", b"pushed", identity="pusher")
    resp = await client.get("/v2/_catalog", headers=PUSHER)
    assert await resp.json() == {"repositories": ["team/app"]}
    for path in ("/v2/other/app/manifests/latest", "/v2/other/app/tags/list"):
        await assert_error(await client.get(path, headers=PUSHER), 403, "DENIED")
    resp = await client.delete("/v2/team/app/manifests/latest", headers=PUSHER)
    await assert_error(resp, 403, "DENIED")


@pytest.mark.parametrize("path", ["/v2/other/app/tags/list", "/v2/other/app/manifests/latest",
                                  "/v2/team/app/nested/tags/list", "/v2/app/tags/list"])
async def test_team_key_cannot_read_outside_its_repositories(client, path):
    await push_image(client, "other/app", "latest")
    await push_image(client, "app", "latest", seed="top")
    resp = await client.get(path, headers=TEAM)
    await assert_error(resp, 403, "DENIED")


async def test_team_key_cannot_read_a_blob_of_another_repository_by_digest(client):
    digest = await push_blob(client, "other/app", b"secret")
    for method in ("GET", "HEAD"):
        resp = await client.request(method, f"/v2/other/app/blobs/{digest}", headers=TEAM)
        assert resp.status == 403
    resp = await client.get(f"/v2/team/app/blobs/{digest}", headers=TEAM)
    await assert_error(resp, 404, "BLOB_UNKNOWN")


async def test_team_key_cannot_push_outside_its_repositories(client):
    resp = await client.post("/v2/other/app/blobs/uploads/", headers=TEAM)
    await assert_error(resp, 403, "DENIED")
    resp = await client.put("/v2/other/app/manifests/latest", headers={**TEAM, "Content-Type": OCI_MANIFEST},
                            data=image_manifest({"mediaType": "x", "digest": digest_of(b""), "size": 0}, []))
    await assert_error(resp, 403, "DENIED")


async def test_team_key_sees_only_its_repositories_in_the_catalog(client):
    for name in ("team/app", "team/base", "other/app", "app", "team/app/nested"):
        await push_blob(client, name, name.encode())
    resp = await client.get("/v2/_catalog", headers=TEAM)
    assert await resp.json() == {"repositories": ["team/app", "team/base"]}
    resp = await client.get("/v2/_catalog?n=1", headers=TEAM)
    assert await resp.json() == {"repositories": ["team/app"]}
    assert "last=team%2Fapp" in resp.headers["Link"]
    resp = await client.get("/v2/_catalog?n=1&last=team/app", headers=TEAM)
    assert await resp.json() == {"repositories": ["team/base"]}
    assert "Link" not in resp.headers


async def test_refusal_reveals_nothing_about_existence(client):
    """DENIED is answered before looking anything up: existing and missing repositories look alike."""
    await push_image(client, "other/app", "latest")
    existing = await client.get("/v2/other/app/manifests/latest", headers=TEAM)
    missing = await client.get("/v2/other/nothing/manifests/latest", headers=TEAM)
    await assert_error(existing, 403, "DENIED")
    await assert_error(missing, 403, "DENIED")


async def test_pushes_deletes_and_refusals_are_audited_with_the_key(client, caplog):
    caplog.set_level(logging.INFO, logger="sshreg.audit")
    digest = await push_blob(client, "team/app", b"audited", identity="team")
    await client.delete(f"/v2/team/app/blobs/{digest}", headers=TEAM)
    await client.delete(f"/v2/team/app/blobs/{digest}", headers=READER)
    await client.get("/v2/team/app/tags/list", headers=READER)  # a read: not audited
    events = [r.msg for r in caplog.records if r.name == "sshreg.audit"]
    assert [(e["method"], e["status"], e["key"]) for e in events] == [
        ("POST", 201, "SHA256:team-test-key"),
        ("DELETE", 202, "SHA256:team-test-key"),
        ("DELETE", 403, "SHA256:read-only-test-key"),
    ]
    assert events[0]["repository"] == "team/app"
    assert events[0]["reference"] == digest
    assert events[0]["bytes"] == len(b"audited")
    assert events[2]["error"] == "DENIED"
