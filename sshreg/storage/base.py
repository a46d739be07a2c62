"""The storage contract: a narrow object store that every backend implements.

The registry's layout (blobs, links, manifests, tags, referrers) is written once in
`sshreg/store/` on top of this interface; a backend only stores keyed objects. The rules
every backend keeps, checked by the shared test suite in `tests/storage/test_storage_contract.py`:

- Keys are `/`-separated paths of `[A-Za-z0-9._:-]` segments; no key is also a
  "directory" of another key (the layout guarantees it).
- `put` is atomic: a reader sees the old object or the new one, never a torn one.
- `list` yields every key under the prefix once; keys of one "directory" come in
  byte order, so `start_after` pages through one directory (tags). Across directories
  the order is the backend's (byte order on R2, S3 and the filesystem).
- An `Upload` streams a large object in; nothing is visible under its key before
  `commit` returns, and `abort` leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


class StorageError(Exception):
    """The backend failed (unreachable, refused, out of space); the request may be retried."""


class TooLarge(StorageError):
    """The object would exceed what the backend can store (R2/S3: 10,000 parts)."""


class Overloaded(StorageError):
    """The backend takes no more work of this kind for now (a memory budget is spent); the
    request may be retried later."""


class PreconditionFailed(Exception):
    """A conditional write lost: the object exists (`if_none_match`) or changed (`if_match`)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch
    etag: str


@dataclass(frozen=True)
class SmallObject:
    """Bytes of a small object together with the etag a conditional write can test."""

    data: bytes
    etag: str


def check_key(key: str) -> list[str]:
    """The segments of a valid storage key; ValueError for an empty key or an empty, `.`
    or `..` segment, which no backend may store."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key: {key!r}")
    return parts


class BaseUpload:
    """The bookkeeping every backend's upload shares: its key and the bytes taken so far."""

    def __init__(self, key: str) -> None:
        self._key = key
        self._size = 0

    @property
    def key(self) -> str:
        return self._key

    @property
    def size(self) -> int:
        return self._size


class Upload(Protocol):
    """A large object being streamed into storage.

    `write` may be called many times (across HTTP requests); it returns once the data is
    accepted, which is how storage slowness pushes back on the client. Memory held by an
    upload is bounded by the backend's buffering, never by the object size.
    """

    @property
    def key(self) -> str: ...

    @property
    def size(self) -> int: ...

    async def write(self, data: bytes | bytearray) -> None: ...

    async def commit(self) -> None:
        """Make the data durable and visible under `key`, in O(1) of its size."""

    async def abort(self) -> None:
        """Discard everything written; safe to call more than once and after failures."""


class Driver(Protocol):
    """A backend: the filesystem (`filesystem/`) or S3/R2 (`s3/`)."""

    async def get(self, key: str) -> SmallObject | None:
        """Read a small object whole, or None if it does not exist."""

    async def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write a small object atomically and return its etag.

        `if_none_match` fails with PreconditionFailed if the key exists; `if_match` fails
        unless the current object has that etag.
        """

    async def stat(self, key: str) -> ObjectInfo | None: ...

    async def delete(self, key: str) -> None:
        """Remove an object; removing a missing key is not an error."""

    def list(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        """Yield the objects under `prefix`, in byte order within a directory, after
        `start_after` (a key of that directory) if given."""

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of an object; raise FileNotFoundError if it is gone."""

    async def begin_upload(self, key: str, part_size: int | None = None) -> Upload:
        """Start streaming a large object that `commit` will publish under `key`."""

    async def presign(self, key: str, expires: int) -> str | None:
        """A URL that lets a client GET the object directly, or None if unsupported."""

    async def abort_stale_uploads(self, older_than: float) -> int:
        """Remove in-progress uploads started more than `older_than` seconds ago."""

    async def close(self) -> None: ...
