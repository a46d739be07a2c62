"""Editing `authorized_keys` from the command line: list, add and remove keys.

Lines are parsed by `authorized_keys.parse_line`, exactly as the server parses them, so
`list` shows what the server will do with each line. Every edit holds a lock on the keys
folder (two `sshreg keys` commands never interleave), rewrites the file through a temporary
file in the same folder (fsync, rename, fsync of the folder), keeps the file's mode and
owner, and leaves every line it does not change byte for byte as it was: comments, blank
lines and lines the server ignores included. The running server picks the new file up on
the next login (it re-reads the file when its inode, size or mtime change).

The edits themselves (`with_key`, `without_key`) are functions from the file's lines to its
new text, so that `shared_keys.py` applies them to an authorized_keys kept in a bucket, with
a conditional write instead of a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncssh

from ..access import Rights
from .entries import KeyEntry, parse_line
from .options import RIGHTS_OPTIONS, KeyLineError, split_options

T = TypeVar("T")

FILE_NAME = "authorized_keys"
LOCK_TIMEOUT = 10.0
NEW_FILE_MODE = 0o600
_GLOB = re.compile(r"[a-z0-9._/*?-]+")
_ENCODING = ("utf-8", "surrogateescape")  # any byte survives a decode/encode round trip
ENCODING = _ENCODING


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


def read_lines(path: Path) -> list[Line]:
    """The file's lines; no file means no lines."""
    try:
        return parse_lines(path.read_bytes().decode(*_ENCODING))
    except FileNotFoundError:
        return []


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
    for candidate in (text, _after_options(text)):
        try:
            return asyncssh.import_public_key(candidate)
        except (asyncssh.KeyImportError, ValueError):
            continue
    return None


def _after_options(text: str) -> str:
    try:
        return split_options(text)[1]
    except KeyLineError:
        return ""


# -- what `keys add` writes -------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """The rights `keys add` writes: full access, or pull (and push, delete) on globs."""

    repos: tuple[str, ...] = ()
    pull_only: bool = False

    @classmethod
    def parse(cls, repos: list[str] | None, pull_only: bool) -> Grant:
        globs = tuple(g.strip() for value in repos or () for g in value.split(",") if g.strip())
        for glob in globs:
            if not _GLOB.fullmatch(glob):
                raise KeyAdminError(f"--repos {glob!r}: a repository glob uses only a-z 0-9 . _ - / "
                                    "and the wildcards * ? **")
        return cls(globs, pull_only)

    @property
    def is_default(self) -> bool:
        return not self.repos and not self.pull_only

    def options(self) -> str:
        """The `sshreg-*` options for the line; empty for full access."""
        if self.is_default:
            return ""
        globs = ",".join(self.repos or ("**",))
        names = ("sshreg-pull",) if self.pull_only else ("sshreg-pull", "sshreg-push",
                                                        "sshreg-delete")
        return ",".join(f'{name}="{globs}"' for name in names)


def read_key_source(source: str) -> str:
    """The key line given as `FILE_OR_LINE`: a file (one key in it), `-` for stdin, or a line."""
    if source == "-":
        text = sys.stdin.read()
    elif "\n" not in source and Path(source).is_file():
        try:
            text = Path(source).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyAdminError(f"{source}: cannot read: {exc}") from None
    elif len(source.split()) != 1:
        text = source
    else:  # one word was meant as a file name: a key line has at least two
        raise KeyAdminError(f"{source}: no such file")
    lines = [s.strip() for s in text.splitlines() if s.strip() and not s.strip().startswith("#")]
    if len(lines) != 1:
        raise KeyAdminError(f"expected exactly one public key, found {len(lines)} line(s)")
    return lines[0]


def new_line(source_line: str, grant: Grant, comment: str | None = None) -> tuple[str, KeyEntry]:
    """The text `keys add` will write for the key, and its parsed entry.

    A bare key gets the grant's options; a line that already carries options keeps them as
    written (and then takes no rights flags). `comment` replaces the key's comment.
    """
    try:
        given = parse_line(source_line, 0)
    except KeyLineError as exc:
        raise KeyAdminError(f"not a usable key: {exc}") from None
    if comment is not None and (not comment.strip() or any(c in comment for c in "\r\n\0")):
        raise KeyAdminError("--comment must be a non-empty single line")
    existing = options_of(source_line)
    if existing and not grant.is_default:
        raise KeyAdminError("the line already has options: give a bare key with --pull-only or "
                            "--repos, or the full line without them")
    prefix = _options_prefix(source_line) if existing else grant.options()
    kind, blob = given.key.export_public_key().decode().split()[:2]
    text = " ".join(p for p in (prefix, kind, blob, (comment or given.comment).strip()) if p)
    try:
        return text, parse_line(text, 0)
    except KeyLineError as exc:  # pragma: no cover - every part was checked above
        raise KeyAdminError(f"cannot build the line: {exc}") from None


def _options_prefix(text: str) -> str:
    rest = _after_options(text)
    return text[: len(text) - len(rest)].rstrip() if rest else ""


# -- editing the file -------------------------------------------------------------------


@dataclass(frozen=True)
class Added:
    entry: KeyEntry
    line: int
    replaced: tuple[Line, ...] = ()


@contextlib.contextmanager
def locked(folder: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive flock on the keys folder itself (no lock file to leave behind)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise KeyAdminError(f"{folder} is locked by another `sshreg keys` command "
                                        f"(waited {timeout:.0f}s)") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _owner_and_mode(path: Path) -> tuple[int, int, int]:
    """(uid, gid, mode) to give the new file: the old file's, or the folder owner's and 0600."""
    try:
        st = path.stat()
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        st = path.parent.stat()
        return st.st_uid, st.st_gid, NEW_FILE_MODE


def write_atomically(path: Path, text: str, expected: tuple[int, int, int] | None) -> None:
    """Replace `path` with `text` through a fsynced temp file; keep its mode and owner.

    `expected` is the file's signature when it was read: if something other than a `keys`
    command changed the file since, nothing is written.
    """
    uid, gid, mode = _owner_and_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode(*_ENCODING))
            f.flush()
            os.fchmod(f.fileno(), mode)
            if (uid, gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(f.fileno(), uid, gid)
                except PermissionError:
                    raise KeyAdminError(f"cannot keep {path}'s owner ({uid}:{gid}); run as root "
                                        "or as that user") from None
            os.fsync(f.fileno())
        if _signature(path) != expected:
            raise KeyAdminError(f"{path} was changed by another program meanwhile; try again")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keys_file(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise KeyAdminError(f"{folder} is not a folder")
    return folder / FILE_NAME


def list_keys(folder: Path) -> list[Line]:
    """Every line of the folder's authorized_keys, parsed."""
    return read_lines(_keys_file(folder))


def add_key(folder: Path, source_line: str, grant: Grant, comment: str | None = None,
            replace: bool = False) -> Added:
    """Append the key to the folder's authorized_keys (or, with `replace`, put it where that
    key already is)."""
    text, new = new_line(source_line, grant, comment)
    path = _keys_file(folder)
    return edit_file(path, lambda lines: with_key(lines, text, new, replace, path))


def edit_file(path: Path, change: Callable[[list[Line]], tuple[str, T]]) -> T:
    """Apply `change` (the file's lines -> its new text and a result) to the file, under
    the lock of its folder (created if needed), with an atomic rewrite."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with locked(path.parent):
        signature = _signature(path)
        content, result = change(read_lines(path))
        write_atomically(path, content, signature)
    return result


def with_key(lines: list[Line], text: str, new: KeyEntry, replace: bool, where: object
             ) -> tuple[str, Added]:
    """The file's text with the line `text` (the key `new`) added, or with `replace` put in
    place of the key's lines; refused if the key is there and `replace` is not given."""
    same = [ln for ln in lines if fingerprint_of(ln) == new.fingerprint]
    if same and not replace:
        lines_text = ", ".join(f"line {ln.number}" + (f" (ignored: {ln.error})" if ln.ignored
                                                       else "") for ln in same)
        raise KeyAdminError(f"{new.fingerprint} is already in {where} on {lines_text}; "
                            "use --replace to change its line")
    out, number = _with_line(lines, same, text)
    return "".join(ln.raw for ln in out), Added(new, number, tuple(same))


def _with_line(lines: list[Line], same: list[Line], text: str) -> tuple[list[Line], int]:
    """The lines with `text` in place of the first of `same` (the others dropped), or
    appended; and the new line's number."""
    ending = next((ln.ending for ln in lines if ln.ending), "\n")
    drop = {ln.number for ln in same}
    if same:
        new = Line(0, text + (same[0].ending or ending))
        out = [new if ln.number == same[0].number else ln
               for ln in lines if ln.number == same[0].number or ln.number not in drop]
    else:
        out = list(lines)
        if out and not out[-1].ending:
            out[-1] = Line(out[-1].number, out[-1].raw + ending)
        new = Line(0, text + ending)
        out.append(new)
    return out, next(i for i, ln in enumerate(out, start=1) if ln is new)


def remove_key(folder: Path, selector: str) -> list[Line]:
    """Remove every line holding the key named by fingerprint or by comment; return them."""
    path = _keys_file(folder)
    if not folder.is_dir():
        raise KeyAdminError(f"{folder} does not exist")
    return edit_file(path, lambda lines: without_key(lines, selector, path))


def without_key(lines: list[Line], selector: str, where: object) -> tuple[str, list[Line]]:
    """The file's text without the lines holding the key `selector` names, and those lines."""
    fingerprint = _select(lines, selector, where)
    gone = [ln for ln in lines if fingerprint_of(ln) == fingerprint]
    numbers = {ln.number for ln in gone}
    return "".join(ln.raw for ln in lines if ln.number not in numbers), gone


def _select(lines: list[Line], selector: str, path: object) -> str:
    """The one fingerprint that `selector` names (a fingerprint, with or without SHA256:, or
    a comment)."""
    wanted = selector.strip()
    prints = {fp for ln in lines if (fp := fingerprint_of(ln))}
    for fp in prints:
        if wanted in (fp, fp.removeprefix("SHA256:")):
            return fp
    by_comment = sorted({fp for ln in lines if (fp := fingerprint_of(ln)) and comment_of(ln) == wanted})
    if not by_comment:
        raise KeyAdminError(f"no key in {path} has the fingerprint or comment {wanted!r}")
    if len(by_comment) > 1:
        raise KeyAdminError(f"{len(by_comment)} keys have the comment {wanted!r} "
                            f"({', '.join(by_comment)}): remove one by its fingerprint")
    return by_comment[0]


def rights_json(rights: Rights) -> dict[str, object]:
    return {"pull": list(rights.pull), "push": list(rights.push), "delete": list(rights.delete),
            "admin": rights.admin}


# -- showing the file -------------------------------------------------------------------


def listing_json(lines: list[Line]) -> dict[str, object]:
    """`keys list --json`: usable keys and ignored lines."""
    keys = [{
        "line": ln.number,
        "fingerprint": ln.entry.fingerprint,
        "type": ln.entry.key.get_algorithm(),
        "comment": ln.entry.comment,
        "rights": rights_json(ln.entry.rights),
        "rights_text": ln.entry.rights.describe(),
        "options": other_options(ln),
        "expired": ln.entry.expired(),
    } for ln in lines if ln.entry is not None]
    ignored = [{"line": ln.number, "reason": ln.error, "fingerprint": fingerprint_of(ln),
                "text": ln.text} for ln in lines if ln.ignored]
    return {"keys": keys, "ignored": ignored}


def listing_text(lines: list[Line]) -> list[str]:
    """`keys list`: one line per key, then the ignored lines with their reason."""
    out = []
    for ln in lines:
        if ln.entry is None:
            continue
        extra = other_options(ln) + (["EXPIRED"] if ln.entry.expired() else [])
        out.append(f"{ln.number:>4}  {ln.entry.fingerprint}  {ln.entry.comment or '-'}  "
                   f"[{ln.entry.rights.describe()}]" + (f"  {' '.join(extra)}" if extra else ""))
    for ln in lines:
        if ln.ignored:
            out.append(f"{ln.number:>4}  ignored: {ln.error}: {_shorten(ln.text)}")
    return out or ["no keys"]


def _shorten(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
