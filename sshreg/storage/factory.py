"""The storage backend a configuration names: a folder, or an s3:// URL."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Driver
from .filesystem import FilesystemDriver

if TYPE_CHECKING:
    from ..config import Config


def open_driver(config: Config) -> Driver:
    """The storage backend `config.storage` names: a folder or an s3:// URL."""
    if config.is_s3:
        from .s3 import S3Driver

        return S3Driver.from_url(
            config.storage,
            endpoint_url=config.endpoint_url or None,
            region=config.region,
            part_size=config.part_size,
            part_concurrency=config.part_concurrency,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            max_attempts=config.max_attempts,
            write_budget=config.write_budget,
            parts_in_flight=config.parts_in_flight,
            buffer_budget=config.upload_buffer_budget,
        )
    return FilesystemDriver(Path(config.storage))
