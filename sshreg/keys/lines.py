"""authorized_keys line by line, as written, each with what the server makes of it.

Lines are parsed by `entries.parse_line`, exactly as the server parses them, so `sshreg keys
list` shows what the server will do with each line, and an edit can keep every line it does
not change byte for byte (`edits.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncssh

from .entries import KeyEntry, parse_line
from .options import RIGHTS_OPTIONS, KeyLineError, split_options

ENCODING = ("utf-8", "surrogateescape")  # any byte survives a decode/encode round trip


class KeyAdminError(Exception):
    """A `keys` command that cannot be carried out, explained in one line."""


@dataclass(frozen=True)
class Line:
    """One line of the file as written (with its line ending) and what the server makes of it."""

    number: int
    raw: str
    entry: KeyEntry | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        return self.raw.strip()

    @property
    def is_key(self) -> bool:
        return self.entry is not None

    @property
    def ignored(self) -> bool:
        """A line that is neither blank, a comment, nor a usable key."""
        return self.error is not None

    @property
    def ending(self) -> str:
        return self.raw[len(self.raw.rstrip("\r\n")):]


def parse_lines(text: str) -> list[Line]:
    """Every line of `text` (split as the server splits it), parsed as the server parses it."""
    lines = []
    for number, raw in enumerate(text.splitlines(keepends=True), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(Line(number, raw))
            continue
        try:
            lines.append(Line(number, raw, entry=parse_line(stripped, number)))
        except KeyLineError as exc:
            lines.append(Line(number, raw, error=str(exc)))
    return lines


def options_of(text: str) -> list[tuple[str, str | None]]:
    """The options in front of a key line (none for a bare key)."""
    try:
        asyncssh.import_public_key(text)
        return []
    except (asyncssh.KeyImportError, ValueError):
        pass
    try:
        return split_options(text)[0]
    except KeyLineError:
        return []


def format_option(name: str, value: str | None) -> str:
    """An option as it would be written on a line: `name` or `name="value"`."""
    if value is None:
        return name
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{name}="{escaped}"'


def other_options(line: Line) -> list[str]:
    """A key line's options other than the `sshreg-*` rights, as written."""
    return [format_option(n, v) for n, v in options_of(line.text) if n not in RIGHTS_OPTIONS]


def fingerprint_of(line: Line) -> str | None:
    """The key's fingerprint, for usable lines and for ignored lines that hold a key."""
    if line.entry is not None:
        return line.entry.fingerprint
    key = _key_in(line.text) if line.ignored else None
    return key.get_fingerprint("sha256") if key is not None else None


def comment_of(line: Line) -> str:
    if line.entry is not None:
        return line.entry.comment
    key = _key_in(line.text) if line.ignored else None
    return (key.get_comment() or "") if key is not None else ""


def _key_in(text: str) -> asyncssh.SSHKey | None:
    """The public key on a line the server ignores, if there is one to read."""
    for candidate in (text, after_options(text)):
        try:
            return asyncssh.import_public_key(candidate)
        except (asyncssh.KeyImportError, ValueError):
            continue
    return None


def after_options(text: str) -> str:
    """What follows a line's options (the key and comment); empty if they cannot be split."""
    try:
        return split_options(text)[1]
    except KeyLineError:
        return ""
