"""Incompressible test data that costs the client next to nothing to produce.

A payload is a unique 64-byte prefix followed by one shared random buffer repeated as
often as needed. Deflate (window 32 KiB) and SSH see random bytes; the prefix makes every
payload a different blob, so no registry can skip an upload because it already has it.
Streaming a payload hands out memoryviews of the shared buffer: no copy, no RNG.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from functools import cache

BASE_SIZE = 64 << 20
PREFIX_SIZE = 64
HASH_PIECE = 4 << 20


@cache
def base_buffer() -> memoryview:
    return memoryview(os.urandom(BASE_SIZE))


class Payload:
    """`size` bytes of incompressible data; `digest` is computed once, before any timing."""

    def __init__(self, size: int) -> None:
        if size < PREFIX_SIZE:
            raise ValueError("payload too small")
        self.size = size
        self.prefix = secrets.token_bytes(PREFIX_SIZE)
        self._digest: str | None = None

    def pieces(self, piece: int) -> Iterator[memoryview]:
        """The bytes in order, as views of at most `piece` bytes."""
        yield memoryview(self.prefix)
        base = base_buffer()
        remaining = self.size - PREFIX_SIZE
        offset = 0
        while remaining > 0:
            n = min(piece, remaining, BASE_SIZE - offset)
            yield base[offset:offset + n]
            remaining -= n
            offset = (offset + n) % BASE_SIZE

    @property
    def digest(self) -> str:
        if self._digest is None:
            hasher = hashlib.sha256()
            for view in self.pieces(HASH_PIECE):
                hasher.update(view)
            self._digest = "sha256:" + hasher.hexdigest()
        return self._digest
