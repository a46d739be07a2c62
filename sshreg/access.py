"""Who is asking and what they may do: the identity an SSH key carries into every request.

Rights are written on the key's line in `authorized_keys` (see `keys/entries.py`).
A plain line means full access. With any `sshreg-*` option, a key has exactly the rights
its options grant:

    sshreg-pull="team/*,shared/base"    pull from matching repositories
    sshreg-push="team/*"                push to (and therefore also pull from) them
    sshreg-delete="team/*"              delete manifests, tags and blobs in them
    sshreg-admin                        garbage collection and other host-wide management

Patterns are shell-style globs over the repository name where `*` stops at `/` and `**`
crosses it; a pattern `team/*` therefore matches `team/app` but not `team/app/x`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache


class Action(Enum):
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"


@lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts))


def glob_matches(pattern: str, name: str) -> bool:
    return _glob_regex(pattern).fullmatch(name) is not None


def _matches_any(patterns: tuple[str, ...], name: str) -> bool:
    return any(glob_matches(p, name) for p in patterns)


@dataclass(frozen=True)
class Rights:
    """Repository globs per action, plus the host-wide admin right."""

    pull: tuple[str, ...] = ()
    push: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()
    admin: bool = False

    @classmethod
    def full(cls) -> Rights:
        return cls(pull=("**",), push=("**",), delete=("**",), admin=True)

    def may(self, action: Action, repository: str) -> bool:
        if action is Action.PULL:
            return _matches_any(self.pull, repository) or _matches_any(self.push, repository)
        if action is Action.PUSH:
            return _matches_any(self.push, repository)
        return _matches_any(self.delete, repository)

    @property
    def read_only(self) -> bool:
        return not self.push and not self.delete and not self.admin

    def describe(self) -> str:
        """One line a human can read, e.g. `pull team/*; push team/*`."""
        if self == Rights.full():
            return "full access (pull, push, delete everywhere; admin)"
        parts = [
            f"{name} {', '.join(globs)}"
            for name, globs in (("pull", self.pull), ("push", self.push), ("delete", self.delete))
            if globs
        ]
        if self.admin:
            parts.append("admin")
        return "; ".join(parts) or "no registry access"


def union(*all_rights: Rights) -> Rights:
    """What any of them may do (a certificate with several principals)."""
    def globs(action: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g for r in all_rights for g in getattr(r, action)))

    return Rights(pull=globs("pull"), push=globs("push"), delete=globs("delete"),
                  admin=any(r.admin for r in all_rights))


@dataclass(frozen=True)
class Certificate:
    """The user certificate a key logged in with: who its CA said it is."""

    key_id: str
    serial: int
    ca: str  # the CA key's SHA256 fingerprint
    principals: tuple[str, ...]


@dataclass(frozen=True)
class Identity:
    """The SSH key that opened the tunnel a request came through (and its certificate,
    when it logged in with one)."""

    fingerprint: str
    comment: str = ""
    rights: Rights = field(default_factory=Rights.full)
    peer: str = ""
    certificate: Certificate | None = None

    def may(self, action: Action, repository: str) -> bool:
        return self.rights.may(action, repository)

    def log_fields(self) -> dict[str, str | int]:
        fields: dict[str, str | int] = {"key": self.fingerprint, "comment": self.comment,
                                        "peer": self.peer}
        if self.certificate is not None:
            fields.update(key_id=self.certificate.key_id, serial=self.certificate.serial,
                          ca=self.certificate.ca)
        return fields
