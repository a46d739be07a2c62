"""The [storage] section: where the registry's data lives, and how S3 is reached."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import parse_duration, parse_positive, parse_size, parse_str, path_or_s3, setting


@dataclass(frozen=True)
class StorageSettings:
    url: str = setting("data", "a folder, or s3://BUCKET[/PREFIX] for R2/S3",
                       path_or_s3("s3://BUCKET[/PREFIX]", r"(/.*)?"))
    endpoint_url: str = setting("", "S3 endpoint; else AWS_ENDPOINT_URL(_S3)", parse_str)
    region: str = setting("auto", "S3 region (R2: auto)", parse_str)
    part_size: int = setting("32MiB", "fixed multipart part size (R2: all parts equal)",
                             parse_size, low="5MiB", high="5GiB", why="R2 and S3 limits")
    part_concurrency: int = setting(4, "parts uploaded in parallel per blob", parse_positive)
    parts_in_flight: int = setting(8, "parts being uploaded at once, all blobs together",
                                   parse_positive)
    redirect_expiry: float = setting(
        "0s", ">0: blob pulls redirect to presigned URLs valid this long", parse_duration)
    stale_upload_age: float = setting(
        "24h", "multipart uploads older than this are aborted", parse_duration)
    connect_timeout: float = setting("5s", "S3: connecting to the endpoint", parse_duration,
                                     positive=True)
    read_timeout: float = setting(
        "20s", "S3: any wait for the service (an answer, sending a part)", parse_duration,
        positive=True)
    max_attempts: int = setting(
        3, "S3: tries per call (5xx, throttling, timeouts); with the timeouts, bounds a call "
        "to a dead service (78 s by default)", parse_positive)
    write_budget: float = setting(
        "30s", "S3: how long a write of one small object (a tag, a link, the gc lease) waits "
        "out R2's 429 (1 write/s per key)", parse_duration)

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")
