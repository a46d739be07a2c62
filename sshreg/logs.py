"""Logging set-up: plain text, JSON lines or logfmt, always to stderr (journald takes it).

Every message that carries data names it: the call passes one mapping as its argument and
the message refers to its keys (`log.info("loaded %(keys)d key(s) from %(source)s",
{"keys": n, "source": path})`). Text shows the message as it reads; JSON and logfmt show
the message and, beside it, each key as a field of its own, so the data is written once
and a log pipeline filters on `source=...` without parsing prose. (`extra=` would need the
values a second time to keep the text readable.) Structured events (the audit log) are
logged with a dict as the message: all fields, no prose.

Control characters never reach the output raw, whatever a call site passes: clients control
much of what is logged (paths, forward destinations, command arguments, key comments), and
a raw newline would forge a log line, a raw ESC rewrite the terminal reading it. Text
escapes them in the formatted message, and indents every continuation line of a record (a
traceback's), so only a record's first line starts at the margin; logfmt and JSON quote
values as JSON strings.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .controls import CONTROLS, visible
from .settings import choice, setting


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
        if isinstance(record.args, Mapping):
            base.update((str(k), v) for k, v in record.args.items() if str(k) not in base)
    worker = getattr(record, "worker", None)
    if worker is not None:
        base["worker"] = worker
    if record.exc_info:
        base["exception"] = logging.Formatter().formatException(record.exc_info)
    return base


def _json(value: Any) -> str:
    # ensure_ascii (the default) escapes C0, DEL and everything past ASCII.
    return json.dumps(value, default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _json(_fields(record))


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\\') or CONTROLS.search(text):
        return _json(text)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        where = "" if worker is None else f"[w{worker}] "
        super().__init__(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        message = _json(record.msg) if isinstance(record.msg, dict) else record.getMessage()
        # A copy: other handlers see the record as it was. exc_text is left to be made here.
        record = logging.makeLogRecord({**record.__dict__, "msg": visible(message),
                                        "args": None, "exc_text": None})
        return super().format(record).replace("\n", "\n    ")

    def formatException(self, ei: Any) -> str:
        return visible(super().formatException(ei), keep="\n")

    def formatStack(self, stack_info: str) -> str:
        return visible(super().formatStack(stack_info), keep="\n")


class _WorkerFilter(logging.Filter):
    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


FORMATTERS = {"text": TextFormatter, "json": JsonFormatter, "logfmt": LogfmtFormatter}
LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class LogSettings:
    """The [log] section."""

    level: str = setting("info", ", ".join(LEVELS), choice(*LEVELS))
    format: str = setting("text", ", ".join(FORMATTERS), choice(*FORMATTERS))


def configure(level: str = "info", fmt: str = "text", worker: int | None = None) -> None:
    """Log to stderr; a worker process (`worker`: its number) says which it is on every
    line: `[w1]` before the logger's name in text, a `worker` field in JSON and logfmt."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "text":
        handler.setFormatter(TextFormatter(worker))
    else:
        handler.setFormatter(FORMATTERS[fmt]())
        if worker is not None:
            handler.addFilter(_WorkerFilter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncssh logs every channel at INFO; keep its noise for debugging.
    logging.getLogger("asyncssh").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING)
