"""A storage driver wrapper that times every call and counts failures, for the metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol, TypeVar

from .base import Driver, ObjectInfo, SmallObject, StorageError, Upload

T = TypeVar("T")


class Recorder(Protocol):
    """What the wrapper records into (`metrics.Metrics`)."""

    def inc(self, name: str, value: float = 1, **labels: str) -> None: ...

    def observe(self, name: str, value: float, **labels: str) -> None: ...


class InstrumentedDriver:
    """Wraps a storage driver to time every call and count failures."""

    def __init__(self, inner: Driver, metrics: Recorder) -> None:
        self.inner = inner
        self.metrics = metrics

    def __repr__(self) -> str:
        return repr(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            return await call
        except (StorageError, OSError):
            self.metrics.inc("sshreg_storage_errors_total", op=op)
            raise
        finally:
            self.metrics.observe("sshreg_storage_seconds", time.monotonic() - started, op=op)

    async def get(self, key: str) -> SmallObject | None:
        return await self._timed("get", self.inner.get(key))

    async def put(self, key: str, data: bytes, **conditions: Any) -> str:
        return await self._timed("put", self.inner.put(key, data, **conditions))

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self._timed("stat", self.inner.stat(key))

    async def delete(self, key: str) -> None:
        await self._timed("delete", self.inner.delete(key))

    def list(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix, start_after)

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self.inner.read(key, start, end)

    async def begin_upload(self, key: str, part_size: int | None = None) -> Upload:
        return await self._timed("begin_upload", self.inner.begin_upload(key, part_size))
