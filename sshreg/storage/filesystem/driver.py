"""The zero-config backend: objects are files under one root directory.

Writes go to a temporary file under `<root>/_tmp/` (same filesystem), are fsynced and
renamed into place, so readers never see partial data and a crash leaves at most a
temporary file that `abort_stale_uploads` removes. All file I/O runs in a bounded
thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar

from .base import ObjectInfo, PreconditionFailed, SmallObject, StorageError

T = TypeVar("T")

TMP_DIR = "_tmp"
READ_CHUNK = 4 << 20  # per thread hop: each hop wakes a worker and the loop
WRITEBACK_EVERY = 32 << 20  # start writing a growing upload to disk every this many bytes


def _etag(st: os.stat_result) -> str:
    # A rename installs a new inode, so inode + mtime + size changes on every put.
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemDriver:
    """Objects as files under `root`; see `base.Driver` for the contract."""

    def __init__(self, root: str | os.PathLike[str], *, threads: int = 8) -> None:
        self.root = Path(root).resolve()
        self.tmp = self.root / TMP_DIR
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sshreg-fs")

    def __repr__(self) -> str:
        return f"FilesystemDriver({str(self.root)!r})"

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except (FileNotFoundError, PreconditionFailed):
            raise
        except OSError as exc:
            raise StorageError(f"filesystem: {exc.strerror or exc}") from exc

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or parts[0] == TMP_DIR:
            raise ValueError(f"invalid storage key: {key!r}")
        return self.root.joinpath(*parts)

    def _new_tmp(self) -> Path:
        return self.tmp / uuid.uuid4().hex

    # -- small objects -------------------------------------------------------------

    async def get(self, key: str) -> SmallObject | None:
        path = self._path(key)

        def read() -> SmallObject | None:
            try:
                with open(path, "rb") as f:
                    return SmallObject(f.read(), _etag(os.fstat(f.fileno())))
            except (FileNotFoundError, NotADirectoryError):
                return None

        return await self._run(read)

    async def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        path = self._path(key)

        def write() -> str:
            tmp = self._new_tmp()
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self._install(tmp, path, if_match=if_match, if_none_match=if_none_match)
                return _etag(os.stat(path))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

        return await self._run(write)

    def _install(
        self, tmp: Path, path: Path, *, if_match: str | None = None, if_none_match: bool = False
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
                    self._replace_if_match(tmp, path, if_match)
                else:
                    os.replace(tmp, path)
                _fsync_dir(path.parent)
                return
            except FileNotFoundError:
                if not tmp.exists():
                    raise
        raise StorageError(f"could not install {path}")

    @staticmethod
    def _replace_if_match(tmp: Path, path: Path, etag: str) -> None:
        # The lock on the parent directory serializes compare-and-swap between processes.
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = _etag(os.stat(path))
            except FileNotFoundError:
                raise PreconditionFailed(str(path)) from None
            if current != etag:
                raise PreconditionFailed(str(path))
            os.replace(tmp, path)
        finally:
            os.close(fd)

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)

        def stat() -> ObjectInfo | None:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            return ObjectInfo(key, st.st_size, st.st_mtime, _etag(st))

        return await self._run(stat)

    async def delete(self, key: str) -> None:
        path = self._path(key)

        def delete() -> None:
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            self._prune(path.parent)

        await self._run(delete)

    def _prune(self, directory: Path) -> None:
        """Remove directories left empty, up to the root."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    # -- listing -------------------------------------------------------------------

    async def list(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        directory, _, name_prefix = prefix.rpartition("/")
        base = self._path(directory) if directory else self.root
        stack: list[tuple[Path, str, list[str]]] = []

        def entries(path: Path) -> list[str]:
            """Names in key order: a directory sorts as `name/`, as its keys would."""
            try:
                with os.scandir(path) as it:
                    names = [e.name + "/" if e.is_dir() else e.name for e in it]
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted(names, reverse=True)  # popped from the end

        hidden = "" if directory else TMP_DIR + "/"
        top = [n for n in await self._run(entries, base) if n.startswith(name_prefix) and n != hidden]
        stack.append((base, directory + "/" if directory else "", top))
        while stack:
            path, key_prefix, names = stack[-1]
            if not names:
                stack.pop()
                continue
            name = names.pop()
            key = key_prefix + name
            is_dir = name.endswith("/")
            if key <= start_after and not (is_dir and start_after.startswith(key)):
                continue
            if is_dir:
                child = path / name[:-1]
                stack.append((child, key, await self._run(entries, child)))
                continue
            try:
                st = await self._run(os.stat, path / name)
            except FileNotFoundError:
                continue
            yield ObjectInfo(key, st.st_size, st.st_mtime, _etag(st))

    # -- large objects -------------------------------------------------------------

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self._path(key)
        f = await self._run(open, path, "rb")
        try:
            if start:
                f.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await self._run(f.read, size)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def begin_upload(self, key: str, part_size: int | None = None) -> FilesystemUpload:
        return FilesystemUpload(self, key, self._path(key), self._new_tmp())

    async def presign(self, key: str, expires: int) -> str | None:
        return None

    async def abort_stale_uploads(self, older_than: float) -> int:
        cutoff = time.time() - older_than

        def sweep() -> int:
            removed = 0
            with os.scandir(self.tmp) as it:
                for entry in it:
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat().st_mtime < cutoff:
                            os.unlink(entry.path)
                            removed += 1
            return removed

        return await self._run(sweep)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)


class FilesystemUpload:
    """A temporary file that `commit` fsyncs and renames to its key's path.

    The file is created by the first write (or by `commit`, for an empty blob), not when the
    upload begins: an upload session that never receives a byte holds no file descriptor."""

    def __init__(self, driver: FilesystemDriver, key: str, path: Path, tmp: Path) -> None:
        self._driver = driver
        self._key = key
        self._path = path
        self._tmp = tmp
        self._file: BinaryIO | None = None
        self._ended = False  # committed or aborted: no file may be created any more
        self._size = 0
        self._written_back = 0

    @property
    def key(self) -> str:
        return self._key

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes | bytearray) -> None:
        await self._driver._run(self._write, data)

    def _opened(self) -> BinaryIO:
        if self._file is None:
            if self._ended:
                raise StorageError(f"{self._key}: the upload has ended")
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed by commit or abort
        return self._file

    def _write(self, data: bytes | bytearray) -> None:
        f = self._opened()
        f.write(data)
        self._size += len(data)
        if self._size - self._written_back >= WRITEBACK_EVERY:
            # Start writeback now (without waiting for it), so that the fsync at commit only
            # waits for the tail instead of the whole blob.
            f.flush()
            os.posix_fadvise(f.fileno(), self._written_back,
                             self._size - self._written_back, os.POSIX_FADV_DONTNEED)
            self._written_back = self._size

    async def commit(self) -> None:
        def finish() -> None:
            f = self._opened()
            f.flush()
            os.fdatasync(f.fileno())
            f.close()
            self._ended = True
            self._driver._install(self._tmp, self._path)

        await self._driver._run(finish)

    async def abort(self) -> None:
        def discard() -> None:
            self._ended = True
            if self._file is not None:
                with contextlib.suppress(OSError):  # flushing what is buffered fails on a full disk
                    self._file.close()
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()

        await self._driver._run(discard)
