"""Byte ranges: `Range` on blob GET (RFC 9110) and `Content-Range` on upload PATCH (OCI)."""

from __future__ import annotations

import re

from .errors import Code, RegistryError, range_not_satisfiable

# [0-9], not \d: \d also matches other scripts' digits, which `int()` would read.
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?")
_OWS = " \t"  # HTTP's optional whitespace; str.strip() would also drop other Unicode spaces
_MAX_DIGITS = 19  # a blob never exceeds 2**63 bytes; longer numbers are nonsense


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The [start, end] (inclusive) a blob GET asks for, or None for the whole blob.

    Syntactically invalid and multi-range headers are ignored, as RFC 9110 allows; a
    well-formed range that lies outside the blob is 416.
    """
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header.strip(_OWS))
    if match is None or (not match[1] and not match[2]):
        return None
    first, last = match[1], match[2]
    if len(first) > _MAX_DIGITS or len(last) > _MAX_DIGITS:
        return None
    if not first:  # suffix range: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise range_not_satisfiable(header, size)
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise range_not_satisfiable(header, size)
    return start, min(end, size - 1)


def parse_content_range(header: str) -> tuple[int, int]:
    """The inclusive `start-end` of an upload chunk; accepts an optional `bytes ` prefix."""
    match = _CONTENT_RANGE_RE.fullmatch(header.strip(_OWS))
    if match is None or len(match[1]) > _MAX_DIGITS or len(match[2]) > _MAX_DIGITS:
        raise RegistryError(Code.BLOB_UPLOAD_INVALID, f"malformed Content-Range {header!r}")
    start, end = int(match[1]), int(match[2])
    if end < start:
        raise RegistryError(Code.BLOB_UPLOAD_INVALID, f"empty Content-Range {header!r}",
                            status=416)
    return start, end
