"""What the registry's HTTP side is configured with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegistrySettings:
    max_manifest_size: int = 4 << 20
    max_manifest_descriptors: int = 1000  # distinct digests named: config, layers, subject, index
    upload_batch: int = 4 << 20  # bytes hashed and written per storage call
    upload_idle_timeout: float = 600.0  # an upload session with no request for this long is aborted
    body_idle_timeout: float = 120.0  # a request body or a response stalled this long is cut off
    header_timeout: float = 60.0  # a connection's next request headers must be in within this
    part_size: int | None = None  # storage part size for blob uploads (S3); backend default if None
    redirect_expiry: int = 0  # >0: pulls of blobs are redirected to presigned URLs valid this long
    max_page: int = 10_000  # largest `n` for tags/list and _catalog
    hosts: tuple[str, ...] = ()  # Host names accepted besides the loopback's (see origin.py)
    max_uploads_per_key: int = 100  # upload sessions one key may have open
    max_uploads: int = 1000  # upload sessions open in total
