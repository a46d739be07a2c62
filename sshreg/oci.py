"""Manifest media types and what a manifest references, for validation and for GC marking.

Manifests are stored byte for byte as the client sent them; this module only reads them
to find the blobs and child manifests they reference, their subject and artifact type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .references import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_MANIFESTS | INDEXES

# Layers that live outside the registry (Windows base layers): never checked for existence.
NON_DISTRIBUTABLE = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})


class ManifestError(ValueError):
    """The bytes are not a manifest this registry accepts."""


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    external: bool = False  # has `urls` / non-distributable: stored elsewhere

    @classmethod
    def parse(cls, doc: Any, where: str) -> Descriptor:
        if not isinstance(doc, dict):
            raise ManifestError(f"{where} is not a descriptor object")
        media_type = doc.get("mediaType")
        size = doc.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise ManifestError(f"{where} has no mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where} has an invalid size")
        try:
            digest = Digest.parse(doc.get("digest") if isinstance(doc.get("digest"), str) else "")
        except ValueError as exc:
            raise ManifestError(f"{where} has an invalid digest: {exc}") from None
        urls = doc.get("urls")
        return cls(media_type, digest, size, bool(urls) or media_type in NON_DISTRIBUTABLE)


@dataclass(frozen=True)
class Manifest:
    media_type: str
    blobs: tuple[Descriptor, ...] = ()  # config and layers
    children: tuple[Descriptor, ...] = ()  # manifests of an index
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)


def parse_manifest(data: bytes, content_type: str | None) -> Manifest:
    """Parse and check a manifest; the media type comes from Content-Type or the body."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # also: numbers over 4300 digits, deep nesting
        raise ManifestError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("not a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestError("mediaType is not a string")
    content_type = (content_type or "").split(";")[0].strip() or None
    if content_type in (None, "application/json", "application/octet-stream"):
        content_type = None
    media_type = content_type or declared or _guess(doc)
    if declared and content_type and declared != content_type:
        raise ManifestError(f"Content-Type {content_type} does not match mediaType {declared}")
    if media_type not in MANIFEST_TYPES:
        raise ManifestError(f"unsupported manifest media type {media_type!r}")
    if doc.get("schemaVersion") != 2:
        raise ManifestError("schemaVersion must be 2")

    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise ManifestError("annotations must map strings to strings")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestError("artifactType is not a string")
    subject = Descriptor.parse(doc["subject"], "subject") if "subject" in doc else None

    if media_type in IMAGE_MANIFESTS:
        config = Descriptor.parse(doc.get("config"), "config")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ManifestError("layers must be a list")
        blobs = (config, *(Descriptor.parse(d, f"layers[{i}]") for i, d in enumerate(layers)))
        if media_type == OCI_MANIFEST and artifact_type is None:
            artifact_type = config.media_type
        return Manifest(media_type, blobs=blobs, subject=subject,
                        artifact_type=artifact_type, annotations=annotations)

    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise ManifestError("manifests must be a list")
    children = tuple(Descriptor.parse(d, f"manifests[{i}]") for i, d in enumerate(manifests))
    return Manifest(media_type, children=children, subject=subject,
                    artifact_type=artifact_type, annotations=annotations)


def _guess(doc: dict[str, Any]) -> str | None:
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return None
