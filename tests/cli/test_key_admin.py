"""`sshreg keys add/list/remove` through real `python -m sshreg` processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from sshreg.keys.local_file import AuthorizedKeys

TIMEOUT = 60


def sshreg_keys(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sshreg", "keys", *map(str, args)],
                          input=stdin, capture_output=True, text=True, timeout=TIMEOUT)


def new_key(comment: str) -> tuple[str, str]:
    """(public key line, SHA256 fingerprint) of a fresh ed25519 key."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key.export_public_key().decode().strip(), key.get_fingerprint("sha256")


def listing(keys: Path) -> dict:
    result = sshreg_keys("list", "--keys", keys, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def by_fingerprint(keys: Path) -> dict[str, dict]:
    return {k["fingerprint"]: k for k in listing(keys)["keys"]}


# Comments, blank lines, a CRLF line, lines the server ignores, and non-ASCII text:
# `keys` commands must leave all of them exactly as they were.
PREAMBLE = (
    b"# registry keys\n"
    b"\n"
    b"   # an indented comment\r\n"
    b'command="/bin/sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx8PE28rtcaNoIWPTYnprN4Eiic94K6aavDCJcOaKy5 x\n'
    b"this is not a key at all\n"
    b"# caf\xc3\xa9 in UTF-8\n"
    b"\t\n"
)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "authorized_keys").write_bytes(PREAMBLE)
    return folder


def test_round_trip_add_list_remove(keys: Path, tmp_path: Path) -> None:
    alice, alice_fp = new_key("alice@laptop")
    ci, ci_fp = new_key("ci@builder")
    bob, bob_fp = new_key("bob@desktop")
    (tmp_path / "alice.pub").write_text(alice + "\n")

    added = sshreg_keys("add", tmp_path / "alice.pub", "--keys", keys)
    assert added.returncode == 0, added.stderr
    assert alice_fp in added.stdout and "full access" in added.stdout
    assert sshreg_keys("add", ci, "--pull-only", "--comment", "ci bot", "--keys", keys
                       ).returncode == 0
    assert sshreg_keys("add", "-", "--repos", "team/*", "--repos", "shared/base", "--keys", keys,
                       stdin=bob + "\n").returncode == 0

    found = by_fingerprint(keys)
    assert found[alice_fp]["rights"] == {"pull": ["**"], "push": ["**"], "delete": ["**"],
                                         "admin": True}
    assert found[ci_fp]["rights"] == {"pull": ["**"], "push": [], "delete": [], "admin": False}
    assert found[ci_fp]["comment"] == "ci bot"
    team = ["team/*", "shared/base"]
    assert found[bob_fp]["rights"] == {"pull": team, "push": team, "delete": team, "admin": False}
    assert [found[fp]["line"] for fp in (alice_fp, ci_fp, bob_fp)] == [8, 9, 10]

    text = sshreg_keys("list", "--keys", keys).stdout
    assert f"{ci_fp}  ci bot  [pull **]" in text
    assert "push team/*, shared/base" in text

    # What was written is what the server reads.
    server = {e.fingerprint: e for e in AuthorizedKeys(keys / "authorized_keys").entries()}
    assert set(server) == {alice_fp, ci_fp, bob_fp}
    assert server[ci_fp].rights.read_only

    removed = sshreg_keys("remove", ci_fp, "--keys", keys)
    assert removed.returncode == 0, removed.stderr
    assert sshreg_keys("remove", "alice@laptop", "--keys", keys).returncode == 0
    assert sshreg_keys("remove", bob_fp.removeprefix("SHA256:"), "--keys", keys).returncode == 0
    assert (keys / "authorized_keys").read_bytes() == PREAMBLE
    assert listing(keys)["keys"] == []


def test_other_lines_are_kept_byte_for_byte(keys: Path) -> None:
    line, fingerprint = new_key("x@y")
    assert sshreg_keys("add", line, "--keys", keys).returncode == 0
    after = (keys / "authorized_keys").read_bytes()
    assert after == PREAMBLE + line.encode() + b"\n"
    assert sshreg_keys("remove", fingerprint, "--keys", keys).returncode == 0
    assert (keys / "authorized_keys").read_bytes() == PREAMBLE
    assert not [p for p in keys.iterdir() if p.name != "authorized_keys"]  # no temp file left


def test_bytes_that_are_not_utf8_survive(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    original = b"# caf\xe9 in latin-1\n"
    (keys / "authorized_keys").write_bytes(original)
    line, fingerprint = new_key("x@y")
    assert sshreg_keys("add", line, "--keys", keys).returncode == 0
    assert sshreg_keys("remove", fingerprint, "--keys", keys).returncode == 0
    assert (keys / "authorized_keys").read_bytes() == original


def test_missing_final_newline_is_added_before_appending(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "authorized_keys").write_bytes(b"# last line without newline")
    line, _ = new_key("x@y")
    assert sshreg_keys("add", line, "--keys", keys).returncode == 0
    assert (keys / "authorized_keys").read_bytes() == (
        b"# last line without newline\n" + line.encode() + b"\n")


def test_ignored_lines_are_listed_with_their_reason(keys: Path) -> None:
    ignored = {i["line"]: i for i in listing(keys)["ignored"]}
    assert set(ignored) == {4, 5}
    assert "unsupported option(s) command" in ignored[4]["reason"]
    assert ignored[4]["fingerprint"].startswith("SHA256:")
    assert "not a public key" in ignored[5]["reason"]
    text = sshreg_keys("list", "--keys", keys).stdout
    assert "   4  ignored: unsupported option(s) command" in text


def test_lines_with_malformed_values_are_listed_and_the_file_can_still_be_edited(
        keys: Path) -> None:
    """Values that once made the parser raise (and every `keys` command with it)."""
    good, good_fp = new_key("good@test")
    bad = {reason: new_key(f"bad{i}@test") for i, reason in enumerate((
        'expiry-time="20260230"', 'expiry-time="00000101"', 'permitopen="localhost:²"',
        'sshreg-admin="x"', "from,restrict"))}
    bad_lines = "".join(f"{options} {line}\n" for options, (line, _) in bad.items())
    (keys / "authorized_keys").write_bytes(PREAMBLE + bad_lines.encode() + good.encode() + b"\n")

    found = listing(keys)
    assert [k["fingerprint"] for k in found["keys"]] == [good_fp]
    reasons = {i["line"]: (i["fingerprint"], i["reason"]) for i in found["ignored"]}
    assert reasons[8] == (bad['expiry-time="20260230"'][1],
                          "invalid expiry-time '20260230': day is out of range for month")
    assert reasons[10][1] == "invalid permitopen 'localhost:²' (port 1-65535 or *)"
    assert reasons[11][1] == "sshreg-admin takes no value (given 'x')"
    assert reasons[12][1] == "from needs a value"
    text = sshreg_keys("list", "--keys", keys).stdout
    assert "   9  ignored: invalid expiry-time '00000101': year 0 is out of range" in text

    assert sshreg_keys("remove", good_fp, "--keys", keys).returncode == 0
    removed = sshreg_keys("remove", bad['expiry-time="20260230"'][1], "--keys", keys)
    assert removed.returncode == 0, removed.stderr
    assert (keys / "authorized_keys").read_bytes() == PREAMBLE + "".join(
        bad_lines.splitlines(keepends=True)[1:]).encode()


@pytest.mark.parametrize(("options", "reason"), [
    ('expiry-time="20260230"', "invalid expiry-time '20260230': day is out of range for month"),
    ('permitopen="localhost:²"', "invalid permitopen 'localhost:²' (port 1-65535 or *)"),
    ("verify-required", "verify-required is not supported"),
    ('from=""', "from has an empty value"),
])
def test_add_refuses_a_malformed_line_with_its_reason(keys: Path, options: str,
                                                     reason: str) -> None:
    line, _ = new_key("typo@test")
    result = sshreg_keys("add", f"{options} {line}", "--keys", keys)
    assert result.returncode == 1
    [message] = result.stderr.strip().splitlines()
    assert message.startswith(f"sshreg keys add: not a usable key: {reason}")
    assert (keys / "authorized_keys").read_bytes() == PREAMBLE


def test_duplicate_refused_unless_replace(keys: Path) -> None:
    line, fingerprint = new_key("dup@test")
    assert sshreg_keys("add", line, "--keys", keys).returncode == 0
    before = (keys / "authorized_keys").read_bytes()

    again = sshreg_keys("add", line, "--pull-only", "--keys", keys)
    assert again.returncode == 1
    assert "already" in again.stderr and "--replace" in again.stderr
    assert (keys / "authorized_keys").read_bytes() == before

    replaced = sshreg_keys("add", line, "--pull-only", "--replace", "--keys", keys)
    assert replaced.returncode == 0, replaced.stderr
    entry = by_fingerprint(keys)[fingerprint]
    assert entry["line"] == 8 and entry["rights"]["push"] == []


def test_same_key_on_an_ignored_line_counts_as_present(keys: Path) -> None:
    ignored_fp = listing(keys)["ignored"][0]["fingerprint"]
    line = PREAMBLE.splitlines()[3].decode().split(" ", 1)[1]  # the key without command=
    assert sshreg_keys("add", line, "--keys", keys).returncode == 1
    assert sshreg_keys("add", line, "--replace", "--keys", keys).returncode == 0
    assert by_fingerprint(keys)[ignored_fp]["line"] == 4
    assert listing(keys)["ignored"][0]["line"] == 5


def test_mode_is_kept(keys: Path) -> None:
    (keys / "authorized_keys").chmod(0o640)
    assert sshreg_keys("add", new_key("m@test")[0], "--keys", keys).returncode == 0
    assert stat.S_IMODE((keys / "authorized_keys").stat().st_mode) == 0o640


def test_new_file_is_private(tmp_path: Path) -> None:
    keys = tmp_path / "fresh" / "keys"
    assert sshreg_keys("add", new_key("f@test")[0], "--keys", keys).returncode == 0
    assert stat.S_IMODE((keys / "authorized_keys").stat().st_mode) == 0o600


def test_remove_by_ambiguous_comment_is_refused(keys: Path) -> None:
    first, first_fp = new_key("same")
    second, second_fp = new_key("same")
    for line in (first, second):
        assert sshreg_keys("add", line, "--keys", keys).returncode == 0
    result = sshreg_keys("remove", "same", "--keys", keys)
    assert result.returncode == 1
    assert first_fp in result.stderr and second_fp in result.stderr
    assert sshreg_keys("remove", "nobody", "--keys", keys).returncode == 1
    assert set(by_fingerprint(keys)) == {first_fp, second_fp}


def test_bad_input_is_refused(keys: Path) -> None:
    line, _ = new_key("bad@test")
    cases = [
        ("add", "ssh-ed25519 AAAAnotbase64"),
        ("add", line, "--repos", "Team/App"),
        ("add", f'from="10.0.0.0/8" {line}', "--pull-only"),
        ("add", line, "--comment", ""),
        ("add", "no-such-file.pub"),
    ]
    for case in cases:
        result = sshreg_keys(*case, "--keys", keys)
        assert result.returncode == 1, case
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (keys / "authorized_keys").read_bytes() == PREAMBLE


def test_line_with_options_is_kept_as_given(keys: Path) -> None:
    line, fingerprint = new_key("opt@test")
    given = f'from="10.0.0.0/8",sshreg-pull="base/*" {line}'
    assert sshreg_keys("add", given, "--keys", keys).returncode == 0
    assert (keys / "authorized_keys").read_text(errors="replace").endswith(given + "\n")
    entry = by_fingerprint(keys)[fingerprint]
    assert entry["options"] == ['from="10.0.0.0/8"']
    assert entry["rights"]["pull"] == ["base/*"]


def test_keys_folder_from_the_config_file(tmp_path: Path, keys: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nkeys = "{keys}"\n')
    line, fingerprint = new_key("cfg@test")
    assert sshreg_keys("add", line, "--config", config).returncode == 0
    assert fingerprint in by_fingerprint(keys)
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    result = sshreg_keys("list", "--config", bad)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


def test_concurrent_adds_lose_no_line(keys: Path) -> None:
    made = [new_key(f"user{i}@test") for i in range(8)]
    env = {**os.environ}
    procs = [subprocess.Popen([sys.executable, "-m", "sshreg", "keys", "add", line,
                               "--keys", str(keys)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for line, _ in made]
    for proc in procs:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
    assert set(by_fingerprint(keys)) == {fp for _, fp in made}
    assert (keys / "authorized_keys").read_bytes().startswith(PREAMBLE)
    assert sorted(k["line"] for k in listing(keys)["keys"]) == list(range(8, 16))
