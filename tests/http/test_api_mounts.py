"""Cross-repository blob mounts: `POST /v2/<name>/blobs/uploads/?mount=<digest>[&from=<repo>]`."""

from __future__ import annotations

import logging
import re

from .helpers_api import (
    UNKNOWN_DIGEST,
    CountingDriver,
    as_identity,
    assert_error,
    push_blob,
    serving,
)

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


async def test_push_only_key_mounts_from_a_named_repository_it_pushes_to(client):
    """Push implies pull: a key with only the push right (no pull, no delete) may mount
    from a repository it pushes to."""
    digest = await push_blob(client, "team/base", BLOB, identity="pusher")
    pusher = as_identity("pusher")
    resp = await client.post("/v2/team/app/blobs/uploads/",
                             params={"mount": digest, "from": "team/base"}, headers=pusher)
    assert resp.status == 201
    assert (await client.get(f"/v2/team/app/blobs/{digest}", headers=pusher)).status == 200


async def test_push_only_key_mount_without_from_finds_the_blob_where_it_pushes(client):
    digest = await push_blob(client, "team/base", BLOB, identity="pusher")
    pusher = as_identity("pusher")
    resp = await client.post("/v2/team/app/blobs/uploads/", params={"mount": digest},
                             headers=pusher)
    assert resp.status == 201
    assert (await client.get(f"/v2/team/app/blobs/{digest}", headers=pusher)).status == 200


async def test_a_mount_refused_for_want_of_read_rights_is_logged_with_the_key(client, caplog):
    """The client only sees a fresh session (202): the warning is the operator's trace of a
    key asking for a repository it may not read. An allowed mount leaves none."""
    caplog.set_level(logging.WARNING, logger="sshreg.uploads")
    secret = await push_blob(client, "other/secret", BLOB)
    shared = await push_blob(client, "team/base", BLOB * 2, identity="team")
    team = as_identity("team")
    resp = await client.post("/v2/team/app/blobs/uploads/",
                             params={"mount": shared, "from": "team/base"}, headers=team)
    assert resp.status == 201
    assert [r for r in caplog.records if r.name == "sshreg.uploads"] == []
    resp = await client.post("/v2/team/app/blobs/uploads/",
                             params={"mount": secret, "from": "other/secret"}, headers=team)
    assert_fresh_session(resp, "team/app")
    [refused] = [r for r in caplog.records if r.name == "sshreg.uploads"]
    assert refused.levelno == logging.WARNING
    assert refused.args["from_repository"] == "other/secret"
    assert refused.args["digest"] == secret
    assert refused.args["fingerprint"] == "SHA256:team-test-key"


async def test_the_work_of_a_mount_without_from_does_not_tell_what_unreadable_repositories_hold(
        driver):
    """A key that may read only some repositories asks to mount a blob only an unreadable
    repository holds, then one nobody holds: storage does the same work for both, so the
    time of the answer does not tell the key that the first exists."""
    counting = CountingDriver(driver)
    async with serving(counting) as (_registry, client):
        secret = await push_blob(client, "other/secret", BLOB)
        await push_blob(client, "team/base", b"the team's own", identity="team")
        work = []
        for digest in (secret, UNKNOWN_DIGEST, secret):
            counting.calls.clear()
            resp = await client.post("/v2/team/app/blobs/uploads/", params={"mount": digest},
                                     headers=as_identity("team"))
            assert_fresh_session(resp, "team/app")
            work.append(dict(counting.calls))
    assert work[0] == work[1] == work[2]
