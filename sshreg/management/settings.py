"""The [gc] section: apart from the collector, so that reading a configuration does not
load the store."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import parse_bool, parse_duration, setting
from .retention import TagPolicy


@dataclass(frozen=True)
class GcSettings:
    """The [gc] section, with the [[retention]] policies."""

    grace: float = setting("6h", "nothing written more recently than this is collected",
                           parse_duration)
    safety: float = setting(
        "60s", "pause before deleting, then a second look at new pushes", parse_duration)
    keep_untagged: bool = setting(
        False, "true: manifests without a tag are kept (and their blobs)", parse_bool)
    retention: tuple[TagPolicy, ...] = ()  # the [[retention]] tables (and a run's evictions)
    bloom_bits: int = 1 << 26  # 8 MiB: about 1 % false positives at 7 million blobs
