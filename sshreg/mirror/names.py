"""Which requested repository names belong to a mirror, and what they are called upstream."""

from __future__ import annotations

from dataclasses import dataclass

from .settings import MirrorSettings


@dataclass(frozen=True)
class Mirrored:
    """A repository of a mirror: `name` is where it is stored and authorized
    (`docker.io/library/alpine`), `remote` its name upstream (`library/alpine`)."""

    mirror: MirrorSettings
    name: str
    remote: str


def remote_name(mirror: MirrorSettings, name: str) -> str:
    """Docker Hub's official images have one-segment names that mean `library/NAME`."""
    if mirror.is_docker_hub and "/" not in name:
        return f"library/{name}"
    return name


def mirrored(mirror: MirrorSettings, remote: str) -> Mirrored:
    remote = remote_name(mirror, remote)
    return Mirrored(mirror, f"{mirror.prefix}/{remote}", remote)


def by_prefix(mirrors: tuple[MirrorSettings, ...], name: str) -> Mirrored | None:
    """The mirror whose prefix `name` starts with (`docker.io/alpine`), if any."""
    for mirror in mirrors:
        if name.startswith(mirror.prefix + "/"):
            return mirrored(mirror, name[len(mirror.prefix) + 1:])
    return None


def default_mirror(mirrors: tuple[MirrorSettings, ...]) -> MirrorSettings | None:
    return next((m for m in mirrors if m.default), None)
