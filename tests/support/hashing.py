"""Digests as the registry names content (`sha256:<hex>`), of bytes, files and streams.

`HashingWriter` and `GzipWriter` chain: a layer is written as tar -> hash (diff_id) -> gzip ->
hash (digest) -> file, in constant memory.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """`<algorithm>:<hex>` of `data`."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def sha256(data: bytes) -> str:
    """`sha256:<hex>` of `data`."""
    return digest_of(data)


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class HashingWriter:
    """Counts and hashes what passes through, then hands it on."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class GzipWriter:
    """A gzip stream (zlib with a gzip header: mtime 0, so output is deterministic)."""

    def __init__(self, sink: Sink, level: int) -> None:
        self.sink = sink
        self.zlib = zlib.compressobj(level, zlib.DEFLATED, 31)

    def write(self, data: bytes | memoryview) -> None:
        out = self.zlib.compress(data)
        if out:
            self.sink.write(out)

    def close(self) -> None:
        self.sink.write(self.zlib.flush())
