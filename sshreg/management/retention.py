"""Retention policies: which tags of a repository the garbage collector removes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..access import glob_matches


@dataclass(frozen=True)
class RetentionPolicy:
    """For repositories matching `repositories`: tags matching `keep_tags` always stay; of
    the others, only the `keep_last` most recently written stay, and none older than
    `max_age` seconds. A policy without `keep_last` and `max_age` removes nothing."""

    repositories: str
    keep_last: int | None = None
    keep_tags: str | None = None
    max_age: float | None = None

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


def expired_tags(policies: Iterable[RetentionPolicy], repository: str,
                 tags: list[tuple[str, float]], now: float) -> list[str]:
    """Tags removed by any policy that applies to the repository."""
    expired: set[str] = set()
    for policy in policies:
        if policy.applies_to(repository):
            expired.update(policy.expired_tags(tags, now))
    return sorted(expired)
