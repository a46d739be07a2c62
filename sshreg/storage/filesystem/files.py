"""Files that appear whole: a finished temporary file is renamed into place (or linked, for
a create-only write) and its directory fsynced, so readers never see partial data."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..base import PreconditionFailed, StorageError


def file_etag(st: os.stat_result) -> str:
    # A rename installs a new inode, so inode + mtime + size changes on every put.
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(
    tmp: Path, path: Path, *, if_match: str | None = None, if_none_match: bool = False
) -> None:
    """Move a finished temporary file to `path` atomically, honouring the conditions."""
    for _ in range(8):  # a concurrent delete may prune the parent directory under us
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if if_none_match:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise PreconditionFailed(str(path)) from None
            elif if_match is not None:
                _replace_if_match(tmp, path, if_match)
            else:
                os.replace(tmp, path)
            _fsync_dir(path.parent)
            return
        except FileNotFoundError:
            if not tmp.exists():
                raise
    raise StorageError(f"could not install {path}")


def _replace_if_match(tmp: Path, path: Path, etag: str) -> None:
    # The lock on the parent directory serializes compare-and-swap between processes.
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = file_etag(os.stat(path))
        except FileNotFoundError:
            raise PreconditionFailed(str(path)) from None
        if current != etag:
            raise PreconditionFailed(str(path))
        os.replace(tmp, path)
    finally:
        os.close(fd)
