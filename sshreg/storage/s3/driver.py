"""The S3 / Cloudflare R2 backend, on boto3.

Why it looks the way it does (design.md section 4):

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
  server-side copy, no re-read. Publishing the blob under its digest is `store.py`'s small
  conditional write.
- boto3 >= 1.36 adds CRC checksums and `aws-chunked` bodies that R2 has rejected, so
  checksums are `when_required` and every upload passes an explicit ContentLength.
- With `when_required` and no Content-MD5, botocore SHA-256-hashes every request body to
  sign it, over https too (its unsigned-payload shortcut needs a checksum header). That is
  a full extra pass over every byte pushed. `sign_payload=None` (the default) sends
  UNSIGNED-PAYLOAD over https, where TLS already protects the body, and to loopback
  endpoints; it signs bodies only over plain http to another host.
- boto3 blocks: every call runs in one bounded thread pool, through one shared client.
- R2 allows one write per second per key and answers more with 429. Small-object writes
  (`put`, `delete`) go through a second client without botocore's retries, which are too
  quick for that, and back off for a second or more themselves (`s3_backoff.py`) for at
  most `write_budget` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.loaders
import botocore.session
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .base import ObjectInfo, Overloaded, PreconditionFailed, SmallObject, StorageError, TooLarge
from .budget import BufferBudget
from .s3_backoff import retry_write

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = (5 << 30) - (5 << 20)  # R2: "5 MiB less than 5 GiB" per request
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 32 << 20  # 10,000 parts of 32 MiB: blobs up to 312.5 GiB
DEFAULT_PART_CONCURRENCY = 4
READ_CHUNK = 1 << 20
LIST_PAGE = 1000
MAX_LISTING_PAGES = 1_000_000  # a bound on any listing loop, should a server never end one
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week
ABORT_WAIT_SECONDS = 120.0  # how long abort waits for in-flight parts before aborting anyway
ABORT_ANSWER_WAIT = 5.0  # how long `abort` holds its caller; the rest goes on in the background

# What a hook sees before CompleteMultipartUpload: the full object key and the upload id.
CompleteHook = Callable[[str, str], Awaitable[None] | None]

_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload"})
_TRANSPORT_ERRORS = (BotoCoreError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


class S3StorageError(StorageError):
    """A failed S3 call, with the service's error code and HTTP status when there was one."""

    def __init__(self, message: str, code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class UploadTooLarge(TooLarge):
    """The blob outgrew 10,000 parts of this upload's part size; retrying cannot help."""


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach the bucket. Unset credentials and endpoint come from boto3's
    standard sources: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL(_S3),
    AWS_PROFILE and the shared config files."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "auto"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    profile: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    part_concurrency: int = DEFAULT_PART_CONCURRENCY
    parts_in_flight: int = 0  # 0: 2 x part_concurrency; all uploads of this driver together
    buffer_budget: int = 512 << 20  # bytes in part buffers, all uploads of this driver together
    threads: int = 0  # 0: 2 x part_concurrency + 8
    addressing_style: str = "path"  # R2 takes both; SeaweedFS and MinIO need path
    sign_payload: bool | None = None  # None: only over plain http to a non-loopback host
    # boto's "standard" retries (5xx, throttling, connection errors, timeouts) and timeouts
    # (read: any wait for the service, sending included). A service that stops answering
    # fails a call after `call_deadline` (78 s by default), not after minutes.
    max_attempts: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    # How long one write of a small object (a tag, a link, the gc lease) may wait out R2's
    # 429 (one write per second per key) before the request fails with 503.
    write_budget: float = 30.0

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise ValueError(f"invalid bucket name: {self.bucket!r}")
        check_part_size(self.part_size)
        if self.part_concurrency < 1:
            raise ValueError("part_concurrency must be at least 1")
        if (self.max_attempts < 1 or self.connect_timeout <= 0 or self.read_timeout <= 0
                or self.write_budget < 0):
            raise ValueError("max_attempts must be at least 1, timeouts positive and "
                             "write_budget not negative")
        if self.parts_in_flight < 0:
            raise ValueError("parts_in_flight must not be negative")
        if self.threads < 0:
            raise ValueError("threads must not be negative")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        if self.addressing_style not in ("path", "virtual", "auto"):
            raise ValueError(f"invalid addressing_style: {self.addressing_style!r}")
        object.__setattr__(self, "prefix", _normalize_prefix(self.prefix))

    @property
    def call_deadline(self) -> float:
        """The longest one call can take against a service that does not answer: every
        attempt waits out both timeouts, with botocore's backoff (up to 1, 2, 4 ... s, at most
        20 s) between attempts."""
        backoff = sum(min(2.0 ** i, 20.0) for i in range(self.max_attempts - 1))
        return self.max_attempts * (self.connect_timeout + self.read_timeout) + backoff

    @property
    def pool_threads(self) -> int:
        return self.threads or 2 * self.part_concurrency + 8

    @property
    def max_parts_in_flight(self) -> int:
        return self.parts_in_flight or 2 * self.part_concurrency

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> S3Settings:
        """Settings for `s3://BUCKET[/PREFIX]`; overrides that are None or "" are ignored."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"not an s3://BUCKET[/PREFIX] URL: {url!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown S3 settings: {', '.join(sorted(unknown))}")
        given = {k: v for k, v in overrides.items() if v is not None and v != ""}
        return cls(bucket=parts.netloc, prefix=parts.path, **given)


def _no_expect_for_empty_body(request: Any, **_: Any) -> None:
    """botocore asks `Expect: 100-continue` on every PutObject; for an empty body SeaweedFS
    then answers twice, and the next request on that connection waits out the read
    timeout (60 s). Nothing is gained by the handshake without a body: drop it."""
    if request.headers.get("Content-Length") in (b"0", "0"):
        request.headers.pop("Expect", None)


def check_part_size(part_size: int) -> None:
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(f"part size {part_size} is outside R2's and S3's limits "
                         f"({MIN_PART_SIZE} to {MAX_PART_SIZE} bytes)")


def _normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise ValueError(f"invalid key prefix: {prefix!r}")
    return prefix + "/" if prefix else ""


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _should_sign_payload(settings: S3Settings, endpoint: str) -> bool:
    if settings.sign_payload is not None:
        return settings.sign_payload
    return not endpoint.startswith("https://") and not _is_loopback(endpoint)


def _client_config(settings: S3Settings, sign_payload: bool, attempts: int) -> Config:
    return Config(
        region_name=settings.region,
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "total_max_attempts": attempts},
        # One connection per worker thread, plus room for streamed GETs, which keep their
        # connection between reads while their thread serves other calls.
        max_pool_connections=2 * settings.pool_threads,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": settings.addressing_style,
            "payload_signing_enabled": sign_payload},
    )


@functools.cache
def _shared_loader() -> Any:
    return botocore.loaders.create_loader()


def _botocore_session() -> botocore.session.Session:
    """A fresh session (credentials are resolved per session) that shares the process's
    parsed service models: loading them costs each new client about 10 MiB and 0.1 s."""
    session = botocore.session.get_session()
    session.register_component("data_loader", _shared_loader())
    return session


def _translate(exc: ClientError, operation: str, key: str) -> Exception:
    """The storage-contract exception for an error answer of the service."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _CONFLICT_CODES or status == 412:
        return PreconditionFailed(f"{key}: {code or status}")
    if code in _MISSING_CODES or (status == 404 and not code.startswith("NoSuchBucket")):
        return FileNotFoundError(f"{key}: {code or status}")
    message = error.get("Message") or ""
    return S3StorageError(f"s3 {operation} {key}: {code or status} {message}".rstrip(),
                          code, status)


class S3Driver:
    """Objects in one bucket under one key prefix; see `base.Driver` for the contract.

    `before_complete`, if given, is called with (full key, upload id) just before every
    CompleteMultipartUpload; the tests use it to check the parts the server received.
    """

    def __init__(self, settings: S3Settings, *, before_complete: CompleteHook | None = None
                 ) -> None:
        self.settings = settings
        self.before_complete = before_complete
        self._prefix = settings.prefix
        self._client = self._make_client(sign_payload=bool(settings.sign_payload))
        self.endpoint_url: str = self._client.meta.endpoint_url
        # The endpoint may come from the environment or a profile, so it is known only now.
        self.signs_payload = _should_sign_payload(settings, self.endpoint_url)
        if self.signs_payload != bool(settings.sign_payload):
            self._client.close()
            self._client = self._make_client(sign_payload=self.signs_payload)
        # Small-object writes: no botocore retries, `retry_write` backs off instead.
        self._writer = self._make_client(sign_payload=self.signs_payload, attempts=1)
        # Every upload of this driver shares this budget of parts being sent, so that many
        # concurrent pushes slow each other down instead of multiplying the memory.
        self.parts_in_flight = asyncio.Semaphore(settings.max_parts_in_flight)
        self.buffers = BufferBudget(settings.buffer_budget)
        self._pool = ThreadPoolExecutor(max_workers=settings.pool_threads,
                                        thread_name_prefix="sshreg-s3")
        self._background: set[asyncio.Task[None]] = set()

    def _make_client(self, *, sign_payload: bool, attempts: int | None = None) -> Any:
        settings = self.settings
        credentials: dict[str, str] = {}
        if settings.access_key_id is not None and settings.secret_access_key is not None:
            credentials = {"aws_access_key_id": settings.access_key_id,
                           "aws_secret_access_key": settings.secret_access_key}
        session = boto3.session.Session(botocore_session=_botocore_session(),
                                        profile_name=settings.profile)
        client = session.client("s3", endpoint_url=settings.endpoint_url,
                                config=_client_config(settings, sign_payload,
                                                      attempts or settings.max_attempts),
                                **credentials)
        client.meta.events.register("before-send.s3.PutObject", _no_expect_for_empty_body)
        return client

    @classmethod
    def from_url(cls, url: str, *, before_complete: CompleteHook | None = None,
                 **overrides: Any) -> S3Driver:
        """A driver for `s3://BUCKET[/PREFIX]`; keyword arguments override `S3Settings`."""
        return cls(S3Settings.from_url(url, **overrides), before_complete=before_complete)

    def __repr__(self) -> str:
        return f"S3Driver('s3://{self.settings.bucket}/{self._prefix}', {self.endpoint_url!r})"

    @property
    def client(self) -> Any:
        """The shared boto3 client (blocking: call it only from `run`'s thread pool)."""
        return self._client

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    def full_key(self, key: str) -> str:
        """The bucket key of a storage key: the configured prefix plus the key."""
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid storage key: {key!r}")
        return self._prefix + key

    # -- calling boto3 -------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking boto3 call in the pool, with its errors in storage terms."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except ClientError as exc:
            raise _translate(exc, getattr(fn, "__name__", "call"), kwargs.get("Key", "")
                             ) from exc
        except _TRANSPORT_ERRORS as exc:
            raise S3StorageError(f"s3 {getattr(fn, '__name__', 'call')}: {exc}") from exc

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One S3 operation by its boto3 name, with Bucket filled in."""
        method = getattr(self._client, operation)
        return await self.run(method, Bucket=self.settings.bucket, **params)

    async def write(self, operation: str, **params: Any) -> dict[str, Any]:
        """A write of one small object, retried as `s3_backoff.retry_write` says."""
        method = getattr(self._writer, operation)
        return await retry_write(lambda: self.run(method, Bucket=self.settings.bucket, **params),
                                 what=f"s3 {operation} {params.get('Key', '')}",
                                 budget=self.settings.write_budget,
                                 attempts=self.settings.max_attempts)

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
                            "aborting %d", aborted)
                return aborted
        raise S3StorageError("s3 list_multipart_uploads: too many pages")

    async def _abort_upload(self, key: str, upload_id: str) -> bool:
        try:
            await self.call("abort_multipart_upload", Key=key, UploadId=upload_id)
        except FileNotFoundError:
            return False
        log.info("aborted stale multipart upload %s of %s", upload_id, key)
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
            log.warning("cleanup in the background failed: %s", task.exception())

    async def close(self) -> None:
        """Finish running calls (bounded by boto's timeouts) without blocking the loop;
        aborts still going on in the background are left to the stale-upload sweep."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        shutdown = functools.partial(self._pool.shutdown, wait=True, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, shutdown)
        self._client.close()
        self._writer.close()


class S3Upload:
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

    def __init__(self, driver: S3Driver, key: str, part_size: int, concurrency: int) -> None:
        self._driver = driver
        self._key = key
        self._full_key = driver.full_key(key)
        self.part_size = part_size
        self.max_size = part_size * MAX_PARTS
        self._slots = asyncio.Semaphore(concurrency)
        self._size = 0
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
    def key(self) -> str:
        return self._key

    @property
    def size(self) -> int:
        return self._size

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
            log.warning("upload to %s failed: %s", self._key, exc)

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
            log.warning("aborting the upload to %s goes on in the background", self._key)

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
