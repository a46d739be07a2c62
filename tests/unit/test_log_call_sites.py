"""Every log call in sshreg/ that carries data passes it as one mapping (see sshreg/logs.py),
with field names from one vocabulary; real code paths then log those fields in JSON."""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import asyncssh

from sshreg.keys.entries import parse_authorized_keys
from sshreg.keys.local_file import AuthorizedKeys
from sshreg.keys.revoked_file import RevokedKeys
from sshreg.logs import JsonFormatter, TextFormatter
from sshreg.metrics import Metrics
from sshreg.ssh.connection import GatewayConnection
from sshreg.ssh.limits import FailureTracker
from sshreg.ssh.settings import GatewaySettings

PACKAGE = Path(__file__).resolve().parents[2] / "sshreg"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
# The names the formatters give every record: a field must not shadow them.
BASE_FIELDS = {"time", "level", "logger", "msg", "exception"}
# One name for one thing, wherever it is logged. A new kind of datum gets a name here.
FIELDS = {
    "bytes": "a size in bytes",
    "ca": "the SHA256 fingerprint of a certificate's CA key",
    "code": "a registry error code",
    "command": "a management command line as the client sent it",
    "comment": "an SSH key's comment",
    "digest": "a content digest",
    "dry_run": "whether a garbage collection only reports",
    "error": "an exception's text (or its type's name)",
    "failed": "failed tries of a storage write",
    "file": "a file sshreg writes (the host key)",
    "fingerprint": "an SSH key's SHA256 fingerprint ('-' before login)",
    "from_repository": "the repository a blob mount asks to mount from",
    "holder": "who holds the gc lease",
    "host": "a listening host",
    "host_key": "the host key's fingerprint",
    "key": "a storage key",
    "key_id": "a certificate's key ID",
    "keys": "a number of authorized keys",
    "line": "a line number",
    "loaded_at": "when the keys in use were loaded",
    "method": "an HTTP method",
    "mirror": "a pull-through mirror's prefix",
    "missing": "blobs removed while a manifest was written",
    "operation": "a storage operation and its key",
    "path": "an HTTP request path",
    "peer": "the client's address",
    "pid": "a process id",
    "port": "a listening port",
    "principals": "the certificate principals a login was accepted for",
    "reason": "why a login or connection is refused, or a cached image evicted",
    "reference": "a manifest reference (tag or digest)",
    "report": "a garbage collection report",
    "repository": "a repository name",
    "request": "an SSH channel request that is refused",
    "requests": "a number of HTTP requests",
    "seconds": "a duration",
    "serial": "a certificate's serial number",
    "source": "where authorized keys come from (file or bucket object)",
    "status": "an HTTP status",
    "storage": "the storage backend",
    "subsystem": "an SSH subsystem name",
    "tags": "the tags a manifest is pushed as",
    "throttled": "throttled tries of a storage write",
    "upload": "an upload id",
    "uploads": "a number of uploads",
    "user": "the SSH user name a client offered",
    "worker": "a worker process's number (0 to workers - 1)",
    "workers": "a number of worker processes",
}
PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]*)\))?[#0 +-]*(?:\d+|\*)?(?:\.\d+)?(?P<conv>.)")


def _loggers(tree: ast.Module) -> set[str]:
    """Module-level names bound to `logging.getLogger(...)`."""
    names = set()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and ast.unparse(node.value.func) == "logging.getLogger"):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _log_calls() -> Iterator[tuple[str, ast.Call]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        loggers = _loggers(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LEVELS and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in loggers):
                yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", node


def _messages(node: ast.expr) -> list[str] | None:
    """The message's text, or its texts when it is chosen by a condition; None if neither."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _messages(node.body), _messages(node.orelse)
        return body + orelse if body is not None and orelse is not None else None
    return None


def _problems(call: ast.Call) -> list[str]:
    if any(k.arg is None for k in call.keywords) or any(
            isinstance(a, ast.Starred) for a in call.args):
        return ["*args or **kwargs"]
    args = call.args[1:] if call.func.attr == "log" else call.args  # type: ignore[attr-defined]
    if not args:
        return ["no message"]
    messages = _messages(args[0])
    if messages is None:  # a structured event: the dict (or a name for one) is all there is
        return [] if len(args) == 1 and not isinstance(args[0], ast.JoinedStr) else [
            "the message is neither a string literal nor a structured event"]
    placeholders = [m for text in messages for m in PLACEHOLDER.finditer(text)
                    if m["conv"] != "%"]
    if len(args) == 1:
        return [f"{m[0]!r} without data" for m in placeholders]
    if len(args) > 2:
        return [f"{len(args) - 1} arguments after the message: pass one mapping"]
    data = args[1]
    if not isinstance(data, ast.Dict) or not all(
            isinstance(k, ast.Constant) and isinstance(k.value, str) for k in data.keys):
        return ["the data is not a dict display with literal keys"]
    keys = [k.value for k in data.keys]  # type: ignore[union-attr]
    problems = [f"unnamed placeholder {m[0]!r}" for m in placeholders if m["name"] is None]
    problems += [f"{m[0]!r} has no field" for m in placeholders
                 if m["name"] is not None and m["name"] not in keys]
    problems += [f"field {k!r} is a base field" for k in keys if k in BASE_FIELDS]
    problems += [f"field {k!r} is not in FIELDS" for k in keys if k not in FIELDS]
    return problems


def test_log_calls_pass_their_data_as_one_mapping_of_known_fields() -> None:
    calls = list(_log_calls())
    assert len(calls) > 60  # the walk does find the call sites
    problems = [f"{where}: {problem}" for where, call in calls for problem in _problems(call)]
    assert problems == []
    assert sum(len(call.args) == 2 for _, call in calls) > 50


def test_the_check_catches_positional_data_and_unknown_fields() -> None:
    def problems(source: str) -> list[str]:
        return _problems(ast.parse(source).body[0].value)  # type: ignore[attr-defined]

    assert problems('log.info("loaded %d key(s) from %s", n, path)')
    assert problems('log.info("failed: %s", exc)')
    assert problems('log.info("%(keys)d key(s)", {"keys": n, "msg": "x"})')
    assert problems('log.info("%(keys)d key(s)", {"count": n})')
    assert problems('log.info("%(keys)d from %s", {"keys": n})')
    assert problems('log.info("%(keys)d key(s)", fields)')
    assert problems('log.info(f"{n} key(s)")')
    assert problems('log.info("%(keys)d key(s)", **fields)')
    assert not problems('log.info("a (dry run): %(report)s" if d else "a: %(report)s", '
                        '{"dry_run": d, "report": r})')
    assert not problems('log.info("100%% done")')
    assert not problems("audit_log.info(event)")


@contextmanager
def json_lines(name: str) -> Iterator[list[tuple[str, dict[str, object]]]]:
    """The records of logger `name` as (text line, JSON fields)."""
    lines: list[tuple[str, dict[str, object]]] = []
    text, as_json = TextFormatter(), JsonFormatter()

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((text.format(record).split(": ", 1)[1],
                          json.loads(as_json.format(record))))

    logger, handler = logging.getLogger(name), Capture()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_loading_an_authorized_keys_file_logs_its_fields(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="alice@test")
    public = key.export_public_key().decode().strip()
    fingerprint = key.get_fingerprint("sha256")
    path = tmp_path / "authorized_keys"
    path.write_text(f"{public}\nexpiry-time=\"2026\" {public}\n")
    with json_lines("sshreg.keys") as lines:
        assert len(AuthorizedKeys(path).entries()) == 1
    (ignored_text, ignored), (loaded_text, loaded) = lines
    error = "invalid expiry-time '2026' (YYYYMMDD[HHMM[SS]][Z])"
    assert ignored_text == f"{path} line 2 ignored: {error} (key {fingerprint})"
    assert ignored["msg"] == ignored_text and ignored["level"] == "warning"
    assert {k: ignored[k] for k in ("source", "line", "error", "fingerprint")} == {
        "source": str(path), "line": 2, "error": error, "fingerprint": fingerprint}
    assert loaded_text == f"loaded 1 key(s) from {path}"
    assert loaded["msg"] == loaded_text
    assert {k: loaded[k] for k in ("keys", "source")} == {"keys": 1, "source": str(path)}


class FakeConnection:
    """What `GatewayConnection.connection_made` reads of an asyncssh connection."""

    _transport = None

    @staticmethod
    def get_extra_info(name: str) -> tuple[str, int]:
        assert name == "peername"
        return ("192.0.2.7", 50022)


def test_a_refused_key_logs_its_fingerprint_comment_peer_and_reason() -> None:
    allowed = asyncssh.generate_private_key("ssh-ed25519", comment="ci@test")
    unknown = asyncssh.generate_private_key("ssh-ed25519")
    line = f'from="10.0.0.0/8" {allowed.export_public_key().decode().strip()}'
    gateway = SimpleNamespace(
        settings=GatewaySettings(), metrics=Metrics(), failures=FailureTracker(100),
        connections={}, keys=SimpleNamespace(entries=lambda: parse_authorized_keys(line)),
        revoked=RevokedKeys(), cipher_offer=None,
        client_address=lambda peer: peer)
    connection = GatewayConnection(gateway)  # type: ignore[arg-type]
    connection.connection_made(FakeConnection())  # type: ignore[arg-type]
    with json_lines("sshreg.ssh") as lines:
        assert not connection.validate_public_key("git", allowed)
        assert not connection.validate_public_key("git", unknown)
        # an unknown key is logged once it is known not to precede its certificate
        connection.connection_lost(None)
    (refused_text, refused), (unknown_text, stranger), _closed = lines
    assert refused_text == (f"refused key {allowed.get_fingerprint('sha256')} (ci@test) from "
                            "192.0.2.7:50022: not allowed from 192.0.2.7 (from= option)")
    assert refused["msg"] == refused_text
    assert {k: refused[k] for k in ("fingerprint", "comment", "peer", "reason")} == {
        "fingerprint": allowed.get_fingerprint("sha256"), "comment": "ci@test",
        "peer": "192.0.2.7:50022", "reason": "not allowed from 192.0.2.7 (from= option)"}
    assert unknown_text == (f"refused unknown key {unknown.get_fingerprint('sha256')} from "
                            "192.0.2.7:50022 (user 'git')")
    assert {k: stranger[k] for k in ("fingerprint", "peer", "user")} == {
        "fingerprint": unknown.get_fingerprint("sha256"), "peer": "192.0.2.7:50022",
        "user": "git"}
