"""authorized_keys lines: an option sshreg cannot honour exactly refuses its line (as sshd
does), a malformed line costs only itself on every reload, and no input whatever makes the
parser raise anything but its per-line error (fuzzed with hypothesis, derandomized)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sshreg.access import Action, Identity, Rights
from sshreg.keys import entries as key_entries
from sshreg.keys.edits import without_key
from sshreg.keys.entries import KeyEntry, parse_authorized_keys, parse_line
from sshreg.keys.lines import fingerprint_of, parse_lines
from sshreg.keys.listing import listing_json, listing_text
from sshreg.keys.local_file import AuthorizedKeys
from sshreg.keys.options import KeyLineError, KeyOptions, split_options

KEYS = [asyncssh.generate_private_key(alg, comment=f"k{i}@test") for i, alg in enumerate(
    ("ssh-ed25519", "ssh-ed25519", "ecdsa-sha2-nistp256"))]
PUBLIC = [k.export_public_key().decode().strip() for k in KEYS]
FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
FUZZ_FILES = settings(FUZZ, max_examples=150)  # each example is several lines


def fingerprints(entries: list[KeyEntry]) -> list[str]:
    return [e.fingerprint for e in entries]


# -- options that refuse their line ---------------------------------------------------------


@pytest.mark.parametrize(("options", "reason"), [
    ('expiry-time="20260230"', "invalid expiry-time '20260230': day is out of range"),
    ('expiry-time="00000101"', "invalid expiry-time '00000101'"),
    ('expiry-time="00010101"', "invalid expiry-time '00010101'"),
    ('expiry-time="\uff12\uff10\uff12\uff16\uff10\uff11\uff10\uff11"', "invalid expiry-time"),  # fullwidth
    ('expiry-time="2026"', "invalid expiry-time '2026'"),
    ('expiry-time="209912 1"', "invalid expiry-time '209912 1' (YYYYMMDD[HHMM[SS]][Z])"),
    ("expiry-time", "expiry-time needs a value"),
    ('expiry-time=""', "expiry-time has an empty value"),
    ("from,restrict", "from needs a value"),
    ('from=""', "from has an empty value"),
    ('from=" "', "from has an empty value"),
    ('from="10.0.0.1,"', "from='10.0.0.1,' has an empty pattern"),
    ('from="10.0.0.1,!"', "has an empty pattern"),
    ('from="10.0.0.1/8"', "is not a network"),
    ('from="10.0.0.0/99"', "is not a network"),
    ('permitopen="localhost:²"', "invalid permitopen 'localhost:²'"),
    ('permitopen="localhost:0"', "invalid permitopen"),
    ('permitopen="localhost:65536"', "invalid permitopen"),
    ('permitopen=":80"', "invalid permitopen"),
    ('permitopen="[::1:80"', "invalid permitopen '[::1:80' (host:port)"),
    ('permitopen="[::1]x:80"', "invalid permitopen"),
    ('permitopen="localhost]:80"', "invalid permitopen"),
    ("permitopen", "permitopen needs a value"),
    ("verify-required", "verify-required is not supported"),
    ('sshreg-admin="x"', "sshreg-admin takes no value"),
    ('restrict="no"', "restrict takes no value"),
    ('restrict,port-forwarding="no"', "port-forwarding takes no value"),
    ('no-port-forwarding="yes"', "no-port-forwarding takes no value"),
    ('no-pty="1"', "no-pty takes no value"),
    ("sshreg-pull", "sshreg-pull needs a value"),
    ('sshreg-push=""', "sshreg-push has an empty value"),
    ('sshreg-pull="team/*,"', "sshreg-pull='team/*,' has an empty glob"),
    ('sshreg-delete="a/*,,b/*"', "has an empty glob"),
    ('sshreg-pull="a/*",sshreg-pull="b/*"', "sshreg-pull is given more than once"),
    ('from="10.0.0.0/8', "unbalanced quote in options"),
    ("no-pty,,restrict", "empty option"),
    ('command="ls",tunnel="1"', "unsupported option(s) command, tunnel"),
    ("cert-authority", "cert-authority needs principals="),
    ('principals="ml-team"', "principals= is only for cert-authority lines"),
    ('cert-authority,principals="a,,b"', "principals='a,,b' has an empty name"),
    ('cert-authority,principals="a",principals="b"', "principals is given more than once"),
    ('cert-authority="yes",principals="a"', "cert-authority takes no value"),
    ("x-b,no-pty,x-a", "unknown option(s) 'x-a', 'x-b'"),
])
def test_an_option_that_cannot_be_honoured_exactly_refuses_the_line(options: str,
                                                                     reason: str) -> None:
    with pytest.raises(KeyLineError, match=re.escape(reason)):
        parse_line(f"{options} {PUBLIC[0]}", 1)


def test_a_cert_authority_line_names_its_principals_and_its_rights() -> None:
    entry = parse_line(f'cert-authority,principals="ml-team, infra",sshreg-push="ml/*" '
                       f"{PUBLIC[0]}", 1)
    assert entry.cert_authority and entry.principals == ("ml-team", "infra")
    assert entry.rights.push == ("ml/*",)
    assert not parse_line(PUBLIC[0], 1).cert_authority


@pytest.mark.parametrize("line", ["no-pty", "ssh-ed25519 AAAAnot-base64", "no-pty just words",
                                  PUBLIC[0].split()[1]],
                         ids=["option", "bad-base64", "words", "base64-alone"])
def test_a_line_without_a_public_key_is_refused(line: str) -> None:
    with pytest.raises(KeyLineError, match="not a public key"):
        parse_line(line, 1)


@pytest.mark.parametrize(("text", "options", "rest"), [
    ('from="10.0.0.0/8, 192.0.2.1",no-pty ssh-ed25519 AAAA c',
     [("from", "10.0.0.0/8, 192.0.2.1"), ("no-pty", None)], "ssh-ed25519 AAAA c"),
    ('sshreg-pull="a\\"b,c",NO-PTY,No-X11-Forwarding\tssh-ed25519 AAAA',
     [("sshreg-pull", 'a"b,c'), ("no-pty", None), ("no-x11-forwarding", None)], "ssh-ed25519 AAAA"),
])
def test_options_are_split_as_openssh_quotes_them_and_named_in_any_case(
        text: str, options: list[tuple[str, str | None]], rest: str) -> None:
    assert split_options(text) == (options, rest)


@pytest.mark.parametrize(("options", "forwarding"), [
    ('restrict,permitopen="localhost:80"', False),
    ('permitopen="localhost:80",restrict', False),
    ('port-forwarding,restrict,permitopen="localhost:80"', False),
    ('restrict,port-forwarding,permitopen="localhost:80"', True),
    ('restrict,permitopen="localhost:80",port-forwarding', True),
    ('permitopen="localhost:80"', True),
    ('no-port-forwarding,port-forwarding,permitopen="localhost:80"', False),  # sshd: True
])
def test_permitopen_narrows_forwarding_and_never_turns_it_on(options: str,
                                                            forwarding: bool) -> None:
    entry = parse_line(f"{options} {PUBLIC[0]}", 1)
    assert entry.port_forwarding is forwarding
    assert entry.may_open("localhost", 80) and not entry.may_open("localhost", 81)


def test_well_formed_options_still_apply() -> None:
    entry = parse_line('from="10.0.0.0/8,!10.1.0.0/16",expiry-time="20991231Z",'
                       'sshreg-pull="team/*, base/*",sshreg-admin,no-pty '
                       f"{PUBLIC[0]}", 7)
    assert entry.allows_address("", "10.2.3.4") and not entry.allows_address("", "10.1.2.3")
    assert entry.expires == 4102358400.0 and not entry.expired()
    assert entry.rights.pull == ("team/*", "base/*") and entry.rights.admin
    assert entry.rights.push == () and entry.line == 7


def test_each_rights_option_grants_its_own_globs_and_nothing_else() -> None:
    entry = parse_line('sshreg-pull="base/*",sshreg-push="team/*, ci/**",'
                       f'sshreg-delete="team/scratch" {PUBLIC[0]}', 1)
    assert entry.rights == Rights(pull=("base/*",), push=("team/*", "ci/**"),
                                  delete=("team/scratch",))
    assert parse_line(f'sshreg-delete="team/*" {PUBLIC[0]}', 1).rights == Rights(
        delete=("team/*",))


def test_a_push_only_line_may_pull_what_it_may_push_and_nothing_else() -> None:
    rights = parse_line(f'sshreg-push="team/*" {PUBLIC[0]}', 1).rights
    assert rights == Rights(push=("team/*",))
    assert rights.may(Action.PULL, "team/app") and rights.may(Action.PUSH, "team/app")
    assert not rights.may(Action.PULL, "base/app") and not rights.may(Action.DELETE, "team/app")


@pytest.fixture
def local_time_two_hours_ahead_of_utc() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "<+02>-02"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.usefixtures("local_time_two_hours_ahead_of_utc")
def test_an_expiry_time_is_local_time_unless_it_ends_with_z() -> None:
    def expires(value: str) -> float | None:
        return parse_line(f'expiry-time="{value}" {PUBLIC[0]}', 1).expires

    midnight_utc = 4102358400.0  # 2099-12-31T00:00:00Z
    assert expires("20991231Z") == expires("20991231z") == midnight_utc
    assert expires("20991231") == midnight_utc - 2 * 3600
    assert expires("209912310130Z") == midnight_utc + 90 * 60


def test_a_key_expires_at_the_second_its_expiry_time_names() -> None:
    entry = parse_line(f'expiry-time="20991231Z" {PUBLIC[0]}', 1)
    assert not entry.expired(4102358399.0)
    assert entry.expired(4102358400.0) and entry.expired(4102358401.0)
    assert not parse_line(PUBLIC[0], 1).expired()


@pytest.mark.parametrize("port", [1, 65535])
def test_permitopen_takes_every_port_from_1_to_65535(port: int) -> None:
    entry = parse_line(f'permitopen="localhost:{port}" {PUBLIC[0]}', 1)
    assert entry.permit_open == {("localhost", port)}


def test_a_line_without_from_may_log_in_from_any_address() -> None:
    entry = parse_line(PUBLIC[0], 1)
    assert all(entry.allows_address("", addr) for addr in ("10.0.0.1", "::1", "", "unknown"))


def test_from_address_wildcards_match_the_peer_address() -> None:
    entry = parse_line(f'from="192.0.2.*,!192.0.2.9" {PUBLIC[0]}', 1)
    assert entry.allows_address("", "192.0.2.7")
    assert not entry.allows_address("", "192.0.2.9")
    assert not entry.allows_address("", "198.51.100.7")


@pytest.mark.parametrize("peer", ["", "unknown", "192.0.2.300"])
def test_a_line_with_from_refuses_a_peer_whose_address_is_unknown(peer: str) -> None:
    entry = parse_line(f'from="*" {PUBLIC[0]}', 1)
    assert entry.allows_address("", "192.0.2.7")
    assert not entry.allows_address("", peer)


def test_a_key_without_a_comment_has_an_empty_one() -> None:
    entry = parse_line(" ".join(PUBLIC[0].split()[:2]), 1)
    assert entry.comment == "" and entry.identity("192.0.2.1").comment == ""


def test_a_login_carries_the_key_its_comment_its_rights_and_where_it_came_from() -> None:
    entry = parse_line(f'sshreg-pull="team/*" {PUBLIC[0]}', 1)
    assert entry.identity("192.0.2.1") == Identity(
        KEYS[0].get_fingerprint("sha256"), "k0@test", Rights(pull=("team/*",)), "192.0.2.1")


# -- reloads --------------------------------------------------------------------------------


def test_a_malformed_line_costs_only_itself_and_is_logged_with_its_number(caplog) -> None:
    text = "\n".join([PUBLIC[0], f'expiry-time="20260230" {PUBLIC[1]}', "# a comment",
                      f'permitopen="localhost:²" {PUBLIC[1]}', PUBLIC[2]]) + "\n"
    with caplog.at_level(logging.WARNING, logger="sshreg.keys"):
        entries = parse_authorized_keys(text, "keys/authorized_keys")
    assert fingerprints(entries) == [KEYS[0].get_fingerprint("sha256"),
                                     KEYS[2].get_fingerprint("sha256")]
    warnings = [r.getMessage() for r in caplog.records]
    bob = KEYS[1].get_fingerprint("sha256")
    assert warnings == [
        "keys/authorized_keys line 2 ignored: invalid expiry-time '20260230': "
        f"day is out of range for month (key {bob})",
        "keys/authorized_keys line 4 ignored: invalid permitopen 'localhost:²' "
        f"(port 1-65535 or *) (key {bob})"]


def test_an_unforeseen_parser_error_still_costs_only_its_line(monkeypatch, caplog) -> None:
    """The safety net under the checks: a bug in them must not bring back the freeze."""
    checked = key_entries.parse_options

    def buggy(options: list[tuple[str, str | None]]) -> KeyOptions:
        if options:
            raise RuntimeError("a bug\x1b[2J")
        return checked(options)

    monkeypatch.setattr(key_entries, "parse_options", buggy)
    with caplog.at_level(logging.WARNING, logger="sshreg.keys"):
        entries = parse_authorized_keys(f"no-pty {PUBLIC[1]}\n{PUBLIC[0]}\n")
    assert fingerprints(entries) == [KEYS[0].get_fingerprint("sha256")]
    assert [r.getMessage() for r in caplog.records] == [
        "authorized_keys line 1 ignored: cannot be parsed (RuntimeError('a bug\\x1b[2J'))"]


def _write(path: Path, *lines: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def test_a_reload_with_a_malformed_line_still_drops_the_key_removed_in_the_same_edit(
        tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    _write(path, PUBLIC[0], PUBLIC[1])
    keys = AuthorizedKeys(path)
    assert len(keys.entries()) == 2
    _write(path, PUBLIC[0], f'expiry-time="00000101" {PUBLIC[2]}')  # B removed, a typo added
    for _ in range(3):  # and it stays so on every later check
        assert fingerprints(keys.entries()) == [KEYS[0].get_fingerprint("sha256")]
    _write(path, PUBLIC[0], PUBLIC[2])  # the typo fixed: the next edit applies as usual
    assert len(keys.entries()) == 2


def test_an_unreadable_file_admits_nobody_is_logged_once_and_is_read_again(
        tmp_path: Path, caplog) -> None:
    path = tmp_path / "authorized_keys"
    _write(path, PUBLIC[0])
    keys = AuthorizedKeys(path)
    assert len(keys.entries()) == 1
    path.unlink()
    path.mkdir()  # a read that fails (as root, a mode cannot make it fail)
    with caplog.at_level(logging.ERROR, logger="sshreg.keys"):
        for _ in range(3):
            assert keys.entries() == []
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot read {path}: Is a directory; no key can log in until it can be read"]
    path.rmdir()
    _write(path, PUBLIC[1])
    assert fingerprints(keys.entries()) == [KEYS[1].get_fingerprint("sha256")]


# -- fuzzing --------------------------------------------------------------------------------

OPTION_NAMES = ["from", "expiry-time", "permitopen", "restrict", "port-forwarding",
                "no-port-forwarding", "verify-required", "no-touch-required", "no-pty",
                "sshreg-pull", "sshreg-push", "sshreg-delete", "sshreg-admin", "command",
                "cert-authority", "FROM", "Restrict", "x-unknown"]
PIECES = [*OPTION_NAMES, "=", '"', '\\"', "\\", ",", " ", "\t", ":", "/", "!", "*", "**", "?",
          "[", "]", "Z", "z", "20260230", "00000101", "99991231", "20991231235959", "1970010100",
          "²", "٣", "\uff10", "᠐", "\U0001d7d7", "0", "80", "65536", "-1", "localhost", "::1", "10.0.0.0/8",
          "10.0.0.1/8", "*.example.com", "team/*", "\x00", "\x1b[31m", "\x7f", "\x85", "\u2028",
          "\ud800", "é", "ssh-ed25519", "ecdsa-sha2-nistp256", "AAAA", "AAAAC3NzaC1lZDI1NTE5",
          "====", *(p.split()[1] for p in PUBLIC), *(p.split()[1][:40] for p in PUBLIC),
          *PUBLIC]
fragments = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=4)), max_size=14)
lines = fragments.map("".join)
DIGITS = "0123456789²٣\uff10᠐Zz"
values = st.one_of(
    fragments.map("".join),
    st.text(alphabet=DIGITS, min_size=6, max_size=15),  # dates that are almost dates
    st.builds(lambda size, digits, zone: digits[:size] + zone, st.sampled_from([8, 12, 14]),
              st.text(alphabet="0123456789", min_size=14, max_size=14), st.sampled_from(["", "Z"])),
    st.builds(lambda host, port: f"{host}:{port}", st.sampled_from(["localhost", "[::1]", "", "*"]),
              st.text(alphabet="0123456789²*-", max_size=6)),  # ports that are almost ports
    st.lists(st.sampled_from(["10.0.0.0/8", "10.0.0.1/8", "!", "", "*.example.com", "team/*",
                              "::1/200", "a..b", "\x00"]), max_size=3).map(",".join))
named = st.sampled_from(OPTION_NAMES + ["from", "expiry-time", "permitopen", "sshreg-pull"] * 4)
option = st.one_of(
    st.sampled_from(OPTION_NAMES),
    st.builds(lambda name, value: f'{name}="{value}"', named, values),
    st.builds(lambda name, value: f"{name}={value}", named, values))
key_lines = st.builds(lambda opts, key: f"{','.join(opts)} {key}",
                      st.lists(option, min_size=1, max_size=5), st.sampled_from(PUBLIC))


def _parses_or_refuses(line: str) -> KeyEntry | None:
    """parse_line's result, None if it refused the line. A refusal must come from the
    parser's own checks, not from its safety net around an unforeseen exception."""
    try:
        return parse_line(line, 1)
    except KeyLineError as exc:
        assert exc.__cause__ is None, f"{line!r}: unforeseen {exc.__cause__!r}"
        return None


ISSUE_EXAMPLES = [f'{options} {PUBLIC[1]}' for options in (
    'expiry-time="20260230"', 'expiry-time="00000101"', 'permitopen="localhost:²"')]


@FUZZ
@given(st.one_of(lines, key_lines))
@example(ISSUE_EXAMPLES[0])
@example(ISSUE_EXAMPLES[1])
@example(ISSUE_EXAMPLES[2])
def test_no_line_makes_the_parser_raise_anything_but_its_line_error(line: str) -> None:
    _parses_or_refuses(line)


@FUZZ_FILES
@given(st.lists(st.tuples(st.booleans(), st.one_of(lines, key_lines)), max_size=8),
       st.sampled_from(["\n", "\r\n"]))
@example([(True, ""), (False, ISSUE_EXAMPLES[0]), (True, "")], "\n")
def test_the_good_lines_of_a_file_always_apply_whatever_the_others_hold(
        drawn: list[tuple[bool, str]], newline: str) -> None:
    """Known-good lines (bare keys) interleaved with fuzzed ones: every good line is an
    entry, at its line number, and every fuzzed line yields what parse_line makes of it."""
    text_lines: list[str] = []
    expected: list[int] = []
    for number, (good, junk) in enumerate(drawn, start=1):
        if good:
            text_lines.append(PUBLIC[number % len(PUBLIC)])
            expected.append(number)
        else:
            text_lines.append(" ".join(junk.splitlines()))  # one line, whatever it held
    text = newline.join(text_lines)
    entries = parse_authorized_keys(text)
    numbers = [e.line for e in entries]
    assert [n for n in numbers if n in expected] == expected
    for number in set(range(1, len(text_lines) + 1)) - set(expected):
        stripped = text_lines[number - 1].strip()
        usable = bool(stripped) and not stripped.startswith("#") and (
            _parses_or_refuses(stripped) is not None)
        assert (number in numbers) is usable


@FUZZ_FILES
@given(st.lists(st.one_of(lines, key_lines), max_size=6))
def test_keys_list_and_remove_work_on_any_file(junk: list[str]) -> None:
    """`sshreg keys list` shows any file, and `remove` takes a good key out of it (with any
    other line holding that key) whatever the other lines hold."""
    text = "".join(" ".join(j.splitlines()) + "\n" for j in junk) + PUBLIC[0] + "\n"
    found = parse_lines(text)
    assert listing_text(found) and listing_json(found)["keys"]
    fingerprint = KEYS[0].get_fingerprint("sha256")
    rest, gone = without_key(found, fingerprint, "authorized_keys")
    assert gone[-1].number == len(junk) + 1
    assert all(fingerprint_of(line) == fingerprint for line in gone)
    assert fingerprint not in fingerprints(parse_authorized_keys(rest))
