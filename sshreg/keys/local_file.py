"""authorized_keys as a local file: read by the server, edited by `sshreg keys`.

The server re-reads the file whenever its size, mtime or inode changes, checked on each
login. Every edit holds a lock on the keys folder (two `sshreg keys` commands never
interleave), rewrites the file through a temporary file in the same folder (fsync, rename,
fsync of the folder) and keeps the file's mode and owner. The running server picks the new
file up on the next login.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from .entries import KeyEntry, parse_authorized_keys
from .lines import ENCODING, KeyAdminError, Line, parse_lines

log = logging.getLogger("sshreg.keys")

T = TypeVar("T")

FILE_NAME = "authorized_keys"
LOCK_TIMEOUT = 10.0
NEW_FILE_MODE = 0o600


class AuthorizedKeys:
    """The authorized_keys file, re-read when it changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._signature: tuple[int, int, int] | None = None
        self._entries: list[KeyEntry] = []
        self._unreadable = False

    def entries(self) -> list[KeyEntry]:
        self.reload_if_changed()
        return self._entries

    async def start(self) -> None:
        """Nothing to start: the file is read on demand."""

    async def close(self) -> None:
        """Nothing to close."""

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed. The new signature is kept only once the file has
        been read, so a failed read is tried again on the next check."""
        try:
            st = self.path.stat()
            signature: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
            if signature == self._signature:
                return False
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            signature, text = None, ""
            if self._signature is None and not self._unreadable:
                return False
        except OSError as exc:
            return self._cannot_read(exc)
        self._signature, self._unreadable = signature, False
        if signature is None:
            self._entries = []
            log.warning("%(source)s does not exist: no key can log in", {"source": str(self.path)})
            return True
        self._entries = parse_authorized_keys(text, str(self.path))
        log.info("loaded %(keys)d key(s) from %(source)s",
                 {"keys": len(self._entries), "source": str(self.path)})
        return True

    def _cannot_read(self, exc: OSError) -> bool:
        """As sshd does with a file it cannot read: nobody logs in (logged once)."""
        if not self._unreadable:
            log.error("cannot read %(source)s: %(error)s; no key can log in until it can be read",
                      {"source": str(self.path), "error": str(exc.strerror or exc)})
        self._unreadable, self._signature, self._entries = True, None, []
        return True


def read_lines(path: Path) -> list[Line]:
    """The file's lines; no file means no lines."""
    try:
        return parse_lines(path.read_bytes().decode(*ENCODING))
    except FileNotFoundError:
        return []


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
            f.write(text.encode(*ENCODING))
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


def keys_file(path: Path, must_exist: bool = False) -> Path:
    """`path`, once its folder is checked: not a file, and there if `must_exist`."""
    if path.parent.exists() and not path.parent.is_dir():
        raise KeyAdminError(f"{path.parent} is not a folder")
    if must_exist and not path.parent.is_dir():
        raise KeyAdminError(f"{path.parent} does not exist")
    return path


def edit_file(path: Path, change: Callable[[list[Line]], tuple[str, T]]) -> T:
    """Apply `change` (the file's lines -> its new text and a result) to the file, under
    the lock of its folder (created if needed), with an atomic rewrite."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with locked(path.parent):
        signature = _signature(path)
        content, result = change(read_lines(path))
        write_atomically(path, content, signature)
    return result
