"""The multipart writer of the S3 / R2 backend (design.md section 4).

- R2 accepts a multipart upload only if every part but the last has the same size and
  the last is no larger (checked at CompleteMultipartUpload), 5 MiB <= part <= 5 GiB and at
  most 10,000 parts. `S3Upload` therefore re-chunks whatever `write` receives into parts of
  exactly `part_size` bytes, carrying the remainder across calls. A blob is capped at
  10,000 x part_size; the 32 MiB default allows 312.5 GiB.
- Parts are uploaded concurrently (`part_concurrency`) while the next one fills; `write`
  awaits a free slot, so an upload holds a bounded number of part buffers and a slow bucket
  slows the client down instead of growing memory. All uploads of a driver share a budget
  of parts in flight (`parts_in_flight`), so ten concurrent pushes do not take ten times
  the memory of one.
- `commit` is CompleteMultipartUpload (or one PutObject for a blob smaller than a part): no
  server-side copy, no re-read. Publishing the blob under its digest is the store's small
  conditional write.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..base import BaseUpload, Overloaded, StorageError, TooLarge
from ..budget import BufferBudget
from .settings import MAX_PARTS

log = logging.getLogger("sshreg.storage.s3")

ABORT_WAIT_SECONDS = 120.0  # how long abort waits for in-flight parts before aborting anyway
ABORT_ANSWER_WAIT = 5.0  # how long `abort` holds its caller; the rest goes on in the background

# What a hook sees before CompleteMultipartUpload: the full object key and the upload id.
CompleteHook = Callable[[str, str], Awaitable[None] | None]


class UploadTooLarge(TooLarge):
    """The blob outgrew 10,000 parts of this upload's part size; retrying cannot help."""


class UploadDriver(Protocol):
    """What an upload uses of its driver (`S3Driver`)."""

    before_complete: CompleteHook | None
    parts_in_flight: asyncio.Semaphore
    buffers: BufferBudget

    def full_key(self, key: str) -> str: ...

    async def call(self, operation: str, **params: Any) -> dict[str, Any]: ...

    def background(self, coro: Awaitable[None]) -> asyncio.Task[None]: ...

    async def delete(self, key: str) -> None: ...


class S3Upload(BaseUpload):
    """A multipart upload fed by `write`, in parts of exactly `part_size` bytes.

    The multipart upload is created when the first part is full; a blob smaller than one
    part is sent by `commit` as one PutObject. Incoming bytes are copied once, into the
    part buffer, which boto3 gets as a bytearray: neither botocore nor urllib3 copies it
    again (a `bytes` body would be wrapped in BytesIO and sent in 16 KiB reads). A part
    being sent takes a slot of this upload (`concurrency`) and one of the driver's budget
    shared by all uploads (`parts_in_flight`); the buffer of a finished part is kept to be
    refilled in place. A new buffer is allocated only when no finished one is waiting,
    and filling stops while a full part waits for a slot, so an upload never holds more
    than `concurrency + 1` buffers (each allocated once: part buffers are mmapped, and
    faulting in 32 MiB per part costs CPU), and all uploads together no more than the
    shared budget plus one buffer each; a small blob costs only its own size.

    Buffer bytes are counted against the driver's `buffers` budget as they grow, and given
    back on commit or abort. An upload that needs a fresh buffer while the budget has no
    room for one waits for one of its own parts to come back instead; growth past the
    budget fails the upload with `Overloaded`.
    """

    def __init__(self, driver: UploadDriver, key: str, part_size: int, concurrency: int) -> None:
        super().__init__(key)
        self._driver = driver
        self._full_key = driver.full_key(key)
        self.part_size = part_size
        self.max_size = part_size * MAX_PARTS
        self._slots = asyncio.Semaphore(concurrency)
        self._buffer: bytearray | None = None
        self._filled = 0
        self._spare: list[bytearray] = []
        self._parts_sent = 0
        self._etags: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None
        self._upload_id: str | None = None
        self._state = "open"  # open -> committing -> committed; or -> aborted
        self._object_written = False  # a commit was attempted: the object may exist
        self._aborting: asyncio.Task[None] | None = None
        self._held = 0  # bytes of this upload's buffers counted in the driver's budget

    @property
    def upload_id(self) -> str | None:
        """The multipart upload id, from the first full part until commit or abort."""
        return self._upload_id

    @property
    def parts_sent(self) -> int:
        return self._parts_sent

    # -- writing ---------------------------------------------------------------------

    async def write(self, data: bytes | bytearray) -> None:
        """Take `data` into the current part. Returns once a part slot is free, so a slow
        bucket holds the writer back. `data` is copied: the caller may reuse it at once."""
        self._check_open()
        await self._raise_if_failed()
        if self._size + len(data) > self.max_size:
            self._fail(UploadTooLarge(
                f"{self._key}: blobs are limited to {self.max_size} bytes here "
                f"({MAX_PARTS} parts of {self.part_size})"))
            await self._raise_if_failed()
        try:
            with memoryview(data) as view, view.cast("B") as octets:
                await self._fill(octets)
        except asyncio.CancelledError:
            # The caller cannot know how much of `data` was taken: the upload is unusable.
            self._fail(StorageError(f"{self._key}: a write was cancelled"))
            raise

    async def _fill(self, octets: memoryview) -> None:
        offset = 0
        while offset < len(octets):
            if self._buffer is None:
                await self._await_spare_if_short()
                self._buffer = self._spare.pop() if self._spare else bytearray()
                self._filled = 0
            n = min(len(octets) - offset, self.part_size - self._filled)
            chunk = octets[offset:offset + n]
            if self._filled < len(self._buffer):  # a recycled, full-size buffer
                self._buffer[self._filled:self._filled + n] = chunk
            else:
                self._grow(n)
                self._buffer += chunk
            self._filled += n
            self._size += n
            offset += n
            if self._filled == self.part_size:
                part, self._buffer, self._filled = self._buffer, None, 0
                await self._send(part)

    async def _await_spare_if_short(self) -> None:
        """Before a fresh buffer: if the budget has no room for one and a part of this upload
        is in flight, wait for it to come back as a spare."""
        if not self._spare and self._tasks and not self._driver.buffers.has_room(self.part_size):
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)

    def _grow(self, n: int) -> None:
        try:
            self._driver.buffers.take(n, self._key)
        except Overloaded as exc:
            self._error = self._error or exc  # the registry logs the refusal
            raise
        self._held += n

    def _release_buffers(self) -> None:
        self._buffer = None
        self._spare.clear()
        self._driver.buffers.give(self._held)
        self._held = 0

    async def _send(self, part: bytearray) -> None:
        """Start uploading `part` as the next part, once one of the slots is free."""
        await self._slots.acquire()
        try:
            await self._driver.parts_in_flight.acquire()
        except BaseException:
            self._slots.release()
            raise
        try:
            await self._raise_if_failed()
            if self._parts_sent >= MAX_PARTS:
                self._fail(UploadTooLarge(f"{self._key}: more than {MAX_PARTS} parts"))
                await self._raise_if_failed()
            if self._upload_id is None:
                response = await self._driver.call("create_multipart_upload",
                                                   Key=self._full_key)
                self._upload_id = response["UploadId"]
        except BaseException as exc:
            self._release_slots()
            if isinstance(exc, StorageError):
                self._fail(exc)
            raise
        self._parts_sent += 1
        task = asyncio.get_running_loop().create_task(
            self._upload_part(self._upload_id, self._parts_sent, part))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload_part(self, upload_id: str, number: int, part: bytearray) -> None:
        """Runs as a task; a failure is kept for the next `write` or `commit` to raise."""
        try:
            response = await self._driver.call(
                "upload_part", Key=self._full_key, UploadId=upload_id, PartNumber=number,
                Body=part, ContentLength=len(part))
            self._etags[number] = response["ETag"]
            if len(part) == self.part_size and self._state == "open":
                self._spare.append(part)
        except asyncio.CancelledError:
            self._fail(StorageError(f"{self._key}: part {number} was cancelled"))
            raise
        except Exception as exc:
            self._fail(exc)
        finally:
            self._release_slots()

    def _release_slots(self) -> None:
        self._slots.release()
        self._driver.parts_in_flight.release()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            log.warning("upload to %(key)s failed: %(error)s", {"key": self._key, "error": str(exc)})

    def _check_open(self) -> None:
        if self._state != "open":
            raise StorageError(f"{self._key}: the upload is {self._state}")

    async def _raise_if_failed(self) -> None:
        """After a failure or an abort: abort (again, harmlessly) and raise StorageError."""
        if self._error is None and self._state != "aborted":
            return
        error = self._error
        await self._abort_quietly()
        if isinstance(error, StorageError):
            raise error
        if error is None:
            raise StorageError(f"{self._key}: the upload was aborted")
        raise StorageError(f"{self._key}: a part upload failed: {error}") from error

    async def _wait_parts(self, timeout: float | None = None) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    # -- finishing -------------------------------------------------------------------

    async def commit(self) -> None:
        """Publish the object: O(1) in its size apart from waiting for in-flight parts."""
        self._check_open()
        await self._raise_if_failed()
        self._state = "committing"
        try:
            if self._upload_id is None:
                await self._put_whole()
            else:
                await self._complete()
        except FileNotFoundError as exc:  # NoSuchUpload: aborted under us (a stale sweep)
            await self._abort_quietly()
            raise StorageError(f"{self._key}: the multipart upload is gone: {exc}") from exc
        except BaseException:
            if self._state != "aborted":  # else a failed part already had it aborted
                await self._abort_quietly()
            raise
        self._state = "committed"
        self._release_buffers()

    async def _put_whole(self) -> None:
        """The blob fits in one part: a single PutObject, no multipart upload at all."""
        body = self._buffer if self._buffer is not None else bytearray()
        del body[self._filled:]
        self._buffer = None
        self._object_written = True
        await self._driver.call("put_object", Key=self._full_key, Body=body,
                                ContentLength=len(body))

    async def _complete(self) -> None:
        if self._buffer is not None and self._filled:
            last, self._buffer = self._buffer, None
            del last[self._filled:]  # the last part, no larger than the others
            await self._send(last)
        await self._wait_parts()
        await self._raise_if_failed()
        if len(self._etags) != self._parts_sent:
            raise StorageError(f"{self._key}: {len(self._etags)} of {self._parts_sent} parts "
                               "were acknowledged")
        upload_id = self._upload_id
        assert upload_id is not None
        hook = self._driver.before_complete
        if hook is not None:
            result = hook(self._full_key, upload_id)
            if inspect.isawaitable(result):
                await result
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in sorted(self._etags.items())]
        self._object_written = True
        await self._driver.call("complete_multipart_upload", Key=self._full_key,
                                UploadId=upload_id, MultipartUpload={"Parts": parts})
        self._upload_id = None

    async def _abort_quietly(self) -> None:
        """Abort on a failure path: the failure is what the caller must see, not the abort's
        own trouble (an unreachable service, logged); the stale-upload sweep retries it."""
        with contextlib.suppress(StorageError):
            await self.abort()

    async def abort(self) -> None:
        """Discard everything; idempotent, and retried by a later call if the service failed.

        Holds the caller for at most ABORT_ANSWER_WAIT seconds: against a service that does
        not answer, the abort goes on in the background (each of its calls bounded by the
        timeouts) instead of keeping a failing request from its answer for every attempt
        of the abort as well; what cannot be aborted is left to the stale-upload sweep."""
        if self._state == "committed":
            return
        self._state = "aborted"
        self._release_buffers()
        if self._aborting is None or self._aborting.done():
            self._aborting = self._driver.background(self._abort())
        done, _ = await asyncio.wait({self._aborting}, timeout=ABORT_ANSWER_WAIT)
        if done:
            self._aborting.result()
        else:
            log.warning("aborting the upload to %(key)s goes on in the background",
                        {"key": self._key})

    async def _abort(self) -> None:
        # A part still in flight could land after the abort and leave the upload behind.
        await self._wait_parts(ABORT_WAIT_SECONDS)
        if self._upload_id is not None:
            with contextlib.suppress(FileNotFoundError):
                await self._driver.call("abort_multipart_upload", Key=self._full_key,
                                        UploadId=self._upload_id)
            self._upload_id = None
        if self._object_written:
            # A commit that failed late may have created the object anyway; nothing refers
            # to this fresh key, so removing it is always safe.
            await self._driver.delete(self._key)
            self._object_written = False
