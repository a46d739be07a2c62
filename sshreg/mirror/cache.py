"""The pull-through cache as the registry sees it: which names are mirrored, and making a
manifest or blob stored and current before the registry's own handlers serve it.

A manifest by digest never changes: once stored it is never fetched again. A tag is trusted
for the mirror's `tag_ttl` after the last time upstream was asked (the modification time of
`mirror/checked/<name>/<tag>`, shared by every gateway on the bucket); after that a `HEAD`
upstream says whether it moved. If the upstream cannot answer, the stored manifest is
served and the staleness logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..events.log import EventLog
from ..metrics import Metrics
from ..oci import ManifestError, parse_manifest
from ..references import Digest, is_digest
from ..storage.base import StorageError
from ..store import paths
from ..store.blobs import BlobRecord
from ..store.manifests import ManifestLink
from ..store.registry_store import RegistryStore
from .fills import FillReader, Fills, box_lock
from .names import Mirrored, by_prefix, default_mirror, mirrored
from .settings import MirrorSettings
from .upstream import Upstream, UpstreamMissing, UpstreamUnavailable

log = logging.getLogger("sshreg.mirror")

LOCK_WAIT = 60.0  # seconds a worker waits for another's look upstream at one manifest


@dataclass
class MirrorStatus:
    """What `ssh reg.host mirrors` says about one mirror (this process's share)."""

    settings: MirrorSettings
    last_error: str = ""
    last_error_at: float = 0.0


class Mirrors:
    """Every configured mirror, its upstream client and this process's fills."""

    def __init__(self, store: RegistryStore, mirrors: tuple[MirrorSettings, ...], spool: Path,
                 metrics: Metrics | None = None, events: EventLog | None = None) -> None:
        self.store = store
        self.events = events
        self.settings = mirrors
        self.metrics = metrics or Metrics()
        self.upstreams = {m.prefix: Upstream(m) for m in mirrors}
        self.status = {m.prefix: MirrorStatus(m) for m in mirrors}
        self.fills = Fills(store, spool, self._count_bytes, self._failed)
        self._pull_marked: dict[str, float] = {}  # repository -> when this process noted a pull
        self._refreshing: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def start(self) -> None:
        """Clear what fills of an earlier run left in the spool."""
        self.fills.spool.mkdir(parents=True, exist_ok=True)
        removed = await asyncio.to_thread(self.fills.sweep)
        if removed:
            log.info("mirror: removed %(uploads)d file(s) of fills an earlier run left",
                     {"uploads": removed})

    async def close(self) -> None:
        await self.fills.close()
        for upstream in self.upstreams.values():
            await upstream.close()

    async def target(self, name: str, *, pulling: bool) -> Mirrored | None:
        """The mirrored repository a requested name is, if it is one: a name under a
        prefix always; with a default mirror, a pull of a name that is no local repository."""
        found = by_prefix(self.settings, name)
        if found is not None:
            return found
        default = default_mirror(self.settings)
        if default is None or not pulling or await self.store.repositories.exists(name):
            return None
        return mirrored(default, name)

    def upstream(self, target: Mirrored) -> Upstream:
        return self.upstreams[target.mirror.prefix]

    async def ensure_manifest(self, target: Mirrored, reference: str) -> None:
        """Make the manifest `reference` (a tag or digest) stored in `target.name` and, for a
        tag, current within the mirror's tag_ttl. Raises UpstreamMissing or
        UpstreamUnavailable when there is nothing to serve.

        Concurrent requests for one manifest share one look upstream: in this process they
        wait for the same task, and across the workers of the box for a lock file, after
        which they find the manifest current (Docker Hub counts every manifest GET)."""
        await self._note_pull(target)
        if await self._current(target, reference):
            self.hit(target)
            return
        key = (target.name, reference)
        running = self._refreshing.get(key)
        if running is None:
            running = asyncio.ensure_future(self._refresh_once(target, reference))
            self._refreshing[key] = running
            running.add_done_callback(lambda _: self._refreshing.pop(key, None))
        else:
            self.hit(target)  # served by the look another request is taking
        await asyncio.shield(running)

    async def _current(self, target: Mirrored, reference: str) -> bool:
        """Whether the manifest is stored and, for a tag, checked within its tag_ttl."""
        if is_digest(reference):
            return await self.store.manifests.link(target.name, Digest.parse(reference)) is not None
        if await self.store.tags.get(target.name, reference) is None:
            return False
        checked = await self.store.driver.stat(paths.mirror_checked(target.name, reference))
        return checked is not None and time.time() - checked.modified < target.mirror.tag_ttl

    async def _refresh_once(self, target: Mirrored, reference: str) -> None:
        name = hashlib.sha256(f"{target.name}:{reference}".encode()).hexdigest()[:40]
        async with box_lock(self.fills.spool / "manifests" / f"{name}.lock", LOCK_WAIT):
            if await self._current(target, reference):  # another worker just looked
                self.hit(target)
                return
            await self._refresh(target, reference)

    async def _refresh(self, target: Mirrored, reference: str) -> None:
        if is_digest(reference):
            await self._fetch_manifest(target, reference, expected=Digest.parse(reference))
            return
        stored = await self.store.tags.get(target.name, reference)
        try:
            if stored is not None:  # a HEAD (which Docker Hub does not count) may be enough
                head = await self.upstream(target).manifest(target.remote, reference, head=True)
                if head.headers.get("Docker-Content-Digest") == str(stored) and (
                        await self.store.manifests.link(target.name, stored) is not None):
                    await self._checked(target, reference)
                    self.hit(target)
                    return
            await self._fetch_manifest(target, reference)
        except UpstreamUnavailable as exc:
            self._failed(target, exc)
            if stored is None:
                raise
            log.warning("mirror %(mirror)s: serving %(repository)s:%(reference)s as stored, not "
                        "checked upstream: %(error)s",
                        {"mirror": target.mirror.prefix, "repository": target.name,
                         "reference": reference, "error": str(exc)})
            self.metrics.inc("sshreg_mirror_stale_total", mirror=target.mirror.prefix)

    async def _fetch_manifest(self, target: Mirrored, reference: str,
                              expected: Digest | None = None) -> None:
        self.metrics.inc("sshreg_mirror_misses_total", mirror=target.mirror.prefix)
        fetched = await self.upstream(target).manifest(target.remote, reference)
        digest = Digest.of(fetched.body, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise UpstreamUnavailable(f"upstream manifest {reference} does not match its digest")
        try:
            manifest = parse_manifest(fetched.body, fetched.headers.get("Content-Type"))
        except ManifestError as exc:
            raise UpstreamUnavailable(f"upstream manifest {reference}: {exc}") from None
        link = ManifestLink.describing(digest, manifest, len(fetched.body))
        await self.store.manifests.put(target.name, link, fetched.body)
        if expected is None:
            await self.store.tags.set(target.name, reference, digest)
            await self._checked(target, reference)
            if self.events is not None:
                await self.events.append(
                    "mirror.filled", repository=target.name, tags=(reference,),
                    digest=str(digest), media_type=link.media_type, size=link.size,
                    comment=f"mirror of {target.mirror.upstream}")
        log.info("mirror %(mirror)s: %(repository)s:%(reference)s fetched as %(digest)s",
                 {"mirror": target.mirror.prefix, "repository": target.name,
                  "reference": reference, "digest": str(digest)})

    async def _note_pull(self, target: Mirrored) -> None:
        """Keep the time of the last pull for eviction: one small write per repository per
        `pull_mark_interval` per process, not one per request."""
        now = time.monotonic()
        if now - self._pull_marked.get(target.name, -math.inf) < target.mirror.pull_mark_interval:
            return
        self._pull_marked[target.name] = now
        try:
            await self.store.driver.put(paths.mirror_pulled(target.name), b"")
        except StorageError as exc:
            log.info("mirror %(mirror)s: noting a pull of %(repository)s: %(error)s",
                     {"mirror": target.mirror.prefix, "repository": target.name,
                      "error": str(exc)})

    async def _checked(self, target: Mirrored, tag: str) -> None:
        """Note that upstream was asked about the tag now (one small write per tag_ttl)."""
        try:
            await self.store.driver.put(paths.mirror_checked(target.name, tag), b"")
        except StorageError as exc:  # two gateways checking at once (R2: 1 write/s per key)
            log.info("mirror %(mirror)s: noting the check of %(repository)s:%(reference)s: %(error)s",
                     {"mirror": target.mirror.prefix, "repository": target.name, "reference": tag,
                      "error": str(exc)})

    async def open_blob(self, target: Mirrored, digest: Digest,
                        idle_timeout: float) -> BlobRecord | FillReader:
        """The stored blob, or a reader of the fill that is copying it in."""
        try:
            found = await self.fills.open(target, self.upstream(target), digest, idle_timeout)
        except UpstreamUnavailable as exc:
            self._failed(target, exc)
            raise
        if isinstance(found, FillReader):
            self.metrics.inc("sshreg_mirror_misses_total", mirror=target.mirror.prefix)
        else:
            self.hit(target)
        return found

    async def blob_size(self, target: Mirrored, digest: Digest) -> int | None:
        """The size of a blob that is not stored, from upstream: a HEAD starts no fill (a
        client pushing under the prefix asks HEAD first, and should not cause a download)."""
        try:
            return await self.upstream(target).blob_size(target.remote, str(digest))
        except UpstreamUnavailable as exc:
            self._failed(target, exc)
            raise

    async def referrers(self, target: Mirrored, digest: Digest) -> dict[str, object] | None:
        """The upstream's referrers index of `digest`, None if it offers none."""
        with contextlib.suppress(UpstreamMissing):
            return await self.upstream(target).json(
                target.remote, f"/v2/{target.remote}/referrers/{digest}")
        return None

    async def tags(self, target: Mirrored, query: str) -> dict[str, object] | None:
        """The upstream's tag list (paged as asked), None if it has no such repository."""
        suffix = f"?{query}" if query else ""
        with contextlib.suppress(UpstreamMissing):
            return await self.upstream(target).json(
                target.remote, f"/v2/{target.remote}/tags/list{suffix}")
        return None

    def describe(self) -> list[dict[str, Any]]:
        """Each mirror with this process's numbers (what `ssh reg.host mirrors` shows)."""
        rows = []
        for prefix, status in self.status.items():
            def value(name: str, prefix: str = prefix) -> int:
                return int(self.metrics.value(name, mirror=prefix))

            rows.append({
                "prefix": prefix, "upstream": status.settings.upstream,
                "default": status.settings.default, "tag_ttl": status.settings.tag_ttl,
                "hits": value("sshreg_mirror_hits_total"),
                "misses": value("sshreg_mirror_misses_total"),
                "bytes_fetched": value("sshreg_mirror_upstream_bytes_total"),
                "errors": value("sshreg_mirror_upstream_errors_total"),
                "last_error": status.last_error, "last_error_at": status.last_error_at or None,
            })
        return rows

    def hit(self, target: Mirrored) -> None:
        """Something was served from storage without asking upstream."""
        self.metrics.inc("sshreg_mirror_hits_total", mirror=target.mirror.prefix)

    def _count_bytes(self, target: Mirrored, size: int) -> None:
        self.metrics.inc("sshreg_mirror_upstream_bytes_total", size, mirror=target.mirror.prefix)

    def _failed(self, target: Mirrored, exc: Exception) -> None:
        self.metrics.inc("sshreg_mirror_upstream_errors_total", mirror=target.mirror.prefix)
        status = self.status[target.mirror.prefix]
        status.last_error, status.last_error_at = str(exc), time.time()
