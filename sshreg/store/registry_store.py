"""The registry's data model, laid out as objects on any `Driver` (the keys: `paths.py`).

`RegistryStore` is what the rest of the code holds: one object per gateway process, whose
parts are its attributes, one per concern, as in distribution's `blobstore`,
`linkedblobstore`, `manifeststore` and `tagstore`. Callers name the part they use
(`store.tags.set(...)`, `store.inventory.blobs()`), which tells a reader what a handler or
the collector touches; the parts take the parts they build on explicitly.

R2 takes one write per second per key, so nothing is written that is already there:
objects whose bytes never change (links, referrer entries, repository markers) are created
with `if_none_match` after a look (`immutable.py`), and concurrent writers of one tag in
this process are coalesced, the latest value winning (`coalesce.py`).

Everything a gateway needs is in storage, so several gateways can share one bucket. The
only local state is what cannot become false (the repositories known to exist), the
manifest cache (content-addressed bytes), the blob records served (checked again when their
bytes are gone, `blobs.py`), and the pins of this process's writes.
"""

from __future__ import annotations

from ..storage.base import Driver
from . import paths
from .blobs import BlobStore
from .inventory import Inventory
from .manifests import ManifestStore
from .pins import Pins
from .referrers import ReferrerIndex
from .repositories import RepositoryStore
from .tags import TagStore


class RegistryStore:
    """Blobs, repositories, manifests, tags and referrers on top of a `Driver`."""

    def __init__(self, driver: Driver, manifest_cache_bytes: int = 16 << 20, *,
                 pins: Pins | None = None) -> None:
        self.driver = driver
        self.blobs = BlobStore(driver)
        self.repositories = RepositoryStore(driver, self.blobs)
        self.tags = TagStore(driver)
        self.referrers = ReferrerIndex(driver)
        self.manifests = ManifestStore(driver, self.blobs, self.repositories, self.tags,
                                       self.referrers, manifest_cache_bytes)
        self.inventory = Inventory(driver, self.blobs)
        # A second view of this gateway's storage (another driver wrapper) shares its pins.
        self.pins = pins if pins is not None else Pins()

    async def health_check(self) -> None:
        """Raise unless storage answers a read (a missing object is a fine answer)."""
        await self.driver.stat(paths.HEALTH_PROBE)
