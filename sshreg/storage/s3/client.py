"""Retrying writes of one key on R2, which allows one write per second per key.

R2 answers a second write to a key within a second with `429` (other services say
`SlowDown`, or `503 ServiceUnavailable`). botocore's standard retries back off for well under
a second at first, so they spend their few attempts inside the same second and fail. Writes of
small objects (`S3Driver.put`, `S3Driver.delete`) therefore go through a client without
botocore retries, and `retry_write` retries them itself:

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
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .base import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

THROTTLE_CODES = frozenset({"SlowDown", "TooManyRequests", "ServiceUnavailable",
                            "Throttling", "ThrottlingException", "RequestLimitExceeded"})
TRANSIENT_STATUSES = frozenset({500, 502, 504})
MIN_THROTTLE_WAIT = 1.0  # R2: one write per second per key
MAX_THROTTLE_JITTER = 4.0


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
                log.warning("%s: still refused after %d throttled and %d failed tries; "
                            "giving up (%s)", what, throttled, transient, exc)
                raise
            log.debug("%s: %s; retrying in %.1fs", what, exc, wait)
            await asyncio.sleep(wait)
