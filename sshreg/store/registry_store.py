"""The registry's data model, laid out as objects on any `Driver`.

Layout (every key below is a small object unless noted):

    data/<xx>/<uuid>                                   blob bytes (large; written by an Upload)
    blobs/<alg>/<xx>/<hex>                             blob record: {"key": data key, "size": n}
    catalog/<name>/_repository                         marker: the repository exists
    repositories/<name>/_layers/<alg>/<hex>            the repository may serve this blob
    repositories/<name>/_manifests/revisions/<alg>/<hex>   manifest link: {"mediaType", "size", ...}
    repositories/<name>/_manifests/tags/<tag>          the tag's digest
    repositories/<name>/_referrers/<alg>/<hex>/<alg>/<hex> a descriptor of a manifest whose
                                                       subject is the first digest

Blob bytes are written once under a fresh `data/` key and published by writing the
record with `if_none_match`, which is O(1) whatever the size and makes concurrent pushes
of one blob safe: the loser deletes its copy. A blob is readable through a repository
only if the repository links it, so knowing a digest does not leak content.

R2 takes one write per second per key, so nothing is written that is already there:
objects whose bytes never change (links, referrer entries, repository markers) are created
with `if_none_match` after a look (`_write_immutable`), and concurrent writers of one tag in
this process are coalesced, the latest value winning (`coalesce.py`).

Everything a gateway needs is here, so several gateways can share one bucket. The only
local state is `_known_repositories`, which holds facts that cannot become false: a catalog
marker is never removed (garbage collection may empty a repository, never unlist it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..references import Digest
from ..storage.base import Driver, ObjectInfo, PreconditionFailed, StorageError, Upload
from .coalesce import SUPERSEDED, LatestWins

log = logging.getLogger(__name__)

REPOSITORY_MARKER = "_repository"
TAG_WRITE_ATTEMPTS = 8
GC_LEASE_KEY = "gc/running"  # held by a garbage collection that deletes (management/lease.py)
# An immutable object written less than this long ago is not written again. Its write time
# is what garbage collection ages it by, so an older one is renewed: never within a second
# of the last write (S3 keeps whole seconds), as R2 asks.
FRESH_SECONDS = 2.0


class DigestMismatch(ValueError):
    """Bytes read back from storage do not hash to the digest the client claimed."""


@dataclass(frozen=True)
class BlobRecord:
    digest: Digest
    size: int
    key: str  # where the bytes live


@dataclass(frozen=True)
class ManifestLink:
    """What a repository knows about one of its manifests, besides its bytes."""

    digest: Digest
    media_type: str
    size: int
    artifact_type: str | None = None
    subject: Digest | None = None
    annotations: dict[str, str] | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"mediaType": self.media_type, "size": self.size}
        if self.artifact_type:
            doc["artifactType"] = self.artifact_type
        if self.subject:
            doc["subject"] = str(self.subject)
        if self.annotations:
            doc["annotations"] = self.annotations
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, digest: Digest, data: bytes) -> ManifestLink:
        doc = json.loads(data)
        subject = doc.get("subject")
        return cls(
            digest=digest,
            media_type=doc["mediaType"],
            size=doc["size"],
            artifact_type=doc.get("artifactType"),
            subject=Digest.parse(subject) if subject else None,
            annotations=doc.get("annotations"),
        )

    def descriptor(self) -> dict[str, Any]:
        """The OCI descriptor a referrers index lists for this manifest."""
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            desc["artifactType"] = self.artifact_type
        if self.annotations:
            desc["annotations"] = self.annotations
        return desc


class ManifestCache:
    """Manifest bytes by digest, least recently used first out, within a byte budget.

    Content-addressed bytes never change, so a gateway may keep them: a manifest GET then
    costs the tag and link reads only (the link says whether this repository has it)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Digest, bytes] = OrderedDict()
        self._size = 0

    def get(self, digest: Digest) -> bytes | None:
        data = self._items.get(digest)
        if data is not None:
            self._items.move_to_end(digest)
        return data

    def put(self, digest: Digest, data: bytes) -> None:
        if len(data) > self.max_bytes // 4 or digest in self._items:
            return
        self._items[digest] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._size -= len(evicted)


def _digest_path(digest: Digest) -> str:
    return f"{digest.algorithm}/{digest.hex}"


def _digest_from_path(path: str) -> Digest:
    algorithm, _, encoded = path.partition("/")
    return Digest.parse(f"{algorithm}:{encoded}")


class RegistryStore:
    """Blobs, repositories, manifests, tags and referrers on top of a `Driver`."""

    def __init__(self, driver: Driver, manifest_cache_bytes: int = 16 << 20) -> None:
        self.driver = driver
        self._known_repositories: set[str] = set()
        self._manifests = ManifestCache(manifest_cache_bytes)
        self._tag_writes = LatestWins()

    # -- keys ----------------------------------------------------------------------

    @staticmethod
    def blob_key(digest: Digest) -> str:
        return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    @staticmethod
    def _repo(name: str) -> str:
        return f"repositories/{name}"

    def _layer_key(self, name: str, digest: Digest) -> str:
        return f"{self._repo(name)}/_layers/{_digest_path(digest)}"

    def _revision_key(self, name: str, digest: Digest) -> str:
        return f"{self._repo(name)}/_manifests/revisions/{_digest_path(digest)}"

    def _tags_prefix(self, name: str) -> str:
        return f"{self._repo(name)}/_manifests/tags/"

    def _referrers_prefix(self, name: str, subject: Digest) -> str:
        return f"{self._repo(name)}/_referrers/{_digest_path(subject)}/"

    async def _write_immutable(self, key: str, body: bytes) -> None:
        """Write an object whose bytes at `key` are always `body`, without writing it again.

        Missing: created with `if_none_match` (losing that race to another writer is fine).
        Present and younger than FRESH_SECONDS: left alone, unless a garbage collection is
        running (its sweep spares only what was written since it started, so the write must
        happen). Older: written again, to renew the age garbage collection judges it by."""
        info = await self.driver.stat(key)
        if info is None:
            with contextlib.suppress(PreconditionFailed):
                await self.driver.put(key, body, if_none_match=True)
            return
        if time.time() - info.modified < FRESH_SECONDS and not await self.gc_running():
            return
        await self.driver.put(key, body)

    async def gc_running(self) -> bool:
        """Whether a garbage collection that deletes holds its lease on this storage."""
        return await self.driver.stat(GC_LEASE_KEY) is not None

    async def health_check(self) -> None:
        """Raise unless storage answers a read (a missing object is a fine answer)."""
        await self.driver.stat("catalog/_health")

    # -- blobs ---------------------------------------------------------------------

    async def blob(self, digest: Digest) -> BlobRecord | None:
        obj = await self.driver.get(self.blob_key(digest))
        if obj is None:
            return None
        doc = json.loads(obj.data)
        return BlobRecord(digest, doc["size"], doc["key"])

    async def begin_blob_upload(self, part_size: int | None = None) -> Upload:
        name = uuid.uuid4().hex
        return await self.driver.begin_upload(f"data/{name[:2]}/{name}", part_size)

    async def commit_blob(self, digest: Digest, upload: Upload, *, verified: bool = True
                          ) -> BlobRecord:
        """Publish finished upload bytes as `digest`.

        `verified=False` means the caller hashed with another algorithm than the digest's
        (a sha512 digest announced only at the end): the bytes are then read back once and
        hashed before anything becomes visible.
        """
        await upload.commit()
        record = BlobRecord(digest, upload.size, upload.key)
        if not verified:
            hasher = digest.hasher()
            async for chunk in self.driver.read(upload.key):
                await asyncio.to_thread(hasher.update, chunk)
            if hasher.hexdigest() != digest.hex:
                await self.driver.delete(upload.key)
                raise DigestMismatch(f"content does not match {digest}")
        return await self._publish(record)

    async def put_blob_bytes(self, digest: Digest, data: bytes) -> BlobRecord:
        """Store a small blob (a manifest) given whole."""
        existing = await self.blob(digest)
        if existing and await self.driver.stat(existing.key):
            return existing
        upload = await self.begin_blob_upload()
        try:
            await upload.write(data)
        except BaseException:
            await upload.abort()
            raise
        return await self.commit_blob(digest, upload)

    async def _publish(self, record: BlobRecord) -> BlobRecord:
        body = json.dumps({"key": record.key, "size": record.size}).encode()
        key = self.blob_key(record.digest)
        try:
            await self.driver.put(key, body, if_none_match=True)
            return record
        except PreconditionFailed:
            pass
        # Someone published this digest first. Keep theirs if its bytes are still there.
        current = await self.driver.get(key)
        if current is not None:
            existing = json.loads(current.data)
            if existing["key"] == record.key:
                return record  # our write landed; a retry of it was what failed (S3)
            if await self.driver.stat(existing["key"]):
                await self.driver.delete(record.key)
                return BlobRecord(record.digest, existing["size"], existing["key"])
            try:
                await self.driver.put(key, body, if_match=current.etag)
                return record
            except PreconditionFailed:
                pass
        else:
            try:
                await self.driver.put(key, body, if_none_match=True)
                return record
            except PreconditionFailed:
                pass
        winner = await self.blob(record.digest)
        if winner is None:
            raise RuntimeError(f"blob record for {record.digest} vanished while publishing")
        if winner.key != record.key:
            await self.driver.delete(record.key)
        return winner

    def read_blob(self, record: BlobRecord, start: int = 0, end: int | None = None
                  ) -> AsyncIterator[bytes]:
        return self.driver.read(record.key, start, end)

    async def blob_bytes(self, record: BlobRecord) -> bytes:
        return b"".join([chunk async for chunk in self.read_blob(record)])

    async def blob_entries(self) -> AsyncIterator[tuple[Digest, ObjectInfo]]:
        """Every blob record in the store, in key order, page by page."""
        async for obj in self.driver.list("blobs/"):
            algorithm, _, rest = obj.key[len("blobs/"):].partition("/")
            try:
                yield Digest.parse(f"{algorithm}:{rest.rpartition('/')[2]}"), obj
            except ValueError:
                log.warning("ignoring unexpected object %s", obj.key)

    def data_entries(self) -> AsyncIterator[ObjectInfo]:
        """Every object holding blob bytes, referenced by a record or not."""
        return self.driver.list("data/")

    async def delete_blob(self, digest: Digest) -> None:
        """Remove a blob from the store entirely: its record, then its bytes."""
        record = await self.blob(digest)
        await self.delete_blob_record(digest)
        if record is not None:
            await self.driver.delete(record.key)

    async def delete_blob_record(self, digest: Digest) -> None:
        """Make a blob invisible (garbage collection); its bytes are deleted separately."""
        await self.driver.delete(self.blob_key(digest))

    async def restore_blob_record(self, record: BlobRecord) -> None:
        """Put back a record garbage collection removed, unless the blob was pushed again."""
        body = json.dumps({"key": record.key, "size": record.size}).encode()
        with contextlib.suppress(PreconditionFailed):
            await self.driver.put(self.blob_key(record.digest), body, if_none_match=True)

    # -- repositories ----------------------------------------------------------------

    async def _ensure_repository(self, name: str) -> None:
        if name in self._known_repositories:
            return
        key = f"catalog/{name}/{REPOSITORY_MARKER}"
        if await self.driver.stat(key) is None:  # never removed: no age to renew
            with contextlib.suppress(PreconditionFailed):
                await self.driver.put(key, b"", if_none_match=True)
        self._known_repositories.add(name)

    async def repository_exists(self, name: str) -> bool:
        if name in self._known_repositories:
            return True
        return await self.driver.stat(f"catalog/{name}/{REPOSITORY_MARKER}") is not None

    async def repositories(self) -> list[str]:
        """All repository names, sorted."""
        suffix = "/" + REPOSITORY_MARKER
        names = [
            obj.key[len("catalog/"): -len(suffix)]
            async for obj in self.driver.list("catalog/")
            if obj.key.endswith(suffix)
        ]
        return sorted(names)

    async def link_blob(self, name: str, digest: Digest) -> None:
        await self._ensure_repository(name)
        await self._write_immutable(self._layer_key(name, digest), b"")

    async def unlink_blob(self, name: str, digest: Digest) -> None:
        await self.driver.delete(self._layer_key(name, digest))

    async def is_blob_linked(self, name: str, digest: Digest) -> bool:
        return await self.driver.stat(self._layer_key(name, digest)) is not None

    async def repository_blob(self, name: str, digest: Digest) -> BlobRecord | None:
        """The blob, if this repository may serve it."""
        if not await self.is_blob_linked(name, digest):
            return None
        return await self.blob(digest)

    async def layer_entries(self, name: str) -> AsyncIterator[tuple[Digest, ObjectInfo]]:
        """The blobs this repository links, with their link objects (for age)."""
        async for digest, obj in self._digests_under(f"{self._repo(name)}/_layers/"):
            yield digest, obj

    async def _digests_under(self, prefix: str) -> AsyncIterator[tuple[Digest, ObjectInfo]]:
        async for obj in self.driver.list(prefix):
            try:
                yield _digest_from_path(obj.key[len(prefix):]), obj
            except ValueError:
                log.warning("ignoring unexpected object %s", obj.key)

    # -- manifests -------------------------------------------------------------------

    async def put_manifest(self, name: str, link: ManifestLink, data: bytes) -> None:
        await self._ensure_repository(name)
        await self.put_blob_bytes(link.digest, data)
        await self.restore_revision(name, link)

    async def restore_revision(self, name: str, link: ManifestLink) -> None:
        """Link a manifest whose bytes are stored into a repository (with its referrer entry)."""
        await self._write_immutable(self._revision_key(name, link.digest), link.to_json())
        if link.subject is not None:
            key = self._referrers_prefix(name, link.subject) + _digest_path(link.digest)
            await self._write_immutable(key, json.dumps(link.descriptor()).encode())

    async def manifest_link(self, name: str, digest: Digest) -> ManifestLink | None:
        obj = await self.driver.get(self._revision_key(name, digest))
        return ManifestLink.from_json(digest, obj.data) if obj else None

    async def manifest(self, name: str, digest: Digest) -> tuple[ManifestLink, bytes] | None:
        link = await self.manifest_link(name, digest)
        if link is None:
            return None
        data = self._manifests.get(digest)
        if data is None:
            record = await self.blob(digest)
            if record is None:
                log.warning("manifest %s@%s is linked but its blob is missing", name, digest)
                return None
            data = await self.blob_bytes(record)
            if Digest.of(data, digest.algorithm) != digest:
                raise StorageError(f"stored manifest {digest} does not match its digest")
            self._manifests.put(digest, data)
        return link, data

    async def delete_manifest(self, name: str, digest: Digest) -> bool:
        """Unlink a manifest from a repository, with the tags and referrer entry naming it."""
        link = await self.manifest_link(name, digest)
        if link is None:
            return False
        async for tag, tagged in self.tags(name):
            if tagged == digest:
                await self.delete_tag(name, tag)
        if link.subject is not None:
            key = self._referrers_prefix(name, link.subject) + _digest_path(digest)
            await self.driver.delete(key)
        await self.driver.delete(self._revision_key(name, digest))
        return True

    async def delete_revision(self, name: str, digest: Digest) -> ManifestLink | None:
        """Unlink a manifest (garbage collection): its referrer entry, then the link itself.
        Tags are left alone; the link removed is returned so that it can be put back."""
        link = await self.manifest_link(name, digest)
        if link is None:
            return None
        if link.subject is not None:
            key = self._referrers_prefix(name, link.subject) + _digest_path(digest)
            await self.driver.delete(key)
        await self.driver.delete(self._revision_key(name, digest))
        return link

    async def revision_entries(self, name: str) -> AsyncIterator[tuple[Digest, ObjectInfo]]:
        """The manifests of a repository, with their link objects (for age)."""
        async for digest, obj in self._digests_under(f"{self._repo(name)}/_manifests/revisions/"):
            yield digest, obj

    async def revision_info(self, name: str, digest: Digest) -> ObjectInfo | None:
        return await self.driver.stat(self._revision_key(name, digest))

    async def layer_info(self, name: str, digest: Digest) -> ObjectInfo | None:
        return await self.driver.stat(self._layer_key(name, digest))

    # -- tags --------------------------------------------------------------------------

    async def tag(self, name: str, tag: str) -> Digest | None:
        obj = await self.driver.get(self._tags_prefix(name) + tag)
        return Digest.parse(obj.data.decode()) if obj else None

    async def set_tag(self, name: str, tag: str, digest: Digest) -> Digest | None:
        """Point a tag at a manifest, as a compare-and-swap so no update is lost silently.
        Returns the digest the tag pointed at before (None if it was new), or `digest` itself
        when a later writer of this tag in this process superseded this one (nothing to undo).
        """
        key = self._tags_prefix(name) + tag
        result = await self._tag_writes.run(key, lambda: self._swap_tag(name, tag, digest))
        return digest if result is SUPERSEDED else result

    async def _swap_tag(self, name: str, tag: str, digest: Digest) -> Digest | None:
        key = self._tags_prefix(name) + tag
        value = str(digest).encode()
        for _ in range(TAG_WRITE_ATTEMPTS):
            current = await self.driver.get(key)
            if current is not None and current.data == value:
                return digest
            try:
                if current is None:
                    await self.driver.put(key, value, if_none_match=True)
                    return None
                await self.driver.put(key, value, if_match=current.etag)
                return Digest.parse(current.data.decode())
            except PreconditionFailed:
                continue
        raise PreconditionFailed(f"tag {name}:{tag} kept changing")

    async def undo_tag(self, name: str, tag: str, digest: Digest, previous: Digest | None) -> None:
        """Put a tag back where it was before `set_tag(name, tag, digest)`, unless it has
        been moved since (a conditional write: another writer's update wins)."""
        if previous == digest:
            return
        key = self._tags_prefix(name) + tag
        current = await self.driver.get(key)
        if current is None or current.data != str(digest).encode():
            return
        if previous is None:
            await self.driver.delete(key)  # S3 has no conditional delete: a tiny window
            return
        with contextlib.suppress(PreconditionFailed):
            await self.driver.put(key, str(previous).encode(), if_match=current.etag)

    async def delete_tag(self, name: str, tag: str) -> bool:
        key = self._tags_prefix(name) + tag
        if await self.driver.stat(key) is None:
            return False
        await self.driver.delete(key)
        return True

    async def tags(self, name: str, last: str = "") -> AsyncIterator[tuple[str, Digest]]:
        """Tags in lexical order after `last`, with the digests they point at."""
        prefix = self._tags_prefix(name)
        start = prefix + last if last else ""
        async for obj in self.driver.list(prefix, start_after=start):
            value = await self.driver.get(obj.key)
            if value is not None:
                yield obj.key[len(prefix):], Digest.parse(value.data.decode())

    async def tag_names(self, name: str, last: str = "") -> AsyncIterator[ObjectInfo]:
        """Tag objects in lexical order after `last` (cheaper than `tags`: no reads)."""
        prefix = self._tags_prefix(name)
        async for obj in self.driver.list(prefix, start_after=prefix + last if last else ""):
            yield obj

    # -- referrers ---------------------------------------------------------------------

    async def referrer_digests(self, name: str, subject: Digest) -> list[Digest]:
        """Digests of the manifests in `name` whose subject is `subject` (no reads)."""
        return [d async for d, _ in self._digests_under(self._referrers_prefix(name, subject))]

    async def tag_entries(self, name: str) -> AsyncIterator[tuple[str, Digest, float]]:
        """(tag, digest, time the tag was last written) for every tag of a repository."""
        prefix = self._tags_prefix(name)
        async for obj in self.driver.list(prefix):
            value = await self.driver.get(obj.key)
            if value is not None:
                yield obj.key[len(prefix):], Digest.parse(value.data.decode()), obj.modified

    async def referrers(self, name: str, subject: Digest) -> list[dict[str, Any]]:
        """Descriptors of the manifests in `name` whose subject is `subject`."""
        descriptors = []
        async for obj in self.driver.list(self._referrers_prefix(name, subject)):
            value = await self.driver.get(obj.key)
            if value is not None:
                descriptors.append(json.loads(value.data))
        return descriptors
