"""boto3 behind a bounded thread pool, with its errors in storage terms (design.md section 4).

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
  quick for that, and back off for a second or more themselves (`retry_write`) for at
  most `write_budget` seconds.

Retrying writes of one key: R2 answers a second write to a key within a second with `429`
(other services say `SlowDown`, or `503 ServiceUnavailable`). botocore's standard retries
back off for well under a second at first, so they spend their few attempts inside the same
second and fail. `retry_write` therefore retries small-object writes itself:

- throttled (429, `SlowDown`, `ServiceUnavailable`, 503): wait at least one second, plus
  jitter that grows with each retry, for as long as `budget` seconds allow;
- other transient failures (500/502/504, connection errors, timeouts): botocore's own
  policy (full jitter, 1, 2, 4 ... s, at most `attempts` tries);
- anything else is raised at once.

When the budget runs out the last error is raised (a `StorageError`: the registry answers
503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.loaders
import botocore.session
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..base import PreconditionFailed, StorageError
from .settings import S3Settings

log = logging.getLogger("sshreg.storage.s3")

T = TypeVar("T")

_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload"})
_TRANSPORT_ERRORS = (BotoCoreError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)

THROTTLE_CODES = frozenset({"SlowDown", "TooManyRequests", "ServiceUnavailable",
                            "Throttling", "ThrottlingException", "RequestLimitExceeded"})
TRANSIENT_STATUSES = frozenset({500, 502, 504})
MIN_THROTTLE_WAIT = 1.0  # R2: one write per second per key
MAX_THROTTLE_JITTER = 4.0


class S3StorageError(StorageError):
    """A failed S3 call, with the service's error code and HTTP status when there was one."""

    def __init__(self, message: str, code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _no_expect_for_empty_body(request: Any, **_: Any) -> None:
    """botocore asks `Expect: 100-continue` on every PutObject; for an empty body SeaweedFS
    then answers twice, and the next request on that connection waits out the read
    timeout (60 s). Nothing is gained by the handshake without a body: drop it."""
    if request.headers.get("Content-Length") in (b"0", "0"):
        request.headers.pop("Expect", None)


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


def is_throttled(exc: StorageError) -> bool:
    code = getattr(exc, "code", "")
    status = getattr(exc, "status", None)
    return status in (429, 503) or code in THROTTLE_CODES


def is_transient(exc: StorageError) -> bool:
    """A 5xx or no answer at all (the call failed in transport)."""
    status = getattr(exc, "status", None)
    return status is None or status in TRANSIENT_STATUSES


def throttle_wait(retry: int) -> float:
    """At least a second, with jitter that widens from 1 to `MAX_THROTTLE_JITTER` s."""
    return MIN_THROTTLE_WAIT + random.uniform(0.0, min(2.0 ** retry, MAX_THROTTLE_JITTER))


def transient_wait(retry: int) -> float:
    """botocore's standard backoff: full jitter over 2**retry s, at most 20 s."""
    return random.uniform(0.0, min(2.0 ** retry, 20.0))


async def retry_write(call: Callable[[], Awaitable[T]], *, what: str, budget: float,
                      attempts: int) -> T:
    """Run `call` (one write of one key), retrying as the module doc says."""
    deadline = time.monotonic() + budget
    throttled = transient = 0
    while True:
        try:
            return await call()
        except StorageError as exc:
            if is_throttled(exc):
                wait = throttle_wait(throttled)
                throttled += 1
            elif is_transient(exc) and transient + 1 < attempts:
                wait = transient_wait(transient)
                transient += 1
            else:
                raise
            if time.monotonic() + wait > deadline:
                log.warning("%(operation)s: still refused after %(throttled)d throttled and "
                            "%(failed)d failed tries; giving up (%(error)s)",
                            {"operation": what, "throttled": throttled, "failed": transient,
                             "error": str(exc)})
                raise
            log.debug("%(operation)s: %(error)s; retrying in %(seconds).1fs",
                      {"operation": what, "error": str(exc), "seconds": wait})
            await asyncio.sleep(wait)


class S3Client:
    """The calls to one bucket: a shared boto3 client (`client`), a second one without
    botocore's retries for small-object writes, and the bounded thread pool both run in."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._client = self._make_client(sign_payload=bool(settings.sign_payload))
        self.endpoint_url: str = self._client.meta.endpoint_url
        # The endpoint may come from the environment or a profile, so it is known only now.
        self.signs_payload = _should_sign_payload(settings, self.endpoint_url)
        if self.signs_payload != bool(settings.sign_payload):
            self._client.close()
            self._client = self._make_client(sign_payload=self.signs_payload)
        # Small-object writes: no botocore retries, `retry_write` backs off instead.
        self._writer = self._make_client(sign_payload=self.signs_payload, attempts=1)
        self._pool = ThreadPoolExecutor(max_workers=settings.pool_threads,
                                        thread_name_prefix="sshreg-s3")

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

    @property
    def client(self) -> Any:
        """The shared boto3 client (blocking: call it only from `run`'s thread pool)."""
        return self._client

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
        """A write of one small object, retried as `retry_write` says."""
        method = getattr(self._writer, operation)
        return await retry_write(lambda: self.run(method, Bucket=self.settings.bucket, **params),
                                 what=f"s3 {operation} {params.get('Key', '')}",
                                 budget=self.settings.write_budget,
                                 attempts=self.settings.max_attempts)

    async def close(self) -> None:
        """Finish running calls (bounded by boto's timeouts) without blocking the loop."""
        shutdown = functools.partial(self._pool.shutdown, wait=True, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, shutdown)
        self._client.close()
        self._writer.close()
