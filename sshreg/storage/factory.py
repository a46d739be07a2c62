"""The storage backend a configuration names: a folder, or an s3:// URL."""

from __future__ import annotations

from pathlib import Path

from ..limits import Limits
from .base import Driver
from .filesystem import FilesystemDriver
from .settings import StorageSettings


def open_driver(storage: StorageSettings, limits: Limits) -> Driver:
    """The storage backend `storage.url` names: a folder or an s3:// URL; its uploads share
    `limits.upload_buffer_budget` of part buffers."""
    if storage.is_s3:
        from .s3 import S3Driver

        return S3Driver.from_url(
            storage.url,
            endpoint_url=storage.endpoint_url or None,
            region=storage.region,
            part_size=storage.part_size,
            part_concurrency=storage.part_concurrency,
            connect_timeout=storage.connect_timeout,
            read_timeout=storage.read_timeout,
            max_attempts=storage.max_attempts,
            write_budget=storage.write_budget,
            parts_in_flight=storage.parts_in_flight,
            buffer_budget=limits.upload_buffer_budget,
        )
    return FilesystemDriver(Path(storage.url))
