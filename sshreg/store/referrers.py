"""Referrers: per repository and subject, the descriptors of the manifests naming it.

An entry is written with its manifest link and removed with it (`manifests.py`), so a
referrers answer is a listing and a read per entry, never a walk over manifests."""

from __future__ import annotations

import json
from typing import Any

from ..references import Digest
from ..storage.base import Driver
from . import paths
from .immutable import write_immutable
from .inventory import digests_under


class ReferrerIndex:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    async def add(self, name: str, subject: Digest, digest: Digest,
                  descriptor: dict[str, Any]) -> None:
        await write_immutable(self.driver, paths.referrer(name, subject, digest),
                              json.dumps(descriptor).encode())

    async def remove(self, name: str, subject: Digest, digest: Digest) -> None:
        await self.driver.delete(paths.referrer(name, subject, digest))

    async def digests(self, name: str, subject: Digest) -> list[Digest]:
        """Digests of the manifests in `name` whose subject is `subject` (no reads)."""
        return [d async for d, _ in digests_under(self.driver, paths.referrers(name, subject))]

    async def descriptors(self, name: str, subject: Digest) -> list[dict[str, Any]]:
        """Descriptors of the manifests in `name` whose subject is `subject`."""
        descriptors = []
        async for obj in self.driver.list(paths.referrers(name, subject)):
            value = await self.driver.get(obj.key)
            if value is not None:
                descriptors.append(json.loads(value.data))
        return descriptors
