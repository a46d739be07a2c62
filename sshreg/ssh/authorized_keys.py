"""`authorized_keys` in OpenSSH format: who may connect, from where, until when, to do what.

Standard options enforced here: `from=`, `expiry-time=`, `permitopen=`,
`no-port-forwarding`, `port-forwarding`, `restrict`. `restrict` means what it means in
OpenSSH: no forwarding of any kind, so such a key can use the help and management
commands but not the registry tunnel, unless the line also says `port-forwarding`
(or `permitopen=` names the registry). Options that would change what a key may run or
which identity it has (`command=`, `environment=`, `principals=`, `cert-authority`,
`tunnel=`) are not supported: a line carrying one is rejected with a warning rather than
half-honoured. Options that only disable things we never offer (`no-pty`,
`no-agent-forwarding`, `no-X11-forwarding`, `no-user-rc`, `pty`, ...) are accepted.

Registry rights live in `sshreg-*` options on the same line (see `sshreg/access.py`).
The file is re-read whenever its size, mtime or inode changes, checked on each login.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Protocol

import asyncssh
from asyncssh.pattern import HostPatternList

from ..access import Identity, Rights

log = logging.getLogger("sshreg.keys")

RIGHTS_OPTIONS = {"sshreg-pull", "sshreg-push", "sshreg-delete", "sshreg-admin"}
UNSUPPORTED_OPTIONS = {"command", "environment", "principals", "cert-authority", "tunnel"}
HARMLESS_OPTIONS = {
    "no-pty", "pty", "no-agent-forwarding", "agent-forwarding", "no-x11-forwarding",
    "x11-forwarding", "no-user-rc", "user-rc", "no-touch-required", "verify-required",
}


class KeyLineError(ValueError):
    """A line of authorized_keys that cannot be used."""


def split_options(text: str) -> tuple[list[tuple[str, str | None]], str]:
    """Split the leading `opt,opt="v, v",...` of a line from the rest (OpenSSH quoting)."""
    options: list[tuple[str, str | None]] = []
    current = ""
    quoted = escaped = False
    end = len(text)
    for index, ch in enumerate(text):
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif quoted:
            current += ch
        elif ch in " \t":
            end = index
            break
        elif ch == ",":
            options.append(_option(current))
            current = ""
        else:
            current += ch
    if quoted:
        raise KeyLineError("unbalanced quote in options")
    options.append(_option(current))
    return options, text[end:].strip()


def _option(text: str) -> tuple[str, str | None]:
    name, sep, value = text.partition("=")
    if not name:
        raise KeyLineError("empty option")
    return name.lower(), value if sep else None


def parse_expiry(value: str) -> float:
    """OpenSSH `expiry-time`: YYYYMMDD[HHMM[SS]], local time unless it ends with Z."""
    utc = value.endswith(("Z", "z"))
    digits = value[:-1] if utc else value
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    if not digits.isdigit() or len(digits) not in formats:
        raise KeyLineError(f"invalid expiry-time {value!r}")
    moment = datetime.strptime(digits, formats[len(digits)])
    return (moment.replace(tzinfo=UTC) if utc else moment.astimezone()).timestamp()


def _globs(value: str | None) -> tuple[str, ...]:
    return tuple(g.strip() for g in (value or "").split(",") if g.strip())


@dataclass(frozen=True)
class KeyEntry:
    """One usable line of authorized_keys."""

    key: asyncssh.SSHKey
    fingerprint: str
    comment: str
    rights: Rights
    line: int
    from_patterns: tuple[str, ...] = ()
    expires: float | None = None
    port_forwarding: bool = True
    permit_open: frozenset[tuple[str, int | None]] = field(default_factory=frozenset)

    def allows_address(self, host: str, addr: str) -> bool:
        if not self.from_patterns:
            return True
        try:
            ip = ip_address(addr)
        except ValueError:
            return False
        return all(HostPatternList(p).matches(host, addr, ip) for p in self.from_patterns)

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now or time.time()) >= self.expires

    def may_open(self, host: str, port: int) -> bool:
        """Whether `permitopen` (if any) lets this key forward to host:port."""
        if not self.permit_open:
            return True
        return (host, port) in self.permit_open or (host, None) in self.permit_open

    def identity(self, peer: str) -> Identity:
        return Identity(self.fingerprint, self.comment, self.rights, peer)

    @property
    def grant(self) -> tuple[object, ...]:
        """What this line lets its key do: the same on a reloaded file unless the line changed
        (its position and comment do not count)."""
        return (self.key.public_data, self.rights, self.from_patterns, self.expires,
                self.port_forwarding, self.permit_open)


def parse_line(line: str, number: int) -> KeyEntry:
    """Parse one non-comment line; raise KeyLineError with the reason it is unusable."""
    try:
        key = asyncssh.import_public_key(line)
        options: list[tuple[str, str | None]] = []
    except (asyncssh.KeyImportError, ValueError):
        options, rest = split_options(line)
        try:
            key = asyncssh.import_public_key(rest)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise KeyLineError(f"not a public key: {exc}") from None

    names = {name for name, _ in options}
    unsupported = names & UNSUPPORTED_OPTIONS
    if unsupported:
        raise KeyLineError(f"unsupported option(s) {', '.join(sorted(unsupported))}")
    unknown = names - UNSUPPORTED_OPTIONS - HARMLESS_OPTIONS - RIGHTS_OPTIONS - {
        "from", "expiry-time", "permitopen", "no-port-forwarding", "port-forwarding", "restrict"}
    if unknown:
        raise KeyLineError(f"unknown option(s) {', '.join(sorted(unknown))}")

    values: dict[str, list[str | None]] = {}
    for name, value in options:
        values.setdefault(name, []).append(value)

    from_patterns = tuple(v for v in values.get("from", []) if v)
    expiries = [parse_expiry(v) for v in values.get("expiry-time", []) if v]
    permit_open = frozenset(_permit(v) for v in values.get("permitopen", []) if v)
    forwarding = "no-port-forwarding" not in names and (
        "restrict" not in names or "port-forwarding" in names or bool(permit_open))

    if names & RIGHTS_OPTIONS:
        first = {name: values[name][0] for name in names & RIGHTS_OPTIONS}
        rights = Rights(
            pull=_globs(first.get("sshreg-pull")),
            push=_globs(first.get("sshreg-push")),
            delete=_globs(first.get("sshreg-delete")),
            admin="sshreg-admin" in names,
        )
    else:
        rights = Rights.full()
    return KeyEntry(
        key=key,
        fingerprint=key.get_fingerprint("sha256"),
        comment=key.get_comment() or "",
        rights=rights,
        line=number,
        from_patterns=from_patterns,
        expires=min(expiries) if expiries else None,
        port_forwarding=forwarding,
        permit_open=permit_open,
    )


def _permit(value: str) -> tuple[str, int | None]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise KeyLineError(f"invalid permitopen {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if port == "*":
        return host, None
    if not port.isdigit():
        raise KeyLineError(f"invalid permitopen {value!r}")
    return host, int(port)


def parse_authorized_keys(text: str, source: str = "authorized_keys") -> list[KeyEntry]:
    """Every usable entry; unusable lines are logged with their line number and skipped."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entries.append(parse_line(line, number))
        except KeyLineError as exc:
            log.warning("%s line %d ignored: %s", source, number, exc)
    return entries


class KeyList(Protocol):
    """Who may log in, as the SSH server asks it on every login: from memory, at once.
    `AuthorizedKeys` (a file) and `shared_keys.SharedAuthorizedKeys` (a bucket object)."""

    def entries(self) -> list[KeyEntry]: ...

    def reload_if_changed(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class AuthorizedKeys:
    """The authorized_keys file, re-read when it changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._signature: tuple[int, int, int] | None = None
        self._entries: list[KeyEntry] = []

    def entries(self) -> list[KeyEntry]:
        self.reload_if_changed()
        return self._entries

    async def start(self) -> None:
        """Nothing to start: the file is read on demand."""

    async def close(self) -> None:
        """Nothing to close."""

    def reload_if_changed(self) -> bool:
        try:
            st = self.path.stat()
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self._signature:
            return False
        self._signature = signature
        if signature is None:
            self._entries = []
            log.warning("%s does not exist: no key can log in", self.path)
            return True
        self._entries = parse_authorized_keys(self.path.read_text(errors="replace"), str(self.path))
        log.info("loaded %d key(s) from %s", len(self._entries), self.path)
        return True

    def find(self, key: asyncssh.SSHKey) -> KeyEntry | None:
        """The first entry for this public key (as OpenSSH does)."""
        data = key.public_data
        return next((e for e in self.entries() if e.key.public_data == data), None)
