"""`FilesystemDriver`: keys as paths under the root, small objects, listing in key order,
reads, and the sweep of the temporary files that uploads and crashes leave."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ..base import ObjectInfo, PreconditionFailed, SmallObject, StorageError, check_key
from .files import file_etag, install
from .upload import FilesystemUpload

T = TypeVar("T")

TMP_DIR = "_tmp"
READ_CHUNK = 4 << 20  # per thread hop: each hop wakes a worker and the loop


LIST_PAGE = 1000  # keys a listing reads per call on the thread pool


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
        parts = check_key(key)
        if parts[0] == TMP_DIR:
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
                    return SmallObject(f.read(), file_etag(os.fstat(f.fileno())))
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
                install(tmp, path, if_match=if_match, if_none_match=if_none_match)
                return file_etag(os.stat(path))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

        return await self._run(write)

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)

        def stat() -> ObjectInfo | None:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            return ObjectInfo(key, st.st_size, st.st_mtime, file_etag(st))

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
        """Walked in pages of `LIST_PAGE` keys, each in one call on the thread pool (as S3
        answers a page per request): a listing of thousands of small folders (the catalog)
        costs a few thread hops, not two per key."""
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

        def start() -> None:
            hidden = "" if directory else TMP_DIR + "/"
            top = [n for n in entries(base) if n.startswith(name_prefix) and n != hidden]
            stack.append((base, directory + "/" if directory else "", top))

        def page() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            while stack and len(found) < LIST_PAGE:
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
                    stack.append((path / name[:-1], key, entries(path / name[:-1])))
                    continue
                try:
                    st = os.stat(path / name)
                except FileNotFoundError:
                    continue
                found.append(ObjectInfo(key, st.st_size, st.st_mtime, file_etag(st)))
            return found

        await self._run(start)
        while batch := await self._run(page):
            for info in batch:
                yield info

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
        return FilesystemUpload(self._run, key, self._path(key), self._new_tmp())

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
