"""The [registry] section: what the registry's HTTP side is configured with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..limits import Limits
from ..settings import (
    parse_bool,
    parse_duration,
    parse_host_names,
    parse_path,
    parse_positive,
    parse_size,
    setting,
)


@dataclass(frozen=True)
class RegistrySettings:
    max_manifest_size: int = setting("4MiB", "the largest manifest accepted", parse_size,
                                     low="4MiB", why="OCI requirement")
    max_manifest_descriptors: int = setting(
        1000, "distinct digests one manifest names: config, layers, subject, index entries "
        "(real images: far fewer)", parse_positive)
    upload_idle_timeout: float = setting(
        "10m", "an upload session untouched this long is aborted", parse_duration)
    body_idle_timeout: float = setting(
        "2m", "a request body (or a response) that moves nothing this long is cut off",
        parse_duration)
    header_timeout: float = setting(
        "60s", "a connection must send its next request's headers within this long of opening "
        "or of its last answer (slowloris)", parse_duration)
    hosts: tuple[str, ...] = setting(
        [], "Host names accepted besides localhost, 127.0.0.0/8 and [::1] (any port), e.g. a "
        "name mapped in /etc/hosts", parse_host_names)
    spool: Path = setting("spool", "a local folder where blobs being pulled through a mirror "
                          "are shared with every client and worker waiting for them",
                          parse_path)
    browser: bool = setting(True, "serve the registry browser at / (http://localhost:5000/ "
                            "through the tunnel)", parse_bool)
    # Not file keys: given by the service from other sections, or fixed.
    limits: Limits = field(default_factory=Limits)  # the [limits] section (upload counts)
    part_size: int | None = None  # storage part size for blob uploads (S3); backend default if None
    redirect_expiry: int = 0  # >0: pulls of blobs are redirected to presigned URLs valid this long
    upload_batch: int = 4 << 20  # bytes hashed and written per storage call
    max_page: int = 10_000  # largest `n` for tags/list and _catalog
