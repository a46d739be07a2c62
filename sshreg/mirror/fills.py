"""Copying a blob from upstream into storage while clients read it, once per box.

One process fills a digest at a time on this box: it holds an exclusive `flock` on
`SPOOL/<digest>.lock`, streams the upstream's bytes into a storage upload and into the spool
file `SPOOL/<digest>.data`, hashing as they pass, and publishes the blob only if the digest
matches. Every client pulling that blob meanwhile, through any tunnel of any worker, reads
the spool file as it grows (`FillReader`): one upstream fetch, whatever the number of pulls.
The fill runs as its own task, so a client that goes away wastes nothing others wait on.

The last byte of a blob is held back from readers until the digest is verified, so a client
never receives a whole body that does not match: a bad upstream ends every pull with a cut
connection, and nothing is stored. Gateways on other boxes may fill the same blob at the
same time; the store's publish step keeps one copy (`BlobStore.commit`).

`SPOOL/<digest>.state` says how the fill stands, written whole by rename:
`{"id", "state": "filling"|"done"|"failed", "size", "error"}`; `id` tells a reader that the
fill it followed was replaced by a new attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import aiohttp

from ..references import Digest
from ..storage.base import Upload
from ..store.blobs import BlobRecord
from ..store.registry_store import RegistryStore
from .names import Mirrored
from .upstream import Upstream, UpstreamMissing, UpstreamUnavailable

if TYPE_CHECKING:
    from hashlib import _Hash as Hasher

log = logging.getLogger("sshreg.mirror")

BATCH = 4 << 20  # bytes hashed and written per step
READ_CHUNK = 1 << 20
POLL = 0.02  # seconds between looks at a fill's progress
KEEP_SPOOL = 60.0  # seconds a finished fill's files stay, for readers about to open them


class FillFailed(Exception):
    """The fill a reader followed ended without a verified blob."""


@dataclass(frozen=True)
class FillState:
    id: str
    state: str  # filling, done, failed, missing (the upstream has no such blob)
    size: int | None = None
    error: str = ""


class SpoolFiles:
    """The three files of one digest's fill."""

    def __init__(self, spool: Path, digest: Digest) -> None:
        stem = spool / f"{digest.algorithm}-{digest.hex}"
        self.data = stem.with_suffix(".data")
        self.state = stem.with_suffix(".state")
        self.lock = stem.with_suffix(".lock")

    def read_state(self) -> FillState | None:
        try:
            doc = json.loads(self.state.read_bytes())
            return FillState(doc["id"], doc["state"], doc.get("size"), doc.get("error", ""))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def write_state(self, state: FillState) -> None:
        temporary = self.state.with_suffix(f".{state.id}.tmp")
        temporary.write_text(json.dumps(state.__dict__))
        temporary.replace(self.state)

    def try_lock(self, exclusive: bool = True) -> int | None:
        """An fd holding the lock, or None if another holder has it."""
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def filler_alive(self) -> bool:
        """Whether some process holds the fill lock."""
        fd = self.try_lock(exclusive=False)
        if fd is None:
            return True
        os.close(fd)
        return False

    def remove(self, only_if: str) -> None:
        """Delete the files of fill `only_if`, unless a newer fill owns them now."""
        state = self.read_state()
        if state is not None and state.id != only_if:
            return
        for path in (self.data, self.state):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@contextlib.asynccontextmanager
async def box_lock(path: Path, timeout: float) -> AsyncIterator[bool]:
    """An exclusive `flock` on `path` among the processes of this box, waited for (polling)
    up to `timeout`; yields whether it was taken (on a timeout the caller goes on without)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    taken = False
                    break
                await asyncio.sleep(POLL)
        yield taken
    finally:
        os.close(fd)  # releases the lock


class Fills:
    """The fills this process runs, and joining any fill on this box."""

    def __init__(self, store: RegistryStore, spool: Path,
                 on_bytes: Callable[[Mirrored, int], None] = lambda target, n: None,
                 on_error: Callable[[Mirrored, Exception], None] = lambda target, e: None
                 ) -> None:
        self.store = store
        self.spool = spool
        self.on_bytes = on_bytes  # upstream bytes received, for the mirror's numbers
        self.on_error = on_error  # a fill that failed
        self._tasks: dict[Digest, asyncio.Task[None]] = {}

    def sweep(self) -> int:
        """Remove the files of fills that nobody runs any more (a process stopped before
        it cleaned up); their lock files stay, as another process may be opening one."""
        removed = 0
        for lock in self.spool.glob("*.lock"):
            files = SpoolFiles(self.spool, Digest.parse(lock.stem.replace("-", ":", 1)))
            fd = files.try_lock()
            if fd is None:
                continue  # a fill is running
            try:
                for path in (files.data, files.state):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
            finally:
                os.close(fd)
        return removed

    async def open(self, target: Mirrored, upstream: Upstream, digest: Digest,
                   idle_timeout: float) -> BlobRecord | FillReader:
        """The stored blob if it is there by now, or a reader of a running fill of it
        (started here if nobody on this box is filling it)."""
        self.spool.mkdir(parents=True, exist_ok=True)
        files = SpoolFiles(self.spool, digest)
        deadline = time.monotonic() + idle_timeout
        while time.monotonic() < deadline:
            if digest not in self._tasks:
                fd = await asyncio.to_thread(files.try_lock)
                if fd is not None:
                    record = await self._stored(target, digest)
                    if record is not None:
                        os.close(fd)
                        return record
                    self._start(target, upstream, digest, files, fd)
            state = files.read_state()
            if state is not None and state.state == "done":
                record = await self._stored(target, digest)
                if record is not None:
                    return record
            if state is not None and state.state == "filling":
                reader = FillReader(files, state.id, idle_timeout)
                if reader.open():
                    return reader
            await asyncio.sleep(POLL)
        raise FillFailed(f"no fill of {digest} started within {idle_timeout:.0f}s")

    async def _stored(self, target: Mirrored, digest: Digest) -> BlobRecord | None:
        record = await self.store.blobs.get(digest)
        if record is not None:
            await self.store.repositories.link_blob(target.name, digest)
        return record

    def _start(self, target: Mirrored, upstream: Upstream, digest: Digest, files: SpoolFiles,
               lock: int) -> None:
        fill_id = uuid.uuid4().hex
        with contextlib.suppress(FileNotFoundError):
            files.data.unlink()  # readers of an earlier attempt keep their open file
        files.data.touch(0o600)
        files.write_state(FillState(fill_id, "filling"))
        task = asyncio.create_task(self._fill(target, upstream, digest, files, fill_id, lock))
        self._tasks[digest] = task
        task.add_done_callback(lambda _: self._tasks.pop(digest, None))

    async def _fill(self, target: Mirrored, upstream: Upstream, digest: Digest,
                    files: SpoolFiles, fill_id: str, lock: int) -> None:
        outcome = FillState(fill_id, "failed", error="the fill was stopped")
        try:
            size = await self._copy(target, upstream, digest, files, fill_id)
            outcome = FillState(fill_id, "done", size)
            log.info("mirror %(mirror)s: %(repository)s@%(digest)s filled (%(bytes)d bytes)",
                     {"mirror": target.mirror.prefix, "repository": target.name,
                      "digest": str(digest), "bytes": size})
        except UpstreamMissing as exc:
            outcome = FillState(fill_id, "missing", error=str(exc))
        except (UpstreamUnavailable, FillFailed) as exc:
            outcome = FillState(fill_id, "failed", error=str(exc))
            self.on_error(target, exc)
            log.warning("mirror %(mirror)s: fill of %(repository)s@%(digest)s failed: %(error)s",
                        {"mirror": target.mirror.prefix, "repository": target.name,
                         "digest": str(digest), "error": str(exc)})
        except Exception as exc:
            outcome = FillState(fill_id, "failed", error=f"storage: {exc}")
            self.on_error(target, exc)
            log.exception("mirror %(mirror)s: fill of %(repository)s@%(digest)s failed",
                          {"mirror": target.mirror.prefix, "repository": target.name,
                           "digest": str(digest)})
        finally:
            files.write_state(outcome)
            os.close(lock)
            asyncio.get_running_loop().call_later(KEEP_SPOOL, files.remove, fill_id)

    async def _copy(self, target: Mirrored, upstream: Upstream, digest: Digest,
                    files: SpoolFiles, fill_id: str) -> int:
        """Upstream bytes into storage and the spool; the size once the blob is published."""
        hasher = digest.hasher()
        upload = await self.store.blobs.begin_upload()
        try:
            with open(files.data, "ab") as spool:
                async with upstream.blob(target.remote, str(digest)) as response:
                    files.write_state(FillState(fill_id, "filling", response.content_length))
                    received = await self._receive(target, response, hasher, spool, upload)
                if response.content_length is not None and received != response.content_length:
                    raise FillFailed(f"upstream sent {received} of {response.content_length} "
                                     "bytes")
                if hasher.hexdigest() != digest.hex:
                    raise FillFailed(f"upstream bytes do not match {digest}: nothing stored")
            await self.store.blobs.commit(digest, upload)
        except BaseException:
            await upload.abort()
            raise
        await self.store.repositories.link_blob(target.name, digest)
        return received

    async def _receive(self, target: Mirrored, response: aiohttp.ClientResponse,
                       hasher: Hasher, spool: BinaryIO, upload: Upload) -> int:
        received = 0
        batch = bytearray()
        try:
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                batch += chunk
                if len(batch) >= BATCH:
                    received += await self._take(target, bytes(batch), hasher, spool, upload)
                    batch.clear()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamUnavailable(f"reading the blob from upstream: {exc!r}") from None
        if batch:
            received += await self._take(target, bytes(batch), hasher, spool, upload)
        return received

    async def _take(self, target: Mirrored, data: bytes, hasher: Hasher, spool: BinaryIO,
                    upload: Upload) -> int:
        def hash_and_spool() -> None:
            hasher.update(data)
            spool.write(data)
            spool.flush()

        await asyncio.to_thread(hash_and_spool)
        await upload.write(data)
        self.on_bytes(target, len(data))
        return len(data)

    async def close(self) -> None:
        """Stop the fills of this process (their readers fail; nothing is published)."""
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task


class FillReader:
    """The bytes of one fill as they arrive in its spool file, the last one only once the
    fill has verified and published the blob."""

    def __init__(self, files: SpoolFiles, fill_id: str, idle_timeout: float) -> None:
        self.files = files
        self.fill_id = fill_id
        self.idle_timeout = idle_timeout
        self._fd: int | None = None

    def open(self) -> bool:
        """Open the spool file of this fill; False if it is gone or belongs to another fill."""
        try:
            self._fd = os.open(self.files.data, os.O_RDONLY)
        except FileNotFoundError:
            return False
        state = self.files.read_state()
        if state is None or state.id != self.fill_id:
            self.close()
            return False
        return True

    async def size(self) -> int | None:
        """The blob's size once the upstream said it (None: it sent no length)."""
        deadline = time.monotonic() + self.idle_timeout
        while time.monotonic() < deadline:
            state = self._state()
            if state.size is not None or state.state == "done":
                return state.size
            if state.state == "failed":
                raise FillFailed(state.error)
            await asyncio.sleep(POLL)
        raise FillFailed(f"the upstream did not answer within {self.idle_timeout:.0f}s")

    def _state(self) -> FillState:
        state = self.files.read_state()
        if state is None or state.id != self.fill_id:
            raise FillFailed("the fill was replaced by another attempt")
        if state.state == "missing":
            raise UpstreamMissing(state.error)
        if state.state == "filling" and not self.files.filler_alive():
            raise FillFailed("the process filling the blob went away")
        return state

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._fd is not None
        offset = 0
        moved = time.monotonic()
        try:
            while True:
                state = self._state()
                available = os.fstat(self._fd).st_size
                if state.state == "done":
                    limit = available
                elif state.state == "failed":
                    raise FillFailed(state.error)
                else:  # the last byte waits for the digest check
                    limit = min(available, (state.size or available) - 1)
                if offset < limit:
                    data = await asyncio.to_thread(os.pread, self._fd,
                                                   min(READ_CHUNK, limit - offset), offset)
                    offset += len(data)
                    moved = time.monotonic()
                    yield data
                    continue
                if state.state == "done":
                    return
                if time.monotonic() - moved > self.idle_timeout:
                    raise FillFailed(f"the fill moved nothing for {self.idle_timeout:.0f}s")
                await asyncio.sleep(POLL)
        finally:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
