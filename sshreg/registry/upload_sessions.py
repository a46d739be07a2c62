"""Blob upload sessions: the state a push carries across its POST, PATCH and PUT requests.

A session lives in the memory of the gateway that the client's tunnel reached (hash state
cannot be shared); a session id this process does not know is BLOB_UPLOAD_UNKNOWN and the
client restarts the blob. Sessions idle for longer than the timeout are aborted, which
also releases their storage upload (a temporary file or a multipart upload).

Sessions are counted per key and in total: a key cannot open more than its share, nor
the keys together more than the process can hold (each may come to hold a file or a part
buffer). A session is counted from the moment it is admitted until it is committed,
cancelled, aborted or swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from ..metrics import Metrics
from ..storage.base import Upload
from .errors import LIMIT_RETRY_AFTER, Code, RegistryError

log = logging.getLogger("sshreg.uploads")

_hash_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sshreg-hash")


class UploadSession:
    """One blob being pushed: its storage upload and the running digest of its bytes."""

    def __init__(self, name: str, upload: Upload, owner: str, algorithm: str = "sha256") -> None:
        self.id = str(uuid.uuid4())
        self.name = name
        self.owner = owner  # fingerprint of the key that started the upload
        self.upload = upload
        self.algorithm = algorithm
        self.hasher = hashlib.new(algorithm)
        self.size = 0
        self.touched = time.monotonic()
        self.lock = asyncio.Lock()  # one request at a time per session
        self._pending: asyncio.Future[object] | None = None
        self.closed = False

    def switch_algorithm(self, algorithm: str) -> None:
        """Hash with another algorithm; only before the first byte arrived."""
        assert self.size == 0
        self.algorithm = algorithm
        self.hasher = hashlib.new(algorithm)

    async def append(self, data: bytes | bytearray) -> None:
        """Hash and store `data` off the event loop, overlapping with the caller's next read.

        Returns once the previous batch is done, so at most two batches are in flight.
        The caller must not modify `data` afterwards.
        """
        await self.flush()
        loop = asyncio.get_running_loop()
        hashed = loop.run_in_executor(_hash_pool, self.hasher.update, data)
        self._pending = asyncio.gather(hashed, self.upload.write(data))
        self.size += len(data)

    async def flush(self) -> None:
        """Wait until every appended byte is hashed and handed to storage.

        A request cancelled meanwhile (its client went away) leaves the batch to finish, so
        that hash, size and stored bytes stay in step for a client that resumes; a batch that
        failed fails every later flush, so bytes storage did not take are never committed."""
        if self._pending is not None:
            await asyncio.shield(self._pending)
            self._pending = None

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()

    @contextlib.asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        """Serve one request on this session: one at a time, kept from the idle sweep
        while it runs, and idle from the moment it ends (not from when it began: a long
        PATCH is activity)."""
        async with self.lock:
            try:
                yield
            finally:
                self.touched = time.monotonic()

    async def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending
        try:
            await self.upload.abort()
        except Exception:
            log.exception("aborting upload %(upload)s failed", {"upload": self.id})


class UploadSessions:
    """The live sessions of this gateway, with an expiry sweep for abandoned ones."""

    def __init__(self, idle_timeout: float, metrics: Metrics | None = None, *,
                 max_per_key: int = 100, max_total: int = 1000) -> None:
        self.idle_timeout = idle_timeout
        self.metrics = metrics or Metrics()
        self.max_per_key = max_per_key
        self.max_total = max_total
        self._sessions: dict[str, UploadSession] = {}
        self._per_key: Counter[str] = Counter()  # admitted sessions, live or being opened
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def admitted(self) -> int:
        """Sessions counted against the limits: the live ones and those being opened."""
        return self._per_key.total()

    def admitted_for(self, owner: str) -> int:
        return self._per_key[owner]

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def admit(self, owner: str) -> None:
        """Count a session `owner` is about to open, or refuse it with 429; `add` the session
        (or `withdraw` the admission if opening it failed) afterwards."""
        if self._per_key[owner] >= self.max_per_key:
            limit = f"this key has {self.max_per_key} upload sessions open"
        elif self.admitted >= self.max_total:
            limit = f"the registry has {self.max_total} upload sessions open"
        else:
            self._per_key[owner] += 1
            return
        raise RegistryError(Code.TOOMANYREQUESTS, f"{limit}; finish or cancel some first",
                            headers={"Retry-After": LIMIT_RETRY_AFTER})

    def withdraw(self, owner: str) -> None:
        """Give back an admission whose session was never added."""
        self._per_key[owner] -= 1
        if self._per_key[owner] <= 0:
            del self._per_key[owner]

    def add(self, session: UploadSession) -> None:
        """Make an admitted session reachable by its id."""
        self._sessions[session.id] = session
        self._count()

    def _forget(self, session: UploadSession) -> None:
        if self._sessions.pop(session.id, None) is not None:
            self.withdraw(session.owner)
        self._count()

    def _count(self) -> None:
        self.metrics.set("sshreg_uploads_active", len(self._sessions))

    def get(self, session_id: str, name: str, owner: str) -> UploadSession | None:
        session = self._sessions.get(session_id)
        if session is None or session.name != name or session.owner != owner:
            return None
        session.touched = time.monotonic()
        return session

    async def discard(self, session: UploadSession) -> None:
        """Forget a session and abort its storage upload."""
        self._forget(session)
        await session.abort()

    def finish(self, session: UploadSession) -> None:
        """Forget a session whose upload is being committed: no request reaches it any more,
        and `abort` still discards its upload should the commit fail."""
        self._forget(session)

    async def sweep(self) -> int:
        cutoff = time.monotonic() - self.idle_timeout
        stale = [s for s in self._sessions.values() if s.touched < cutoff and not s.lock.locked()]
        for session in stale:
            log.info("aborting upload %(upload)s to %(repository)s: idle for %(seconds).0fs",
                     {"upload": session.id, "repository": session.name,
                      "seconds": self.idle_timeout})
            await self.discard(session)
        return len(stale)

    async def _sweep_forever(self) -> None:
        interval = max(1.0, min(60.0, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("upload sweep failed")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for session in list(self._sessions.values()):
            await self.discard(session)
