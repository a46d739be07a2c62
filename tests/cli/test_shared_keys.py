"""authorized_keys in a bucket (`[server] authorized_keys = "s3://BUCKET/KEY"`): polling that
never makes a login wait, the last good copy kept through failures, and `sshreg keys` edits
with conditional writes that never lose another admin's edit (on SeaweedFS)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest

from sshreg.config import load_config
from sshreg.keys.bucket_file import (
    BucketFile,
    SharedAuthorizedKeys,
    edit_shared,
    open_bucket_file,
)
from sshreg.keys.edits import Grant, new_line, with_key
from sshreg.settings import ConfigError
from sshreg.storage.base import SmallObject, StorageError
from sshreg.storage.filesystem import FilesystemDriver
from tests.conftest import S3_TEST_BUCKET

TIMEOUT = 60


def new_key(comment: str) -> tuple[str, str]:
    """(public key line, SHA256 fingerprint) of a fresh ed25519 key."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key.export_public_key().decode().strip(), key.get_fingerprint("sha256")


class FakeFile:
    """A bucket object the test controls: its text, failures, or calls that never return."""

    def __init__(self, text: str | None) -> None:
        self.text = text
        self.version = 0
        self.failing = False
        self.hanging = False
        self.reads = 0

    def set(self, text: str | None) -> None:
        self.text, self.version = text, self.version + 1

    async def _answer(self) -> None:
        if self.hanging:
            await asyncio.Event().wait()
        if self.failing:
            raise StorageError("s3 head_object: connection refused")

    async def etag(self) -> str | None:
        await self._answer()
        return None if self.text is None else f'"v{self.version}"'

    async def read(self) -> SmallObject | None:
        await self._answer()
        self.reads += 1
        return None if self.text is None else SmallObject(self.text.encode(), f'"v{self.version}"')

    async def close(self) -> None:
        pass

    def __str__(self) -> str:
        return "s3://bucket/keys/authorized_keys"


def fingerprints(keys: SharedAuthorizedKeys) -> set[str]:
    return {e.fingerprint for e in keys.entries()}


async def test_the_object_is_read_only_when_its_etag_changed():
    alice, alice_fp = new_key("alice")
    bob, bob_fp = new_key("bob")
    source = FakeFile(alice + "\n")
    keys = SharedAuthorizedKeys(source, interval=3600)  # polls by hand below
    await keys.start()
    try:
        assert fingerprints(keys) == {alice_fp}
        for _ in range(3):
            assert await keys.refresh() is False
        assert source.reads == 1
        source.set(alice + "\n" + bob + "\n")
        assert await keys.refresh() is True
        assert fingerprints(keys) == {alice_fp, bob_fp} and source.reads == 2
        source.set(None)  # removed: nobody may log in, as with a missing local file
        assert await keys.refresh() is True
        assert keys.entries() == []
        assert await keys.refresh() is False
    finally:
        await keys.close()


async def test_a_failing_bucket_keeps_the_last_good_copy_and_is_logged_once(caplog):
    alice, alice_fp = new_key("alice")
    source = FakeFile(alice + "\n")
    keys = SharedAuthorizedKeys(source, interval=0.05)
    caplog.set_level(logging.INFO, logger="sshreg.keys")
    await keys.start()
    try:
        source.failing = True
        source.set("")  # a change the gateway cannot see while the bucket fails
        await asyncio.sleep(0.5)  # about ten failed polls
        assert fingerprints(keys) == {alice_fp}
        errors = [r for r in caplog.records if "cannot fetch" in r.getMessage()]
        assert len(errors) == 1 and "1 key(s)" in errors[0].getMessage()
        source.failing = False
        for _ in range(100):
            if not keys.entries():
                break
            await asyncio.sleep(0.05)
        assert keys.entries() == []  # the change arrives once the bucket answers
        assert any("can be fetched again" in r.getMessage() for r in caplog.records)
    finally:
        await keys.close()


async def test_a_malformed_line_in_the_object_never_keeps_a_removed_key_in(caplog):
    """The bucket copy follows the file's rule: the bad line is skipped and named, the rest
    applies (before, the parse raised, the poll counted as failed, and the copy with the
    removed key stayed in use)."""
    alice, alice_fp = new_key("alice")
    bob, _ = new_key("bob")
    carol, carol_fp = new_key("carol")
    source = FakeFile(alice + "\n" + bob + "\n")
    keys = SharedAuthorizedKeys(source, interval=0.05)
    caplog.set_level(logging.INFO, logger="sshreg.keys")
    await keys.start()
    try:
        source.set(alice + "\n" + 'permitopen="localhost:²" ' + carol + "\n")
        for _ in range(100):
            if len(keys.entries()) == 1:
                break
            await asyncio.sleep(0.05)
        assert fingerprints(keys) == {alice_fp}
        messages = [r.getMessage() for r in caplog.records]
        assert (f"{source} line 2 ignored: invalid permitopen 'localhost:²' (port 1-65535 or *)"
                f" (key {carol_fp})") in messages
        assert not any("cannot fetch" in m for m in messages)
    finally:
        await keys.close()


async def test_logins_never_wait_for_a_bucket_that_hangs():
    alice, alice_fp = new_key("alice")
    source = FakeFile(alice + "\n")
    keys = SharedAuthorizedKeys(source, interval=0.05, fetch_timeout=0.2)
    await keys.start()
    try:
        source.hanging = True
        source.set("")
        loop = asyncio.get_running_loop()
        began = loop.time()
        for _ in range(20):  # what validate_public_key does on every login: synchronous
            assert fingerprints(keys) == {alice_fp}
            assert keys.reload_if_changed() is False  # SIGHUP: schedules, never waits
            await asyncio.sleep(0.02)
        assert loop.time() - began < 2
        await asyncio.sleep(0.5)  # polls time out one after another, the copy stays
        assert fingerprints(keys) == {alice_fp}
    finally:
        await keys.close()


async def test_a_gateway_that_starts_while_the_bucket_fails_admits_nobody_until_it_answers():
    alice, alice_fp = new_key("alice")
    source = FakeFile(alice + "\n")
    source.failing = True
    keys = SharedAuthorizedKeys(source, interval=0.05)
    await keys.start()  # does not raise: the service starts and keeps trying
    try:
        assert keys.entries() == []
        source.failing = False
        for _ in range(100):
            if keys.entries():
                break
            await asyncio.sleep(0.05)
        assert fingerprints(keys) == {alice_fp}
    finally:
        await keys.close()


async def assert_concurrent_adds_land(open_source: Callable[[], BucketFile], count: int) -> None:
    """`count` admins add a key each at the same moment: every line lands, once."""
    added = [new_key(f"user{i}") for i in range(count)]
    grant = Grant.parse(None, False)

    async def add(line: str) -> None:
        source = open_source()
        text, entry = new_line(line, grant)
        try:
            await edit_shared(source, lambda lines: with_key(lines, text, entry, False, source))
        finally:
            await source.close()

    await asyncio.gather(*(add(line) for line, _ in added))
    keys = SharedAuthorizedKeys(open_source())
    await keys.start()
    try:
        assert sorted(e.fingerprint for e in keys.entries()) == sorted(fp for _, fp in added)
    finally:
        await keys.close()


async def test_the_object_can_live_on_any_driver(tmp_path):
    """`BucketFile` takes the driver contract, not S3: concurrent edits through a filesystem
    driver's conditional writes lose nothing either."""
    await assert_concurrent_adds_land(lambda: BucketFile(
        FilesystemDriver(tmp_path), "keys/authorized_keys", "fs:authorized_keys"), 4)


def test_config_accepts_a_bucket_object_or_a_path_and_refuses_a_bucket_alone(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[server]\nauthorized_keys = "s3://team-bucket/registry/authorized_keys"\n'
                      'authorized_keys_poll = "5s"\n')
    loaded = load_config(config).server
    assert loaded.shared_keys and loaded.authorized_keys_poll == 5.0
    assert load_config(keys=str(tmp_path)).server.authorized_keys_location == str(
        tmp_path / "authorized_keys")
    config.write_text('[server]\nauthorized_keys = "/mnt/shared/authorized_keys"\n')
    assert not load_config(config).server.shared_keys
    for bad in ("s3://team-bucket", "s3://team-bucket/", "s3://Bad_Bucket/k"):
        config.write_text(f'[server]\nauthorized_keys = "{bad}"\n')
        with pytest.raises(ConfigError, match="s3://BUCKET/KEY"):
            load_config(config)


# -- on a real S3 server -------------------------------------------------------------------


@pytest.fixture
def bucket_url(s3_server, monkeypatch) -> str:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{S3_TEST_BUCKET}/shared-keys-{uuid.uuid4().hex[:8]}/authorized_keys"


async def test_concurrent_edits_through_conditional_writes_lose_nothing(bucket_url):
    """Eight admins add a key each at the same moment: every line lands, once."""
    await assert_concurrent_adds_land(lambda: open_bucket_file(bucket_url), 8)


def sshreg_keys(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sshreg", "keys", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)


def test_sshreg_keys_add_list_remove_on_a_bucket_object(bucket_url, tmp_path, s3_server):
    env = {**os.environ, **s3_server.env()}
    config = tmp_path / "sshreg.toml"
    config.write_text(f'[server]\nauthorized_keys = "{bucket_url}"\n')
    line, fingerprint = new_key("carol@laptop")
    (tmp_path / "carol.pub").write_text(line + "\n")

    result = sshreg_keys(config, env, "add", str(tmp_path / "carol.pub"), "--pull-only")
    assert result.returncode == 0, result.stderr
    assert f"added {fingerprint} carol@laptop on line 1" in result.stdout
    again = sshreg_keys(config, env, "add", str(tmp_path / "carol.pub"))
    assert again.returncode == 1 and "already in s3://" in again.stderr
    listed = json.loads(sshreg_keys(config, env, "list", "--json").stdout)
    assert [(k["fingerprint"], k["rights"]["pull"], k["rights"]["push"])
            for k in listed["keys"]] == [(fingerprint, ["**"], [])]
    assert not (tmp_path / "keys").exists()  # nothing written on the box
    config.write_text(f'[server]\nauthorized_keys = "{bucket_url}"\nkeys = "{tmp_path / "keys"}"\n'
                      f'[storage]\nurl = "{bucket_url.rsplit("/", 1)[0]}"\n')
    check = subprocess.run([sys.executable, "-m", "sshreg", "check-config", "--config", str(config)],
                           capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert check.returncode == 0, check.stderr
    assert f"{bucket_url}: 1 authorized key(s)" in check.stdout

    result = sshreg_keys(config, env, "remove", "carol@laptop")
    assert result.returncode == 0 and f"removed line 1: {fingerprint}" in result.stdout
    assert json.loads(sshreg_keys(config, env, "list", "--json").stdout)["keys"] == []


def test_sshreg_keys_on_a_bucket_object_with_a_malformed_line(bucket_url, tmp_path, s3_server):
    """`list` names the bad line and why, `remove` and `add` work around it, and the line is
    left as it was."""
    env = {**os.environ, **s3_server.env()}
    config = tmp_path / "sshreg.toml"
    config.write_text(f'[server]\nauthorized_keys = "{bucket_url}"\n')
    (alice, alice_fp), (bob, _), (carol, carol_fp) = (new_key(n) for n in ("alice", "bob", "carol"))
    bucket, key = bucket_url.removeprefix("s3://").split("/", 1)
    bad = f'expiry-time="00000101" {bob}\n'
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=f"{alice}\n{bad}".encode())

    listed = json.loads(sshreg_keys(config, env, "list", "--json").stdout)
    assert [k["fingerprint"] for k in listed["keys"]] == [alice_fp]
    assert [(i["line"], i["reason"]) for i in listed["ignored"]] == [
        (2, "invalid expiry-time '00000101': year 0 is out of range")]
    assert sshreg_keys(config, env, "remove", alice_fp).returncode == 0
    assert sshreg_keys(config, env, "add", carol).returncode == 0
    body = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert body == f"{bad}{carol}\n"
    listed = json.loads(sshreg_keys(config, env, "list", "--json").stdout)
    assert [k["fingerprint"] for k in listed["keys"]] == [carol_fp]
