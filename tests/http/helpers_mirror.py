"""A registry with a pull-through mirror of the test's `Upstream` under `up.test/`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from sshreg.events.log import EventLog
from sshreg.metrics import Metrics
from sshreg.mirror.cache import Mirrors
from sshreg.mirror.settings import MirrorSettings
from sshreg.registry.app import Registry
from sshreg.registry.settings import RegistrySettings
from sshreg.storage.base import Driver
from sshreg.store.registry_store import RegistryStore
from tests.conftest import identify_from_test_header
from tests.http.helpers_api import started
from tests.support.upstream import Upstream

PREFIX = "up.test"


@asynccontextmanager
async def mirroring(driver: Driver, upstream: Upstream, spool: Path, *,
                    registry_settings: dict[str, Any] | None = None,
                    events: EventLog | None = None, **mirror: Any
                    ) -> AsyncIterator[tuple[Registry, TestClient]]:
    """A registry on `driver` mirroring `upstream` under up.test/ (`mirror`: more keys of
    the [[mirror]] table), and a client talking to it."""
    settings = MirrorSettings(**{"prefix": PREFIX, "upstream": upstream.url, **mirror})
    store = RegistryStore(driver)
    metrics = Metrics()
    registry = Registry(store, RegistrySettings(**(registry_settings or {})),
                        identify=identify_from_test_header, metrics=metrics,
                        mirrors=Mirrors(store, (settings,), spool, metrics, events))
    async with started(registry) as served:
        yield served
