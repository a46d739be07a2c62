"""`sshreg check-config` through real `python -m sshreg` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import S3_TEST_BUCKET
from tests.support.sshreg_server import free_port

TIMEOUT = 120


def check_config(*args: str | Path, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sshreg", "check-config", *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A keys folder with one authorized key and a host key, as after a first start."""
    folder = tmp_path / "keys"
    folder.mkdir()
    key = asyncssh.generate_private_key("ssh-ed25519", comment="alice@test")
    (folder / "authorized_keys").write_bytes(key.export_public_key())
    host = folder / "ssh_host_ed25519_key"
    host.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    host.chmod(0o600)
    return folder


def write_config(path: Path, keys: Path, storage: str, extra: str = "") -> Path:
    path.write_text(f'[server]\nlisten = "127.0.0.1:2222"\nkeys = "{keys}"\n\n'
                    f'[storage]\nurl = "{storage}"\n{extra}')
    return path


@pytest.mark.parametrize("content, message", [
    ("[server\nlisten = 1\n", "invalid TOML"),
    ('[server]\nlisten = "nowhere"\n', "is not HOST:PORT"),
    ("[server]\nlissten = \"0.0.0.0:22\"\n", "server.lissten: unknown setting"),
    ('[storage]\npart_size = "1MiB"\n', "part_size must be between"),
    ('[registry]\nhosts = ["reg.example:5000"]\n', "is not a host name"),
    ('[registry]\nhosts = ["*"]\n', "is not a host name"),
    ('[registry]\nhosts = "reg.example"\n', "expected a list of strings"),
    ('[server]\nproxy_protocol = ["lb.example"]\n', "'lb.example' is not an address or network"),
])
def test_bad_file_exits_2_with_one_line(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(content)
    result = check_config("--config", config)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = check_config("--config", tmp_path / "nope.toml")
    assert result.returncode == 2 and "no such file" in result.stderr


def test_good_config(tmp_path: Path, keys: Path) -> None:
    (tmp_path / "data").mkdir()
    config = write_config(tmp_path / "config.toml", keys, str(tmp_path / "data"))
    result = check_config("--config", config)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[-1] == "ok"
    assert "1 authorized key(s)" in result.stdout and "host key SHA256:" in result.stdout
    assert "writable" in result.stdout
    assert not list((tmp_path / "data" / "_tmp").iterdir())  # the write probe is gone


def test_missing_storage_folder_that_can_be_created_is_ok(tmp_path: Path, keys: Path) -> None:
    storage = tmp_path / "not" / "yet"
    result = check_config("--keys", keys, "--storage", storage)
    assert result.returncode == 0, result.stderr
    assert "will be created" in result.stdout
    assert not storage.exists() and not storage.parent.exists()  # checking changes nothing


def test_unwritable_storage_fails_with_a_message(tmp_path: Path, keys: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = check_config("--keys", keys, "--storage", tmp_path / "a-file" / "data")
    assert result.returncode == 1
    assert "error: storage" in result.stderr and "is not a folder" in result.stderr
    assert result.stdout.splitlines()[-1] == "1 problem(s) found"


def test_read_only_storage_fails(tmp_path: Path, keys: Path) -> None:
    storage = tmp_path / "data"
    storage.mkdir(mode=0o500)
    # Root writes through permission bits: make the folder immutable instead.
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(storage)], check=True, timeout=10)
    try:
        result = check_config("--keys", keys, "--storage", storage)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(storage)], check=True, timeout=10)
    assert result.returncode == 1
    assert "Permission denied" in result.stderr or "Operation not permitted" in result.stderr


def test_fresh_keys_folder_is_ok_with_a_warning(tmp_path: Path) -> None:
    result = check_config("--keys", tmp_path / "keys", "--storage", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    assert "generated on first start" in result.stdout
    assert "does not exist: no key can log in" in result.stderr
    assert not (tmp_path / "keys").exists()


def test_host_key_readable_by_others_fails(tmp_path: Path, keys: Path) -> None:
    (keys / "ssh_host_ed25519_key").chmod(0o644)
    result = check_config("--keys", keys, "--storage", tmp_path / "data")
    assert result.returncode == 1
    assert "chmod 600" in result.stderr


@pytest.mark.parametrize("lines, warnings", [
    ('# a comment\ncommand="ls" {key}not a key\n',
     ["line 3 ignored: unsupported option(s) command", "line 4 ignored: not a public key"]),
    ('expiry-time="20260230" {key}restrict,permitopen="localhost:²" {key}',  # values that
     ["line 2 ignored: invalid expiry-time '20260230': day is out of range for month",  # once
      "line 3 ignored: invalid permitopen 'localhost:²'"]),  # crashed check-config
])
def test_ignored_key_lines_are_warnings(tmp_path: Path, keys: Path, lines: str,
                                        warnings: list[str]) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    with (keys / "authorized_keys").open("a") as f:
        f.write(lines.format(key=other))
    result = check_config("--keys", keys, "--storage", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    for warning in warnings:
        assert warning in result.stderr
    assert "1 authorized key(s)" in result.stdout


def test_unreachable_s3_endpoint_fails_in_bounded_time(tmp_path: Path, keys: Path) -> None:
    config = write_config(tmp_path / "config.toml", keys, "s3://no-such-bucket/reg",
                          f'endpoint_url = "http://127.0.0.1:{free_port()}"\n')
    started = time.monotonic()
    result = check_config("--config", config, env={"AWS_ACCESS_KEY_ID": "x",
                                                   "AWS_SECRET_ACCESS_KEY": "y"})
    assert result.returncode == 1
    assert "error: storage s3://no-such-bucket/reg:" in result.stderr
    assert time.monotonic() - started < TIMEOUT


def test_s3_bucket(tmp_path: Path, keys: Path, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("s3_server")
    credentials = {"AWS_ACCESS_KEY_ID": server.access_key,
                   "AWS_SECRET_ACCESS_KEY": server.secret_key}
    extra = f'endpoint_url = "{server.endpoint_url}"\n'
    good = write_config(tmp_path / "good.toml", keys, f"s3://{S3_TEST_BUCKET}/check", extra)
    result = check_config("--config", good, env=credentials)
    assert result.returncode == 0, result.stderr
    assert "bucket listed" in result.stdout

    missing = write_config(tmp_path / "missing.toml", keys, "s3://no-such-bucket", extra)
    result = check_config("--config", missing, env=credentials)
    assert result.returncode == 1 and "NoSuchBucket" in result.stderr

    result = check_config("--config", good, env={**credentials, "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert result.returncode == 1 and "error: storage" in result.stderr
