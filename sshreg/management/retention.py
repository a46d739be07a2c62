"""Retention policies: which tags of a repository the garbage collector removes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..access import glob_matches
from ..settings import (
    REQUIRED,
    ConfigError,
    parse_duration,
    parse_positive,
    parse_regex,
    parse_section,
    parse_str,
    setting,
)


class TagPolicy(Protocol):
    """What garbage collection asks of a policy: which repositories it covers, and which
    of their tags (given with the time each was written) it removes."""

    def applies_to(self, repository: str) -> bool: ...

    def expired_tags(self, tags: Iterable[tuple[str, float]], now: float) -> list[str]: ...


@dataclass(frozen=True)
class RetentionPolicy:
    """For repositories matching `repositories`: tags matching `keep_tags` always stay; of
    the others, only the `keep_last` most recently written stay, and none older than
    `max_age` seconds. A policy without `keep_last` and `max_age` removes nothing."""

    repositories: str = setting(REQUIRED, "glob (see access rights)", parse_str, example="team/*")
    keep_last: int | None = setting(
        None, "keep the 10 most recently written tags...", parse_positive, example=10)
    keep_tags: str | None = setting(
        None, "...plus every tag matching this regex...", parse_regex, example="v[0-9.]+")
    max_age: float | None = setting(
        None, "...and drop other tags older than this", parse_duration, example="90d")

    def applies_to(self, repository: str) -> bool:
        return glob_matches(self.repositories, repository)

    def expired_tags(self, tags: Iterable[tuple[str, float]], now: float) -> list[str]:
        """Tags (given with the time they were written) this policy removes."""
        keep = re.compile(self.keep_tags) if self.keep_tags else None
        candidates = sorted(((written, tag) for tag, written in tags
                             if not (keep and keep.fullmatch(tag))), reverse=True)
        expired = []
        for position, (written, tag) in enumerate(candidates):
            too_many = self.keep_last is not None and position >= self.keep_last
            too_old = self.max_age is not None and now - written > self.max_age
            if too_many or too_old:
                expired.append(tag)
        return sorted(expired)


def expired_tags(policies: Iterable[TagPolicy], repository: str,
                 tags: list[tuple[str, float]], now: float) -> list[str]:
    """Tags removed by any policy that applies to the repository."""
    expired: set[str] = set()
    for policy in policies:
        if policy.applies_to(repository):
            expired.update(policy.expired_tags(tags, now))
    return sorted(expired)


def parse_policies(value: Any, what: str) -> tuple[RetentionPolicy, ...]:
    """The [[retention]] tables of the configuration file."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{what}: use [[retention]] tables")
    return tuple(parse_section(RetentionPolicy, table, f"{what}[{i}]")
                 for i, table in enumerate(value))
