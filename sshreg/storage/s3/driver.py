"""The S3 / Cloudflare R2 driver: small objects, listing, reads, presigned URLs and the
stale-upload sweep over `S3Client`'s calls; large objects stream in through `S3Upload`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from ..base import ObjectInfo, PreconditionFailed, SmallObject, check_key
from ..budget import BufferBudget
from .client import S3Client, S3StorageError
from .settings import S3Settings, check_part_size
from .upload import CompleteHook, S3Upload

log = logging.getLogger("sshreg.storage.s3")

READ_CHUNK = 1 << 20
LIST_PAGE = 1000
MAX_LISTING_PAGES = 1_000_000  # a bound on any listing loop, should a server never end one
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week


class S3Driver(S3Client):
    """Objects in one bucket under one key prefix; see `base.Driver` for the contract.

    `before_complete`, if given, is called with (full key, upload id) just before every
    CompleteMultipartUpload; the tests use it to check the parts the server received.
    """

    def __init__(self, settings: S3Settings, *, before_complete: CompleteHook | None = None
                 ) -> None:
        super().__init__(settings)
        self.before_complete = before_complete
        self._prefix = settings.prefix
        # Every upload of this driver shares this budget of parts being sent, so that many
        # concurrent pushes slow each other down instead of multiplying the memory.
        self.parts_in_flight = asyncio.Semaphore(settings.max_parts_in_flight)
        self.buffers = BufferBudget(settings.buffer_budget)
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, *, before_complete: CompleteHook | None = None,
                 **overrides: Any) -> S3Driver:
        """A driver for `s3://BUCKET[/PREFIX]`; keyword arguments override `S3Settings`."""
        return cls(S3Settings.from_url(url, **overrides), before_complete=before_complete)

    def __repr__(self) -> str:
        return f"S3Driver('s3://{self.settings.bucket}/{self._prefix}', {self.endpoint_url!r})"

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    def full_key(self, key: str) -> str:
        """The bucket key of a storage key: the configured prefix plus the key."""
        check_key(key)
        return self._prefix + key

    # -- small objects -------------------------------------------------------------

    async def get(self, key: str) -> SmallObject | None:
        try:
            response = await self.call("get_object", Key=self.full_key(key))
        except FileNotFoundError:
            return None
        body = response["Body"]
        try:
            data = await self.run(body.read)
        finally:
            body.close()
        return SmallObject(data, response["ETag"])

    async def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        if if_match is not None and if_none_match:
            raise ValueError("if_match and if_none_match exclude each other")
        params: dict[str, Any] = {"Key": self.full_key(key), "Body": data,
                                  "ContentLength": len(data)}
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            params["IfMatch"] = if_match
        try:
            response = await self.write("put_object", **params)
        except FileNotFoundError:  # if_match on a missing key, as some servers answer it
            raise PreconditionFailed(key) from None
        return response["ETag"]

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            response = await self.call("head_object", Key=self.full_key(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, response["ContentLength"], response["LastModified"].timestamp(),
                          response["ETag"])

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self.write("delete_object", Key=self.full_key(key))

    async def list(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        params: dict[str, Any] = {"Prefix": self._prefix + prefix, "MaxKeys": LIST_PAGE}
        if start_after:
            params["StartAfter"] = self._prefix + start_after
        cut = len(self._prefix)
        tokens: set[str] = set()
        for _ in range(MAX_LISTING_PAGES):
            page = await self.call("list_objects_v2", **params)
            for obj in page.get("Contents", ()):
                yield ObjectInfo(obj["Key"][cut:], obj["Size"], obj["LastModified"].timestamp(),
                                 obj["ETag"])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token or token in tokens:
                raise S3StorageError("s3 list_objects_v2: the listing does not advance")
            tokens.add(token)
            params["ContinuationToken"] = token
        raise S3StorageError("s3 list_objects_v2: too many pages")

    # -- large objects -------------------------------------------------------------

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        full = self.full_key(key)
        if end is not None and end <= start:
            if await self.stat(key) is None:
                raise FileNotFoundError(key)
            return
        params: dict[str, Any] = {"Key": full}
        if start or end is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = await self.call("get_object", **params)
        except S3StorageError as exc:
            if exc.status == 416:  # starts at or past the end, like reading past EOF
                return
            raise
        body = response["Body"]
        try:
            while True:
                chunk = await self.run(body.read, READ_CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def begin_upload(self, key: str, part_size: int | None = None) -> S3Upload:
        size = part_size or self.settings.part_size
        check_part_size(size)
        return S3Upload(self, key, size, self.settings.part_concurrency)

    async def presign(self, key: str, expires: int) -> str | None:
        seconds = max(1, min(int(expires), MAX_PRESIGN_SECONDS))
        params = {"Bucket": self.settings.bucket, "Key": self.full_key(key)}
        return await self.run(self._client.generate_presigned_url, "get_object",
                              Params=params, ExpiresIn=seconds)

    async def abort_stale_uploads(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix initiated more than `older_than` s ago.

        Page by page, so memory stays bounded. A server that pages without a NextKeyMarker
        (SeaweedFS 4.48 does, and its second page comes back empty) is listed again from the
        start after each page that had something to abort: aborted uploads are gone then.
        """
        cutoff = time.time() - older_than
        params: dict[str, Any] = {"Prefix": self._prefix, "MaxUploads": LIST_PAGE}
        aborted = 0
        seen: set[tuple[str, str]] = set()
        for _ in range(MAX_LISTING_PAGES):
            page = await self.call("list_multipart_uploads", **params)
            stale = [u for u in page.get("Uploads", ()) if u["Initiated"].timestamp() < cutoff]
            for upload in stale:
                if await self._abort_upload(upload["Key"], upload["UploadId"]):
                    aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            markers = (page.get("NextKeyMarker") or "", page.get("NextUploadIdMarker") or "")
            if markers[0] and markers not in seen:
                seen.add(markers)
                params.update(KeyMarker=markers[0], UploadIdMarker=markers[1])
            elif stale:
                params.pop("KeyMarker", None)
                params.pop("UploadIdMarker", None)
            else:
                log.warning("listing multipart uploads does not advance; stopped after "
                            "aborting %(uploads)d", {"uploads": aborted})
                return aborted
        raise S3StorageError("s3 list_multipart_uploads: too many pages")

    async def _abort_upload(self, key: str, upload_id: str) -> bool:
        try:
            await self.call("abort_multipart_upload", Key=key, UploadId=upload_id)
        except FileNotFoundError:
            return False
        log.info("aborted stale multipart upload %(upload)s of %(key)s",
                 {"upload": upload_id, "key": key})
        return True

    def background(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        """Run cleanup that must not hold up a request (an abort) as a task of this driver."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("cleanup in the background failed: %(error)s",
                        {"error": str(task.exception())})

    async def close(self) -> None:
        """Finish running calls (bounded by boto's timeouts) without blocking the loop;
        aborts still going on in the background are left to the stale-upload sweep."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await super().close()
