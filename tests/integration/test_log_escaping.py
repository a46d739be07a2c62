"""Control characters a client sends never reach the text or logfmt log raw.

Against a real `sshreg serve` in each format, each way a client gets its own text into the
log carries a newline (which would forge a log line), an ESC sequence (which would rewrite
the terminal of whoever reads the log) and a DEL: a request path (percent-decoded), a mount
`from=`, a forward destination (asyncssh as the attack tool: OpenSSH will not send such a
host), a management command argument, and a key comment. Each shows up escaped on the
record's own line, and no line of the log starts anywhere but at a record.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Iterator

import asyncssh
import pytest

from sshreg.logs import TextFormatter
from tests.support.rawhttp import request
from tests.support.sshreg_server import ClientKey, SshregServer, wait_for

pytestmark = pytest.mark.integration

RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but \t and \n
RECORD_START = {"text": re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ "),
                "logfmt": re.compile(r"time=\S+ level=[a-z]+ ")}
# How a message shows a newline, CR, backspace, ESC and DEL in each format (logfmt: as a JSON string).
IN_MESSAGE = {"text": {"\n": "\\n", "\r": "\\r", "\b": "\\x08", "\x1b": "\\x1b",
                       "\x7f": "\\x7f"},
              "logfmt": {"\n": "\\n", "\r": "\\r", "\b": "\\b", "\x1b": "\\u001b",
                         "\x7f": "\\u007f"}}
# Audit events are fields: a JSON object in text, logfmt fields (quoted as JSON strings).
IN_AUDIT = {"text": IN_MESSAGE["logfmt"], "logfmt": IN_MESSAGE["logfmt"]}


def attack(tag: str, sep: str = "\n") -> str:
    """A forged line after a newline (or a CR), a terminal colour change and a DEL; no space,
    so that nothing else would make a logfmt value quoted."""
    return f"{tag}{sep}{tag}-forged\x1b[31m\x7f"


COMMENT = attack("COMMENT", "\b" * 7)


def quoted(tag: str, sep: str = "%0a") -> str:
    """`attack(tag)` percent-encoded for a URL."""
    return f"{tag}{sep}{tag}-forged%1b[31m%7f"


def shown(text: str, escapes: dict[str, str]) -> str:
    return "".join(escapes.get(c, c) for c in text)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, ClientKey]:
    directory = tmp_path_factory.mktemp("escape-keys")
    return {name: ClientKey.generate(directory, name) for name in ("admin", "team")}


@pytest.fixture(scope="module", params=["text", "logfmt"])
def server(request, tmp_path_factory, keys) -> Iterator[SshregServer]:
    srv = SshregServer(tmp_path_factory.mktemp(f"escape-{request.param}"),
                       config={"log": {"format": request.param}})
    algorithm, blob, _ = keys["team"].public.split()
    # authorized_keys is read by lines: a comment cannot hold a newline or CR; backspaces do.
    srv.authorize(keys["admin"].line(),
                  f'sshreg-pull="team/*" {algorithm} {blob} {COMMENT}')
    srv.start()
    srv.format = request.param  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def assert_logged_escaped(server: SshregServer, text: str, audit: bool = False) -> None:
    """`text` is in the log, escaped, on a line that is a record of its own; no raw control
    character, and no line that neither starts a record nor continues one (indented)."""
    fmt = server.format  # type: ignore[attr-defined]
    expected = shown(text, (IN_AUDIT if audit else IN_MESSAGE)[fmt])
    wait_for(lambda: expected in server.log(), 10, f"{expected!r} in the log")
    lines = server.log().splitlines()
    assert not RAW_CONTROLS.search(server.log()), [ln for ln in lines if RAW_CONTROLS.search(ln)]
    for line in lines:
        assert RECORD_START[fmt].match(line) or line.startswith(" "), line


def test_a_request_path_with_control_characters_is_logged_escaped(server, keys):
    with server.tunnel(keys["admin"]) as tunnel:
        answer = request(tunnel.port, "GET", f"/v2/{quoted('PATH')}/tags/list")
        assert answer.status == 404 and answer.error_code == "UNSUPPORTED"  # no such route
    assert_logged_escaped(server, attack("PATH"))


def test_a_mount_from_with_control_characters_is_logged_escaped(server, keys):
    digest = "sha256:" + "0" * 64
    with server.tunnel(keys["admin"]) as tunnel:
        answer = request(tunnel.port, "POST",
                         f"/v2/team/app/blobs/uploads/?mount={digest}&from={quoted('FROM')}")
        assert answer.status == 202  # no mount: an upload session instead, as the spec says
    assert_logged_escaped(server, attack("FROM"))


def test_a_forward_to_a_host_with_control_characters_is_refused_and_logged_escaped(
        server, keys):
    async def forward() -> None:
        async with asyncssh.connect(
                "127.0.0.1", server.port, username="user", known_hosts=None, agent_path=None,
                client_keys=[str(keys["admin"].path)]) as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection(attack("HOST"), 80)

    asyncio.run(asyncio.wait_for(forward(), 30))
    assert_logged_escaped(server, attack("HOST"))


def test_a_management_argument_with_control_characters_is_logged_escaped(server, keys):
    result = server.ssh(keys["team"], "du", f"'{attack('ARG')}'")
    assert result.returncode == 1 and "denied" in result.stderr
    assert_logged_escaped(server, attack("ARG"))


def test_a_key_comment_with_control_characters_is_logged_escaped(server, keys):
    assert server.ssh(keys["team"], "whoami").returncode == 0
    assert_logged_escaped(server, COMMENT)


def test_an_audited_refusal_escapes_its_path_and_key_comment_fields(server, keys):
    """The audit logger renders fields one by one: each is escaped too."""
    target = f"/v2/team/app/blobs/uploads/{quoted('AUDIT', '%0d')}"
    with server.tunnel(keys["team"]) as tunnel:
        answer = request(tunnel.port, "PATCH", target, b"x")
        assert answer.status == 403 and answer.error_code == "DENIED"
    assert_logged_escaped(server, f"/v2/team/app/blobs/uploads/{attack('AUDIT', chr(13))}",
                          audit=True)
    assert_logged_escaped(server, COMMENT, audit=True)


def test_a_traceback_in_the_text_log_starts_no_line_of_its_own():
    """A traceback keeps its lines, indented: an exception message with a newline in it
    cannot put a forged record at the margin."""
    try:
        raise ValueError(f"bad {attack('EXC')}")
    except ValueError:
        record = logging.LogRecord("sshreg.test", logging.ERROR, __file__, 1, "failed on %s",
                                   (attack("MSG"),), sys.exc_info())
    text = TextFormatter().format(record)
    first, *rest = text.splitlines()
    assert RECORD_START["text"].match(first) and shown(attack("MSG"), IN_MESSAGE["text"]) in first
    assert rest and all(line.startswith("    ") for line in rest), text
    assert not RAW_CONTROLS.search(text), text
