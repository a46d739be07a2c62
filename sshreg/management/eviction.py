"""Evicting what the pull-through cache holds, as part of garbage collection.

A mirrored repository nobody pulled for its mirror's `keep` loses its tags; beyond the
mirror's `max_bytes`, the least recently pulled repositories lose theirs first, until what
the rest link fits. Each run of garbage collection takes these evictions as retention
policies, so eviction and collection are one pass with one safety net: an evicted image's
blobs go only if nothing else links them, and a pull that fetches it again meanwhile is
spared by the collector's second look. Only names under a mirror's prefix are considered:
the team's own images are never evicted.

The last pull of a repository is the modification time of its `mirror/pulled/` marker,
which gateways rewrite at most every `pull_mark_interval`; a repository cached before it had
one counts from its newest manifest.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..mirror.settings import MirrorSettings
from ..store import paths
from ..store.registry_store import RegistryStore

log = logging.getLogger("sshreg.gc")


@dataclass(frozen=True)
class Eviction:
    """Every tag of one mirrored repository, as a retention policy of one run."""

    repository: str
    why: str

    def applies_to(self, repository: str) -> bool:
        return repository == self.repository

    def expired_tags(self, tags: Iterable[tuple[str, float]], now: float) -> list[str]:
        return sorted(tag for tag, _ in tags)


async def evictions(store: RegistryStore, mirrors: tuple[MirrorSettings, ...],
                    now: float) -> tuple[Eviction, ...]:
    """The mirrored repositories whose tags go in a run that starts `now`."""
    if not mirrors:
        return ()
    names = await store.repositories.names()
    found: list[Eviction] = []
    for mirror in mirrors:
        cached = [n for n in names if n.startswith(mirror.prefix + "/")]
        pulled = {name: await last_pull(store, name) for name in cached}
        stale = [n for n in cached if now - pulled[n] > mirror.keep]
        found += [Eviction(n, f"not pulled for {(now - pulled[n]) / 86400:.1f} days")
                  for n in stale]
        if mirror.max_bytes is not None:
            rest = sorted((n for n in cached if n not in stale), key=lambda n: pulled[n])
            found += await _over_budget(store, rest, mirror.max_bytes)
    return tuple(found)


async def last_pull(store: RegistryStore, name: str) -> float:
    marker = await store.driver.stat(paths.mirror_pulled(name))
    if marker is not None:
        return marker.modified
    return max([info.modified async for _, info in store.inventory.manifest_revisions(name)],
               default=0.0)


async def _over_budget(store: RegistryStore, oldest_first: list[str], budget: int
                       ) -> list[Eviction]:
    """The least recently pulled repositories whose eviction brings what the others link
    (each blob counted once) within `budget` bytes."""
    linked = {name: await store.inventory.linked(name) for name in oldest_first}
    users = Counter(d for digests in linked.values() for d in digests)
    sizes = await store.inventory.sizes(set(users))
    total = sum(sizes.values())
    evicted = []
    for name in oldest_first:
        if total <= budget:
            break
        for digest in linked[name]:
            users[digest] -= 1
            if users[digest] == 0:
                total -= sizes[digest]
        evicted.append(Eviction(name, f"the cache is over {budget} bytes"))
    return evicted
