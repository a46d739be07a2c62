"""Repository names, tags and digests, validated by the OCI Distribution spec's grammar.

Every name, tag and digest that reaches storage went through here, so none of them can
contain `..`, an empty path segment or a character that escapes a storage prefix.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
MAX_NAME_LENGTH = 255

# Digest algorithms we can verify, with the length of their lowercase hex encoding.
ALGORITHMS = {"sha256": 64, "sha512": 128}
_ENCODED_RE = re.compile(r"[a-f0-9]+")


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def is_valid_tag(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None


@dataclass(frozen=True, order=True)
class Digest:
    """A content digest `algorithm:hex` of an algorithm we can compute."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse `sha256:<64 hex>` or `sha512:<128 hex>`; raise ValueError otherwise."""
        algorithm, sep, encoded = text.partition(":")
        if not sep:
            raise ValueError(f"not a digest: {text!r}")
        length = ALGORITHMS.get(algorithm)
        if length is None:
            raise ValueError(f"unsupported digest algorithm: {algorithm!r}")
        if len(encoded) != length or not _ENCODED_RE.fullmatch(encoded):
            raise ValueError(f"malformed {algorithm} digest: {text!r}")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_digest(reference: str) -> bool:
    """Whether a manifest reference is meant as a digest (tags cannot contain ':')."""
    return ":" in reference
