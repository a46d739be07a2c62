"""Management over SSH exec with real `ssh`: commands, their rights, and gc on both storages."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from urllib.error import HTTPError

import pytest

from sshreg.oci import OCI_INDEX, OCI_MANIFEST
from tests.conftest import S3_TEST_BUCKET
from tests.support.images import make_image
from tests.support.registry import RegistryHTTP
from tests.support.sshreg_server import ClientKey, SshregServer

pytestmark = pytest.mark.integration

GC_NOW = '[gc]\ngrace = "0s"\nsafety = "0s"\n'


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, ClientKey]:
    directory = tmp_path_factory.mktemp("mgmt-keys")
    return {n: ClientKey.generate(directory, n) for n in ("admin", "reader", "team", "pusher")}


def _lines(keys: dict[str, ClientKey]) -> list[str]:
    return [
        keys["admin"].line(),
        keys["reader"].line('sshreg-pull="**"'),
        keys["team"].line('sshreg-push="team/*",sshreg-delete="team/*"'),
        keys["pusher"].line('sshreg-push="**"'),
    ]


def _server(workdir: Path, keys: dict[str, ClientKey], storage: str | None = None,
            env: dict[str, str] | None = None) -> SshregServer:
    config = workdir / "config.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(GC_NOW)
    server = SshregServer(workdir, storage, extra_args=("--config", str(config)), env=env)
    server.authorize(*_lines(keys))
    return server.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys) -> SshregServer:
    srv = _server(tmp_path_factory.mktemp("mgmt"), keys)
    images = tmp_path_factory.mktemp("mgmt-images")
    with srv.tunnel(keys["admin"]) as tunnel:
        registry = RegistryHTTP(tunnel.url)
        registry.push_image("team/app", "1", make_image(images / "t", [2000], seed="team"))
        registry.push_image("other/app", "1", make_image(images / "o", [3000], seed="other"))
    yield srv
    srv.stop()


def _run(server: SshregServer, key: ClientKey, *command: str):
    return server.ssh(key, *command)


def test_whoami_shows_the_key_and_its_rights(server, keys):
    result = _run(server, keys["team"], "whoami", "--json")
    assert result.returncode == 0, result.stderr
    me = json.loads(result.stdout)
    assert me["fingerprint"] == keys["team"].fingerprint and me["comment"] == "team@test"
    assert me["push"] == ["team/*"] and me["admin"] is False
    assert keys["admin"].fingerprint in _run(server, keys["admin"], "whoami").stdout


def test_repos_lists_only_what_the_key_may_pull(server, keys):
    assert _run(server, keys["admin"], "repos").stdout.split() == ["other/app", "team/app"]
    assert _run(server, keys["team"], "repos").stdout.split() == ["team/app"]
    assert json.loads(_run(server, keys["reader"], "repos", "--json").stdout) == [
        "other/app", "team/app"]


def test_tags_and_inspect_describe_an_image(server, keys):
    tags = json.loads(_run(server, keys["reader"], "tags", "team/app", "--json").stdout)
    assert [t["tag"] for t in tags] == ["1"]
    info = json.loads(_run(server, keys["reader"], "inspect", "team/app:1", "--json").stdout)
    assert info["digest"] == tags[0]["digest"]
    assert len(info["layers"]) == 1 and info["layers"][0]["size"] > 2000
    assert info["totalSize"] > info["layers"][0]["size"]
    text = _run(server, keys["reader"], "inspect", f"team/app@{info['digest']}").stdout
    assert "layer" in text and "total" in text


CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but \t and \n


def test_inspect_escapes_control_characters_a_pusher_wrote_in_table_and_json(server, keys):
    """An index whose platforms and artifactType, and a referrer whose artifactType, carry
    terminal escape sequences: the table shows them as visible escapes, JSON as JSON escapes
    (the values still read back exactly), and no raw control character reaches the terminal."""
    with server.tunnel(keys["admin"]) as tunnel:
        registry = RegistryHTTP(tunnel.url)
        image = registry.manifest("team/app", "1")
        platform = {"os": "linux\x1b[2J", "architecture": "\x1b]0;owned\x07amd64",
                    "variant": "v8\r\x9b"}
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                            "artifactType": "application/x\x1b[31m+red\x7f",
                            "manifests": [{"mediaType": OCI_MANIFEST, "digest": image.digest,
                                           "size": len(image.body), "platform": platform}]})
        index_digest = registry.push_manifest("team/app", "escapes", index.encode(), OCI_INDEX)
        referrer = json.loads(image.body)
        referrer.update(artifactType="application/sig\x1b[5m\n",
                        subject={"mediaType": OCI_INDEX, "digest": index_digest,
                                 "size": len(index.encode())})
        referrer_body = json.dumps(referrer).encode()
        registry.push_manifest("team/app", "sha256:" + hashlib.sha256(referrer_body).hexdigest(),
                               referrer_body, OCI_MANIFEST)
    table = _run(server, keys["reader"], "inspect", "team/app:escapes")
    assert table.returncode == 0, table.stderr
    assert not CONTROL_CHARACTERS.search(table.stdout), repr(table.stdout)
    assert "linux\\x1b[2J/\\x1b]0;owned\\x07amd64/v8\\r\\x9b" in table.stdout
    assert "application/x\\x1b[31m+red\\x7f" in table.stdout
    assert "application/sig\\x1b[5m\\n" in table.stdout
    as_json = _run(server, keys["reader"], "inspect", "team/app:escapes", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert not CONTROL_CHARACTERS.search(as_json.stdout), repr(as_json.stdout)
    info = json.loads(as_json.stdout)
    assert info["artifactType"] == "application/x\x1b[31m+red\x7f"
    assert info["manifests"][0]["platform"] == "linux\x1b[2J/\x1b]0;owned\x07amd64/v8\r\x9b"
    assert info["referrers"][0]["artifactType"] == "application/sig\x1b[5m\n"


def test_du_reports_stored_and_shared_bytes(server, keys):
    usage = json.loads(_run(server, keys["admin"], "du", "--json").stdout)
    assert {u["repository"] for u in usage} == {"team/app", "other/app"}
    assert all(u["bytes"] > 2000 and u["shared"] == 0 for u in usage)
    only = json.loads(_run(server, keys["team"], "du", "--json").stdout)
    assert [u["repository"] for u in only] == ["team/app"]


def test_a_key_limited_to_team_sees_nothing_of_other(server, keys):
    for command in (("tags", "other/app"), ("inspect", "other/app:1"), ("du", "other/app"),
                    ("rm", "other/app:1")):
        result = _run(server, keys["team"], *command)
        assert result.returncode == 1, command
        assert "denied" in result.stderr and "sha256:" not in result.stdout + result.stderr
    server.wait_for_log(f"for key {keys['team'].fingerprint} (team@test): denied")


def test_rm_needs_the_delete_right_and_is_audited(server, keys, tmp_path):
    with server.tunnel(keys["admin"]) as tunnel:
        RegistryHTTP(tunnel.url).push_image("team/rm", "doomed",
                                            make_image(tmp_path / "i", [500], seed="rm"))
    refused = _run(server, keys["reader"], "rm", "team/rm:doomed")
    assert refused.returncode == 1 and "denied" in refused.stderr
    result = _run(server, keys["team"], "rm", "team/rm:doomed")
    assert result.returncode == 0 and "deleted team/rm:doomed" in result.stdout
    assert _run(server, keys["team"], "rm", "team/rm:doomed").returncode == 3  # gone
    server.wait_for_log('"command": "rm"')


def test_gc_needs_the_admin_right(server, keys):
    for name in ("team", "reader", "pusher"):
        result = _run(server, keys[name], "gc")
        assert result.returncode == 1 and "admin" in result.stderr
    dry = json.loads(_run(server, keys["admin"], "gc", "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True


def test_unknown_commands_get_help_not_a_stack_trace(server, keys):
    result = _run(server, keys["admin"], "format", "c:")
    assert result.returncode == 2
    assert "unknown command 'format'" in result.stderr and "Traceback" not in result.stderr
    assert "gc [--dry-run]" in result.stderr
    assert "whoami" in _run(server, keys["admin"], "help").stdout
    assert _run(server, keys["admin"], "tags").returncode == 2  # missing argument


@pytest.mark.parametrize("storage", ["filesystem", "s3"])
def test_gc_over_ssh_removes_a_deleted_images_blobs_and_keeps_the_other(
        storage, tmp_path, keys, request, containers_env):
    env = None
    url = None
    if storage == "s3":
        seaweed = request.getfixturevalue("s3_server")
        env = seaweed.env()
        url = f"s3://{S3_TEST_BUCKET}/gc-{tmp_path.name}"
    server = _server(tmp_path / "srv", keys, url, env)
    try:
        a = make_image(tmp_path / "a", [3000, 4000], seed="shared", label="a")
        b = make_image(tmp_path / "b", [3000, 5000], seed="shared", label="b")
        assert a.layers[0].digest == b.layers[0].digest
        with server.tunnel(keys["admin"]) as tunnel:
            registry = RegistryHTTP(tunnel.url)
            registry.push_image("gc/a", "1", a)
            registry.push_image("gc/b", "1", b)
            assert _run(server, keys["admin"], "rm", "gc/a:1").returncode == 0
            # gc treats what was written in its first second as new (S3 keeps whole seconds).
            time.sleep(1.1)

            result = _run(server, keys["admin"], "gc", "--json")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert report["blobs"] >= 2 and report["bytes_reclaimed"] > 4000

            assert not registry.has_blob("gc/a", a.layers[1].digest)
            with pytest.raises(HTTPError) as gone:
                registry.manifest("gc/a", a.digest)
            assert gone.value.code == 404
            for layer in b.layers:
                assert registry.blob("gc/b", layer.digest).body == (
                    b.layout / "blobs" / "sha256" / layer.digest.split(":")[1]).read_bytes()
            pulled = tmp_path / "pulled"
            digest = containers_env.skopeo().copy(f"docker://{tunnel.registry}/gc/b:1",
                                                  f"oci:{pulled}:1", preserve_digests=True)
            assert digest == b.digest
    finally:
        server.stop()
