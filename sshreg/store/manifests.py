"""Manifests: bytes stored as a blob, linked into a repository with what the registry must
answer without reading them (media type, size, subject), and kept in a small cache."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..references import Digest
from ..storage.base import Driver, ObjectInfo, StorageError
from . import paths
from .blobs import BlobStore
from .immutable import write_immutable
from .lru import Lru
from .referrers import ReferrerIndex
from .repositories import RepositoryStore
from .tags import TagStore

if TYPE_CHECKING:
    from ..oci import Manifest

log = logging.getLogger("sshreg.store")


@dataclass(frozen=True)
class ManifestLink:
    """What a repository knows about one of its manifests, besides its bytes."""

    digest: Digest
    media_type: str
    size: int
    artifact_type: str | None = None
    subject: Digest | None = None
    annotations: dict[str, str] | None = None

    @classmethod
    def describing(cls, digest: Digest, manifest: Manifest, size: int) -> ManifestLink:
        """The link of a parsed manifest of `size` bytes."""
        return cls(digest=digest, media_type=manifest.media_type, size=size,
                   artifact_type=manifest.artifact_type,
                   subject=manifest.subject.digest if manifest.subject else None,
                   annotations=manifest.annotations or None)

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


class ManifestStore:
    """Manifest links (revisions) per repository, with their referrer entries."""

    def __init__(self, driver: Driver, blobs: BlobStore, repositories: RepositoryStore,
                 tags: TagStore, referrers: ReferrerIndex, cache_bytes: int) -> None:
        self.driver = driver
        self.blobs = blobs
        self.repositories = repositories
        self.tags = tags
        self.referrers = referrers
        # Content-addressed bytes never change, so a gateway may keep them: a manifest GET
        # then costs the tag and link reads only (the link says whether this repository has it).
        self._cache: Lru[Digest, bytes] = Lru(cache_bytes, weight=len)

    async def put(self, name: str, link: ManifestLink, data: bytes) -> None:
        await self.repositories.ensure(name)
        await self.blobs.put_bytes(link.digest, data)
        await self.restore(name, link)

    async def restore(self, name: str, link: ManifestLink) -> None:
        """Link a manifest whose bytes are stored into a repository (with its referrer entry)."""
        await write_immutable(self.driver, paths.manifest_revision(name, link.digest),
                              link.to_json())
        if link.subject is not None:
            await self.referrers.add(name, link.subject, link.digest, link.descriptor())

    async def link(self, name: str, digest: Digest) -> ManifestLink | None:
        obj = await self.driver.get(paths.manifest_revision(name, digest))
        return ManifestLink.from_json(digest, obj.data) if obj else None

    async def link_info(self, name: str, digest: Digest) -> ObjectInfo | None:
        """The link object (its age), if this repository links the manifest."""
        return await self.driver.stat(paths.manifest_revision(name, digest))

    async def get(self, name: str, digest: Digest) -> tuple[ManifestLink, bytes] | None:
        link = await self.link(name, digest)
        if link is None:
            return None
        data = self._cache.get(digest)
        if data is None:
            record = await self.blobs.record_for_reading(digest)
            if record is None:
                log.warning("manifest %(repository)s@%(digest)s is linked but its blob is missing",
                            {"repository": name, "digest": str(digest)})
                return None
            data = await self.blobs.read_all(record)
            if Digest.of(data, digest.algorithm) != digest:
                raise StorageError(f"stored manifest {digest} does not match its digest")
            self._cache.put(digest, data)
        return link, data

    async def delete(self, name: str, digest: Digest, *, keep_tags: bool = False
                     ) -> ManifestLink | None:
        """Unlink a manifest from a repository: the tags naming it (unless `keep_tags`, as
        garbage collection does), its referrer entry, then the link itself. The link
        removed is returned (so that it can be put back), None if there was none."""
        link = await self.link(name, digest)
        if link is None:
            return None
        if not keep_tags:
            async for tag, tagged, _ in self.tags.entries(name):
                if tagged == digest:
                    await self.tags.delete(name, tag)
        if link.subject is not None:
            await self.referrers.remove(name, link.subject, digest)
        await self.driver.delete(paths.manifest_revision(name, digest))
        return link
