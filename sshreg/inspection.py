"""What is stored, described for people: a manifest with its parts, and the bytes each
repository links. `ssh reg.host inspect`/`du` and the registry browser show the same facts."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from .oci import INDEXES, ManifestError, parse_manifest
from .references import Digest
from .store.registry_store import RegistryStore


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class Unreadable(Exception):
    """A stored manifest that cannot be parsed."""


def platform_text(platform: Any) -> str:
    """`os/architecture/variant`, as the pusher wrote them (any JSON type)."""
    if not isinstance(platform, dict):
        return ""
    parts = [platform.get(k) for k in ("os", "architecture", "variant")]
    return "/".join(str(p) for p in parts if p)


async def describe_manifest(store: RegistryStore, name: str, digest: Digest
                            ) -> dict[str, Any] | None:
    """The manifest's type, parts (an index's platforms, or config and layers with the
    total), subject and referrers; None if the repository has no such manifest."""
    found = await store.manifests.get(name, digest)
    if found is None:
        return None
    link, data = found
    try:
        manifest = parse_manifest(data, link.media_type)
    except ManifestError as exc:
        raise Unreadable(f"stored manifest cannot be read: {exc}") from None
    info: dict[str, Any] = {"repository": name, "digest": str(digest),
                            "mediaType": link.media_type, "size": len(data)}
    if link.artifact_type:
        info["artifactType"] = link.artifact_type
    if link.subject:
        info["subject"] = str(link.subject)
    if manifest.media_type in INDEXES:
        doc = json.loads(data)
        info["manifests"] = [{"digest": str(c.digest), "size": c.size, "platform":
                              platform_text(doc["manifests"][i].get("platform"))}
                             for i, c in enumerate(manifest.children)]
    else:
        config, *layers = manifest.blobs
        info["config"] = {"digest": str(config.digest), "size": config.size,
                          "mediaType": config.media_type}
        info["layers"] = [{"digest": str(d.digest), "size": d.size, "mediaType": d.media_type}
                          for d in layers]
        info["totalSize"] = len(data) + sum(d.size for d in manifest.blobs)
    referrers = await store.referrers.descriptors(name, digest)
    info["referrers"] = [{"digest": r["digest"], "artifactType": r.get("artifactType")}
                         for r in referrers]
    return info


async def usage(store: RegistryStore, names: list[str]) -> list[dict[str, Any]]:
    """Bytes each repository links, and how much of it another repository links too."""
    linked = {name: await store.inventory.linked(name) for name in names}
    users = Counter(d for digests in linked.values() for d in digests)
    sizes = await store.inventory.sizes(set(users))
    return [{"repository": name, "blobs": len(ds), "bytes": sum(sizes[d] for d in ds),
             "shared": sum(sizes[d] for d in ds if users[d] > 1)}
            for name, ds in linked.items()]
