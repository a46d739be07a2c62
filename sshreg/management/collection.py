"""A garbage collection run as the service and `sshreg gc` start it: the mirrors'
evictions first (`eviction.py`, as retention policies of the run), then the collector, then
the event log's old entries pruned and the run's summary announced as an event."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from ..events.log import EventLog
from ..mirror.settings import MirrorSettings
from ..store.registry_store import RegistryStore
from .eviction import evictions
from .gc import GarbageCollector, GcReport
from .settings import GcSettings

log = logging.getLogger("sshreg.gc")


class Collection:
    """Garbage collection with the mirrors' evictions and the event log's upkeep."""

    def __init__(self, store: RegistryStore, settings: GcSettings,
                 mirrors: tuple[MirrorSettings, ...] = (), events: EventLog | None = None,
                 keep_events: float = 7 * 86400.0) -> None:
        self.store = store
        self.settings = settings
        self.mirrors = mirrors
        self.events = events
        self.keep_events = keep_events
        self._lock = asyncio.Lock()

    async def run(self, dry_run: bool = False) -> GcReport:
        async with self._lock:
            evicted = await evictions(self.store, self.mirrors, time.time())
            for eviction in evicted:
                log.info("evicting the cached %(repository)s: %(reason)s",
                         {"repository": eviction.repository, "reason": eviction.why})
            settings = replace(self.settings, retention=self.settings.retention + evicted)
            report = await GarbageCollector(self.store, settings).run(dry_run)
            if self.events is not None and not dry_run:
                pruned = await self.events.prune(time.time() - self.keep_events)
                await self.events.append(
                    "gc.finished", comment="garbage collection",
                    report={**report.to_dict(), "events_pruned": pruned})
            return report
