"""Logging set-up: plain text, JSON lines or logfmt, always to stderr (journald takes it).

Structured events (the audit log) are logged with a dict as the message; each format
renders its fields natively.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    base: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
    }
    if isinstance(record.msg, dict):
        base.update(record.msg)
    else:
        base["msg"] = record.getMessage()
    if record.exc_info:
        base["exception"] = logging.Formatter().formatException(record.exc_info)
    return base


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n\t'):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, dict):
            record = logging.makeLogRecord({**record.__dict__,
                                            "msg": json.dumps(record.msg, default=str),
                                            "args": None})
        return super().format(record)


FORMATTERS = {"text": TextFormatter, "json": JsonFormatter, "logfmt": LogfmtFormatter}


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[fmt]())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncssh logs every channel at INFO; keep its noise for debugging.
    logging.getLogger("asyncssh").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING)
