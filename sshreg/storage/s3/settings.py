"""Where and how to reach the bucket: `S3Settings`, parsed from `s3://BUCKET[/PREFIX]`, and
the part-size limits R2 and S3 share (5 MiB to 5 GiB a part, at most 10,000 parts)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = (5 << 30) - (5 << 20)  # R2: "5 MiB less than 5 GiB" per request
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 32 << 20  # 10,000 parts of 32 MiB: blobs up to 312.5 GiB
DEFAULT_PART_CONCURRENCY = 4


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


def check_part_size(part_size: int) -> None:
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(f"part size {part_size} is outside R2's and S3's limits "
                         f"({MIN_PART_SIZE} to {MAX_PART_SIZE} bytes)")


def _normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise ValueError(f"invalid key prefix: {prefix!r}")
    return prefix + "/" if prefix else ""
