"""Messages that carry data carry it as fields in JSON and logfmt, and read as prose in text."""

from __future__ import annotations

import json
import logging

from sshreg.logs import JsonFormatter, LogfmtFormatter, TextFormatter


def record(msg: object, args: object = None) -> logging.LogRecord:
    """The record `logger.info(msg, args)` makes: a mapping is passed as the one argument."""
    call_args = (args,) if isinstance(args, dict) else args
    return logging.LogRecord("sshreg.test", logging.INFO, __file__, 1, msg, call_args, None)


def test_a_mapping_argument_is_the_prose_in_text_and_fields_in_json() -> None:
    data = {"keys": 3, "source": "/etc/sshreg/authorized_keys"}
    message = record("loaded %(keys)d key(s) from %(source)s", data)
    assert TextFormatter().format(message).endswith(
        "INFO sshreg.test: loaded 3 key(s) from /etc/sshreg/authorized_keys")
    fields = json.loads(JsonFormatter().format(message))
    assert fields["msg"] == "loaded 3 key(s) from /etc/sshreg/authorized_keys"
    assert fields["keys"] == 3 and fields["source"] == "/etc/sshreg/authorized_keys"


def test_a_mapping_argument_is_logfmt_fields_quoted_when_needed() -> None:
    line = LogfmtFormatter().format(record("refused %(what)s for %(key)s",
                                           {"what": "shell request", "key": "SHA256:x"}))
    assert 'msg="refused shell request for SHA256:x"' in line
    assert 'what="shell request"' in line and " key=SHA256:x" in line


def test_fields_never_replace_the_records_own() -> None:
    fields = json.loads(JsonFormatter().format(record("%(level)s at %(time)s",
                                                       {"level": "forged", "time": "x"})))
    assert fields["level"] == "info" and fields["time"] != "x"
    assert fields["msg"] == "forged at x"


def test_positional_arguments_stay_prose_only() -> None:
    fields = json.loads(JsonFormatter().format(record("%s and %d", ("a", 2))))
    assert set(fields) == {"time", "level", "logger", "msg"}
    assert fields["msg"] == "a and 2"


def test_control_characters_in_a_field_are_escaped_in_logfmt() -> None:
    line = LogfmtFormatter().format(record("path %(path)s", {"path": "a\nb\x1b"}))
    assert "\n" not in line and "\x1b" not in line
    assert 'path="a\\nb\\u001b"' in line
