"""`authorized_keys` in OpenSSH format: who may connect, from where, until when, to do what.

Standard options enforced here: `from=`, `expiry-time=`, `permitopen=`,
`no-port-forwarding`, `port-forwarding`, `restrict`, and `cert-authority` with
`principals=` (the key is a CA: user certificates it signed for one of those principals
log in; `ssh/certificates.py`). `restrict` means what it means in OpenSSH: no forwarding of
any kind, so such a key can use the help and management commands but not the registry
tunnel, unless the line also says `port-forwarding` after it (`permitopen=` only narrows
forwarding, it never turns it on). Options that would change what a key may run
(`command=`, `environment=`, `tunnel=`) are not supported: a line carrying one is rejected
with a warning rather than half-honoured. Options that only disable things we never offer
(`no-pty`, `no-agent-forwarding`, `no-X11-forwarding`, `no-user-rc`, `pty`, ...) are
accepted. How each option is checked: `options.py`.

A line that cannot be used is skipped with a warning naming its line number and the reason;
every other line still applies, so one typo never freezes the key list (a removed key
stays removed, whatever else the same edit broke).

Registry rights live in `sshreg-*` options on the same line (see `sshreg/access.py`).
Where the file lives and when it is re-read: `local_file.py`, `bucket_file.py`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Protocol

import asyncssh
from asyncssh.pattern import HostPatternList

from ..access import Identity, Rights
from .options import KeyLineError, parse_options, split_options

log = logging.getLogger("sshreg.keys")


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
    cert_authority: bool = False  # the key signs user certificates; it never logs in itself
    principals: tuple[str, ...] = ()

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
                self.port_forwarding, self.permit_open, self.cert_authority, self.principals)


def parse_line(line: str, number: int) -> KeyEntry:
    """Parse one non-comment line; raise KeyLineError (only) with the reason it is unusable."""
    try:
        return _parse_line(line, number)
    except KeyLineError:
        raise
    except Exception as exc:  # a case the checks missed costs this line, never the file
        raise KeyLineError(f"cannot be parsed ({exc!r})") from exc


def _parse_line(line: str, number: int) -> KeyEntry:
    try:
        key = asyncssh.import_public_key(line)
        options: list[tuple[str, str | None]] = []
    except (asyncssh.KeyImportError, ValueError):
        options, rest = split_options(line)
        try:
            key = asyncssh.import_public_key(rest)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise KeyLineError(f"not a public key: {exc}") from None
    try:
        granted = parse_options(options)
    except KeyLineError as exc:
        raise KeyLineError(str(exc), key.get_fingerprint("sha256")) from None
    return KeyEntry(
        key=key,
        fingerprint=key.get_fingerprint("sha256"),
        comment=key.get_comment() or "",
        rights=granted.rights,
        line=number,
        from_patterns=granted.from_patterns,
        expires=granted.expires,
        port_forwarding=granted.port_forwarding,
        permit_open=granted.permit_open,
        cert_authority=granted.cert_authority,
        principals=granted.principals,
    )


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
            log.warning("%(source)s line %(line)d ignored: %(error)s (key %(fingerprint)s)"
                        if exc.fingerprint else "%(source)s line %(line)d ignored: %(error)s",
                        {"source": source, "line": number, "error": str(exc),
                         "fingerprint": exc.fingerprint})
    return entries


class KeyList(Protocol):
    """Who may log in, as the SSH server asks it on every login: from memory, at once.
    `local_file.AuthorizedKeys` (a file) and `bucket_file.SharedAuthorizedKeys` (a bucket
    object)."""

    def entries(self) -> list[KeyEntry]: ...

    def reload_if_changed(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
