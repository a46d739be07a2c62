"""Online garbage collection: mark from tags, sweep what nothing reaches, while pushes go on.

Reachable: every tagged manifest, the children of reachable indexes, the referrers of
reachable manifests, and the config and layer blobs of all of them. With `keep_untagged`,
every manifest of a repository is a root too. Never deleted: anything written less than
`grace` seconds before the run started (blobs of a push whose manifest is not written yet),
and anything a request of this process is using right now (the store's `pins`).

Deleting happens after a `safety` pause and a second look: manifests, tags and links
written since the run started are marked again, and whatever they reference is spared.
Pins only cover this process, and other gateways may push into the same bucket, so the
sweep works as delete, look, restore: it unlinks manifests and blobs and removes blob
records (never tags), then looks a last time at what was written since the run started and
puts back every manifest link, blob link and record such a write reaches (reading through
what it removed itself), and only then deletes bytes. A manifest PUT does the mirror image
(`registry/manifests.py`): it writes, then checks that everything it references is still
there. Either the PUT sees a deletion and fails, or the deletion came after the PUT's check,
so the last look sees the PUT's manifest or tag and restores what it uses. Only one
collection that deletes runs at a time on a bucket (`lease.py`).

Memory is bounded: reachable digests live in a Bloom filter of fixed size (a false
positive keeps a blob that could have gone, never the reverse), each repository is
marked on its own, and storage is listed page by page.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

from ..oci import ManifestError, parse_manifest
from ..references import Digest
from ..store.blobs import BlobRecord
from ..store.manifests import ManifestLink
from ..store.registry_store import RegistryStore
from .lease import GcBusy, Lease
from .retention import expired_tags
from .settings import GcSettings

__all__ = ["GarbageCollector", "GcBusy", "GcReport", "GcSettings"]

log = logging.getLogger("sshreg.gc")


class BloomFilter:
    """A set of strings that may answer "yes" wrongly (rarely), never "no" wrongly."""

    def __init__(self, bits: int = 1 << 26, hashes: int = 7) -> None:
        self.bits = bits
        self.hashes = hashes
        self._array = bytearray(bits // 8 + 1)

    def _positions(self, item: str) -> list[int]:
        digest = hashlib.blake2b(item.encode(), digest_size=8 * self.hashes).digest()
        return [int.from_bytes(digest[i * 8:(i + 1) * 8], "little") % self.bits
                for i in range(self.hashes)]

    def add(self, item: str) -> None:
        for pos in self._positions(item):
            self._array[pos >> 3] |= 1 << (pos & 7)

    def __contains__(self, item: str) -> bool:
        return all(self._array[pos >> 3] & (1 << (pos & 7)) for pos in self._positions(item))


@dataclass
class GcReport:
    dry_run: bool
    tags: list[str] = field(default_factory=list)  # repo:tag removed by retention
    manifests: list[str] = field(default_factory=list)  # repo@digest
    links: int = 0  # blobs unlinked from repositories
    blobs: int = 0
    blob_bytes: int = 0
    orphans: int = 0  # stored bytes that no record referenced (crash leftovers)
    orphan_bytes: int = 0
    spared: int = 0  # candidates rescued by the second look
    seconds: float = 0.0

    @property
    def bytes_reclaimed(self) -> int:
        return self.blob_bytes + self.orphan_bytes

    def to_dict(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "tags": self.tags, "manifests": self.manifests,
                "links": self.links, "blobs": self.blobs, "orphans": self.orphans,
                "bytes_reclaimed": self.bytes_reclaimed, "spared": self.spared,
                "seconds": round(self.seconds, 3)}


@dataclass
class _Marks:
    """What one repository keeps."""

    manifests: set[Digest] = field(default_factory=set)
    blobs: set[Digest] = field(default_factory=set)


@dataclass
class _Removed:
    """What the sweep of this run removed, to put back whatever a new write turns out to use."""

    revisions: dict[tuple[str, Digest], ManifestLink] = field(default_factory=dict)
    links: set[tuple[str, Digest]] = field(default_factory=set)
    records: dict[Digest, BlobRecord] = field(default_factory=dict)

    def referrers(self, name: str, subject: Digest) -> list[Digest]:
        return [d for (n, d), link in self.revisions.items()
                if n == name and link.subject == subject]


@dataclass
class _Candidates:
    manifests: dict[str, list[Digest]] = field(default_factory=dict)
    links: dict[str, list[Digest]] = field(default_factory=dict)
    blobs: list[BlobRecord] = field(default_factory=list)
    orphans: list[tuple[str, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(any(self.manifests.values()) or any(self.links.values()) or self.blobs
                    or self.orphans)


class GarbageCollector:
    def __init__(self, store: RegistryStore, settings: GcSettings | None = None) -> None:
        self.store = store
        self.settings = settings or GcSettings()
        self.pins = store.pins
        self._lock = asyncio.Lock()

    async def run(self, dry_run: bool = False) -> GcReport:
        """One collection; concurrent calls on this collector run one after the other, and
        one that deletes raises GcBusy while a collection elsewhere holds the lease."""
        async with self._lock:
            began = time.monotonic()
            started = await self.store.inventory.storage_now()
            if dry_run:
                return await self._collect(True, began, started)
            async with Lease.hold(self.store.driver, started) as lease:
                # A push skips rewriting a link it finds fresh only while no lease exists
                # (store/immutable.py), so "new" means written since the lease was taken.
                return await self._collect(False, began, await lease.taken_at())

    async def _collect(self, dry_run: bool, began: float, started: float) -> GcReport:
        report = GcReport(dry_run)
        reachable = BloomFilter(self.settings.bloom_bits)
        candidates = _Candidates()
        repositories = await self.store.repositories.names()
        for name in repositories:
            await self._collect_repository(name, started, reachable, candidates, report)
        await self._collect_blobs(started, reachable, candidates)
        if not dry_run and candidates:
            await self._pause()
            await self._spare_new_references(repositories, started, candidates, report)
            await self._sweep(repositories, started, candidates, report)
        else:
            self._report_candidates(candidates, report)
        report.seconds = time.monotonic() - began
        log.info("garbage collection (dry run): %(report)s" if dry_run
                 else "garbage collection: %(report)s",
                 {"dry_run": dry_run, "report": json.dumps(report.to_dict())})
        return report

    async def _pause(self) -> None:
        """Give writes that started before the decision time to finish."""
        await asyncio.sleep(self.settings.safety)

    # -- mark ----------------------------------------------------------------------

    async def _collect_repository(self, name: str, started: float, reachable: BloomFilter,
                                  candidates: _Candidates, report: GcReport) -> None:
        tags = [entry async for entry in self.store.tags.entries(name)]
        expired = set(expired_tags(self.settings.retention, name,
                                   [(t, written) for t, _, written in tags], started))
        for tag in sorted(expired):
            report.tags.append(f"{name}:{tag}")
            if not report.dry_run:
                await self.store.tags.delete(name, tag)
        young = started - self.settings.grace
        revisions = {d: info async for d, info in self.store.inventory.manifest_revisions(name)}
        roots = {digest for tag, digest, _ in tags if tag not in expired}
        roots |= {d for d, info in revisions.items()
                  if info.modified >= young or self.settings.keep_untagged or d in self.pins}
        marks = _Marks()
        await self._walk(name, roots, marks)
        links = []
        async for digest, info in self.store.inventory.blob_links(name):
            if info.modified >= young or digest in self.pins:
                marks.blobs.add(digest)
            links.append(digest)
        for digest in marks.manifests | marks.blobs:
            reachable.add(str(digest))
        candidates.manifests[name] = [d for d in revisions if d not in marks.manifests]
        candidates.links[name] = [d for d in links if d not in marks.blobs]

    async def _walk(self, name: str, roots: set[Digest], marks: _Marks,
                    removed: _Removed | None = None) -> None:
        """Mark manifests from `roots`: their blobs, index children and referrers (also
        through what this run `removed`, whose bytes are still stored)."""
        pending = list(roots)
        while pending:
            digest = pending.pop()
            if digest in marks.manifests:
                continue
            found = await self._read_manifest(name, digest, removed)
            if found is None:
                continue  # a tag pointing at a deleted manifest keeps nothing
            link, data = found
            try:
                manifest = parse_manifest(data, link.media_type)
            except ManifestError as exc:
                # Never guess: a manifest we cannot read may reference anything.
                raise RuntimeError(f"cannot read stored manifest {name}@{digest}: {exc}") from None
            marks.manifests.add(digest)
            marks.blobs.update(d.digest for d in manifest.blobs if not d.external)
            pending.extend(d.digest for d in manifest.children)
            pending.extend(await self.store.referrers.digests(name, digest))
            if removed is not None:
                pending.extend(removed.referrers(name, digest))

    async def _read_manifest(self, name: str, digest: Digest, removed: _Removed | None
                             ) -> tuple[ManifestLink, bytes] | None:
        if removed is None:
            return await self.store.manifests.get(name, digest)
        link = await self.store.manifests.link(name, digest) or removed.revisions.get((name, digest))
        record = await self.store.blobs.get(digest) or removed.records.get(digest)
        if link is None or record is None:
            return None
        try:
            return link, await self.store.blobs.read_all(record)
        except FileNotFoundError:
            return None

    async def _collect_blobs(self, started: float, reachable: BloomFilter,
                             candidates: _Candidates) -> None:
        young = started - self.settings.grace
        referenced = BloomFilter(self.settings.bloom_bits)  # data keys some record uses
        async for digest, info in self.store.inventory.blobs():
            record = await self.store.blobs.get(digest)
            if record is None:
                continue
            referenced.add(record.key)
            if (str(digest) not in reachable and info.modified < young
                    and digest not in self.pins):
                candidates.blobs.append(record)
        async for obj in self.store.inventory.blob_data():
            if obj.key not in referenced and obj.modified < young:
                candidates.orphans.append((obj.key, obj.size))

    # -- second look and sweep -----------------------------------------------------

    async def _rescued(self, repositories: list[str], started: float,
                       removed: _Removed | None = None) -> dict[str, _Marks]:
        """What manifests, tags and links written since the run started keep, per repository."""
        rescued: dict[str, _Marks] = {}
        names = set(repositories) | set(await self.store.repositories.names())
        for name in names:
            roots = {d async for d, info in self.store.inventory.manifest_revisions(name)
                     if info.modified >= started}
            roots |= {d async for _, d, written in self.store.tags.entries(name)
                      if written >= started}
            marks = _Marks(blobs={d async for d, info in self.store.inventory.blob_links(name)
                                  if info.modified >= started})
            await self._walk(name, roots, marks, removed)
            if marks.manifests or marks.blobs:
                rescued[name] = marks
        return rescued

    async def _spare_new_references(self, repositories: list[str], started: float,
                                    candidates: _Candidates, report: GcReport) -> None:
        rescued = await self._rescued(repositories, started)
        kept = {d for marks in rescued.values() for d in marks.manifests | marks.blobs}
        for name, marks in rescued.items():
            report.spared += _drop(candidates.manifests.get(name, []), marks.manifests)
            report.spared += _drop(candidates.links.get(name, []), marks.blobs)
        before = len(candidates.blobs)
        candidates.blobs = [r for r in candidates.blobs if r.digest not in kept]
        report.spared += before - len(candidates.blobs)

    async def _sweep(self, repositories: list[str], started: float, candidates: _Candidates,
                     report: GcReport) -> None:
        removed = _Removed()
        for name, digests in candidates.manifests.items():
            for digest in digests:
                info = await self.store.manifests.link_info(name, digest)
                if info is None or info.modified >= started or digest in self.pins:
                    continue
                link = await self.store.manifests.delete(name, digest, keep_tags=True)
                if link is not None:
                    removed.revisions[(name, digest)] = link
        for name, digests in candidates.links.items():
            for digest in digests:
                info = await self.store.repositories.blob_link_info(name, digest)
                if info is None or info.modified >= started or digest in self.pins:
                    continue
                await self.store.repositories.unlink_blob(name, digest)
                removed.links.add((name, digest))
        for record in candidates.blobs:
            if record.digest in self.pins:
                continue
            await self.store.blobs.delete_record(record.digest)
            removed.records[record.digest] = record
        # The last look: a write since the run started, here or on another gateway, may
        # use some of what just went. Put that back; only the rest loses its bytes.
        rescued = await self._rescued(repositories, started, removed)
        report.spared += await self._restore(rescued, removed)
        report.manifests.extend(f"{name}@{digest}" for name, digest in removed.revisions)
        report.links += len(removed.links)
        for record in removed.records.values():
            await self.store.blobs.delete_data(record.key)
            report.blobs += 1
            report.blob_bytes += record.size
        for key, size in candidates.orphans:
            await self.store.blobs.delete_data(key)
            report.orphans += 1
            report.orphan_bytes += size

    async def _restore(self, rescued: dict[str, _Marks], removed: _Removed) -> int:
        """Put back records, then links, then manifest links that `rescued` uses (a reader
        never finds a manifest before its blobs); take them out of `removed`."""
        kept = {d for marks in rescued.values() for d in marks.manifests | marks.blobs}
        restored = 0
        for digest, record in list(removed.records.items()):
            if digest in kept or digest in self.pins:
                await self.store.blobs.restore_record(record)
                del removed.records[digest]
                restored += 1
        for name, marks in rescued.items():
            for digest in marks.blobs:
                if (name, digest) in removed.links:
                    await self.store.repositories.link_blob(name, digest)
                    removed.links.discard((name, digest))
                    restored += 1
            for digest in marks.manifests:
                link = removed.revisions.pop((name, digest), None)
                if link is not None:
                    await self.store.manifests.restore(name, link)
                    restored += 1
        return restored

    @staticmethod
    def _report_candidates(candidates: _Candidates, report: GcReport) -> None:
        for name, digests in candidates.manifests.items():
            report.manifests.extend(f"{name}@{d}" for d in digests)
        report.links = sum(len(d) for d in candidates.links.values())
        report.blobs = len(candidates.blobs)
        report.blob_bytes = sum(r.size for r in candidates.blobs)
        report.orphans = len(candidates.orphans)
        report.orphan_bytes = sum(size for _, size in candidates.orphans)


def _drop(items: list[Digest], keep: set[Digest]) -> int:
    """Remove from `items` (in place) what `keep` holds; return how many went."""
    before = len(items)
    items[:] = [d for d in items if d not in keep]
    return before - len(items)
