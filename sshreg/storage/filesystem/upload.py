"""A large object streamed into a temporary file of the filesystem driver."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

from ..base import BaseUpload, StorageError
from .files import install

T = TypeVar("T")

WRITEBACK_EVERY = 32 << 20  # start writing a growing upload to disk every this many bytes


class Run(Protocol):
    """Runs blocking file I/O off the event loop (the driver's thread pool)."""

    def __call__(self, fn: Callable[..., T], *args: object) -> Awaitable[T]: ...


class FilesystemUpload(BaseUpload):
    """A temporary file that `commit` fsyncs and renames to its key's path.

    The file is created by the first write (or by `commit`, for an empty blob), not when the
    upload begins: an upload session that never receives a byte holds no file descriptor."""

    def __init__(self, run: Run, key: str, path: Path, tmp: Path) -> None:
        super().__init__(key)
        self._run = run
        self._path = path
        self._tmp = tmp
        self._file: BinaryIO | None = None
        self._ended = False  # committed or aborted: no file may be created any more
        self._written_back = 0

    async def write(self, data: bytes | bytearray) -> None:
        await self._run(self._write, data)

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
            install(self._tmp, self._path)

        await self._run(finish)

    async def abort(self) -> None:
        def discard() -> None:
            self._ended = True
            if self._file is not None:
                with contextlib.suppress(OSError):  # flushing what is buffered fails on a full disk
                    self._file.close()
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()

        await self._run(discard)
