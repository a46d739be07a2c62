"""Cross-repository blob mounts: `POST /v2/<name>/blobs/uploads/?mount=<digest>[&from=<repo>]`."""

from __future__ import annotations

import re

from .helpers_api import UNKNOWN_DIGEST, as_identity, assert_error, push_blob

BLOB = b"a layer shared between repositories" * 100
SESSION = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/[0-9a-f-]{36}")


def assert_fresh_session(resp, name: str) -> None:
    assert resp.status == 202
    match = SESSION.fullmatch(resp.headers["Location"])
    assert match is not None and match["name"] == name
    assert resp.headers["Range"] == "0-0"


async def test_mount_from_a_repository_holding_the_blob_is_201(client):
    digest = await push_blob(client, "source", BLOB)
    resp = await client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "source"})
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/target/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    resp = await client.get(f"/v2/target/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == BLOB


async def test_mount_query_that_is_not_url_encoded_is_understood(client):
    """containerd sends `?mount=sha256:...&from=a/b` without percent-encoding."""
    digest = await push_blob(client, "team/source", BLOB)
    resp = await client.post(f"/v2/target/blobs/uploads/?mount={digest}&from=team/source")
    assert resp.status == 201


async def test_mount_from_a_repository_without_the_blob_is_202_with_a_fresh_session(client):
    digest = await push_blob(client, "source", BLOB)
    await push_blob(client, "empty", b"unrelated")
    resp = await client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "empty"})
    assert_fresh_session(resp, "target")
    assert (await client.get(f"/v2/target/blobs/{digest}")).status == 404
    # The session is a real one: the blob can be uploaded through it.
    resp = await client.put(resp.headers["Location"], params={"digest": digest}, data=BLOB)
    assert resp.status == 201


async def test_mount_of_an_unknown_blob_is_202_with_a_fresh_session(client):
    resp = await client.post("/v2/target/blobs/uploads/",
                             params={"mount": UNKNOWN_DIGEST, "from": "source"})
    assert_fresh_session(resp, "target")


async def test_mount_from_a_nonexistent_or_invalid_repository_is_202(client):
    digest = await push_blob(client, "source", BLOB)
    for source in ("nowhere", "../source", "Source", ""):
        resp = await client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": source})
        assert_fresh_session(resp, "target")
    assert (await client.get(f"/v2/target/blobs/{digest}")).status == 404


async def test_mount_with_a_malformed_digest_is_202(client):
    resp = await client.post("/v2/target/blobs/uploads/", params={"mount": "sha256:zz", "from": "source"})
    assert_fresh_session(resp, "target")


async def test_mount_without_from_finds_the_blob_in_any_readable_repository(client):
    digest = await push_blob(client, "somewhere/else", BLOB)
    resp = await client.post("/v2/target/blobs/uploads/", params={"mount": digest})
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/target/blobs/{digest}"
    assert (await client.get(f"/v2/target/blobs/{digest}")).status == 200


async def test_mount_without_from_of_an_unknown_blob_is_202(client):
    resp = await client.post("/v2/target/blobs/uploads/", params={"mount": UNKNOWN_DIGEST})
    assert_fresh_session(resp, "target")


async def test_mount_of_a_blob_deleted_from_its_only_repository_is_202(client):
    digest = await push_blob(client, "source", BLOB)
    assert (await client.delete(f"/v2/source/blobs/{digest}")).status == 202
    resp = await client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "source"})
    assert_fresh_session(resp, "target")
    resp = await client.post("/v2/target/blobs/uploads/", params={"mount": digest})
    assert_fresh_session(resp, "target")


async def test_team_key_cannot_mount_from_a_repository_it_cannot_read(client):
    digest = await push_blob(client, "other/secret", BLOB)
    team = as_identity("team")
    resp = await client.post("/v2/team/app/blobs/uploads/",
                             params={"mount": digest, "from": "other/secret"}, headers=team)
    assert_fresh_session(resp, "team/app")
    resp = await client.get(f"/v2/team/app/blobs/{digest}", headers=team)
    await assert_error(resp, 404, "BLOB_UNKNOWN")


async def test_team_key_mount_without_from_ignores_repositories_it_cannot_read(client):
    digest = await push_blob(client, "other/secret", BLOB)
    team = as_identity("team")
    resp = await client.post("/v2/team/app/blobs/uploads/", params={"mount": digest}, headers=team)
    assert_fresh_session(resp, "team/app")
    assert (await client.get(f"/v2/team/app/blobs/{digest}", headers=team)).status == 404


async def test_team_key_mounts_between_its_own_repositories(client):
    digest = await push_blob(client, "team/base", BLOB, identity="team")
    team = as_identity("team")
    resp = await client.post("/v2/team/app/blobs/uploads/",
                             params={"mount": digest, "from": "team/base"}, headers=team)
    assert resp.status == 201
    assert (await client.get(f"/v2/team/app/blobs/{digest}", headers=team)).status == 200


async def test_read_only_key_cannot_mount(client):
    digest = await push_blob(client, "source", BLOB)
    resp = await client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "source"},
                             headers=as_identity("reader"))
    await assert_error(resp, 403, "DENIED")
    assert (await client.get(f"/v2/target/blobs/{digest}")).status == 404
