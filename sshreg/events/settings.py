"""`[events]` and `[[webhook]]`: how long the event log is kept, and where it is sent."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..settings import (
    REQUIRED,
    ConfigError,
    parse_duration,
    parse_env_name,
    parse_section,
    parse_str,
    parse_str_list,
    setting,
)

EVENT_TYPES = ("manifest.pushed", "tag.deleted", "manifest.deleted", "mirror.filled",
               "gc.finished")


@dataclass(frozen=True)
class EventSettings:
    keep: float = setting("7d", "events older than this are deleted by garbage collection",
                          parse_duration)
    poll: float = setting("1s", "how often a gateway looks for events other gateways wrote",
                          parse_duration, low="0.1s", high="60s")


def parse_url(value: Any, what: str) -> str:
    url = parse_str(value, what)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{what}: {value!r} is not an http(s) URL")
    return url


def parse_event_types(value: Any, what: str) -> tuple[str, ...]:
    types = parse_str_list(value, what)
    for name in types:
        if name not in EVENT_TYPES:
            raise ConfigError(f"{what}: {name!r} is not one of {', '.join(EVENT_TYPES)}")
    return types


@dataclass(frozen=True)
class WebhookSettings:
    """One endpoint that receives events as signed POSTs."""

    url: str = setting(REQUIRED, "where events are POSTed (CloudEvents 1.0, structured JSON)",
                       parse_url, example="https://ci.example/hooks/registry")
    events: tuple[str, ...] = setting(list(EVENT_TYPES), "the event types sent",
                                      parse_event_types, example=["manifest.pushed"])
    repos: tuple[str, ...] = setting(["**"], "globs of the repositories whose events are sent",
                                     parse_str_list, example=["team/**"])
    secret_env: str | None = setting(
        None, "the environment variable holding the HMAC-SHA256 signing secret",
        parse_env_name, example="WEBHOOK_SECRET")
    retry_for: float = setting("1h", "a delivery that keeps failing is retried this long, "
                               "then given up", parse_duration)

    @property
    def name(self) -> str:
        """A storage-safe name of this endpoint (its lease and cursor live under it)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.url.split("://", 1)[1])[:120]


def parse_webhooks(value: Any, what: str) -> tuple[WebhookSettings, ...]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{what}: use [[webhook]] tables")
    hooks = tuple(parse_section(WebhookSettings, table, f"{what}[{i}]")
                  for i, table in enumerate(value))
    if len({h.name for h in hooks}) != len(hooks):
        raise ConfigError(f"{what}: a url is given twice")
    return hooks
