"""The upstream registry the pull-through cases pull through, shared by both stacks.

One Debian `docker-registry` (distribution 2.8, plain HTTP on loopback, filesystem storage,
access log on) started once per bench run, holding one synthetic image of a few layers
(OCI, gzip level 0 of incompressible bytes) pushed before any stack starts. sshreg reaches
it as `sshreg serve --mirror upstream=URL` and the reference as distribution's proxy mode
(`proxy: {remoteurl: URL}`); every stack starts on empty storage, so the first pull of each
stack and run is cold. The access log says how many blob GETs the upstream answered, which
tells a cold pull (every blob once) from a warm one (none).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.support.images import make_image
from tests.support.processes import free_port
from tests.support.registry import DistributionRegistry, RegistryHTTP

from .image import PIECE
from .payload import Payload

MIRROR_CASES = ("mirror_cold_pull", "mirror_warm_pull", "mirror_normal_pull")
REPO = "bench/mirror"
TAG = "1"
START_TIMEOUT = 60.0
PUSH_TIMEOUT = 600.0


@dataclass(frozen=True)
class UpstreamImage:
    """What the upstream holds: `blobs` maps each digest (config, layers) to its size."""

    url: str
    repo: str
    tag: str
    manifest_digest: str
    blobs: dict[str, int]

    @property
    def size(self) -> int:
        """Blob bytes a pull moves (the manifest's few hundred bytes left out)."""
        return sum(self.blobs.values())


def layer_sizes(total: int, layers: int) -> list[int]:
    """`layers` payload sizes adding up to about `total` bytes."""
    return [total // layers] * layers


class Upstream:
    """`with Upstream(workdir, scratch, size, layers) as up:` starts the registry, pushes
    the image (built in `scratch`, removed once pushed) and stops it all at the end."""

    def __init__(self, workdir: Path, scratch: Path, size: int, layers: int) -> None:
        self.workdir = workdir
        self.scratch = scratch
        self.size = size
        self.layers = layers
        # distribution's access log is the evidence of what each pull fetched upstream
        self.registry = DistributionRegistry(workdir, port=free_port(outside_ephemeral=True),
                                             debug=False)
        self.image: UpstreamImage | None = None

    def __enter__(self) -> Upstream:
        self.registry.start(START_TIMEOUT)
        try:
            self.image = self._push()
        except BaseException:
            self.registry.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.registry.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _push(self) -> UpstreamImage:
        layout = self.scratch / "mirror-image"
        try:
            sizes = layer_sizes(self.size, self.layers)
            image = make_image(layout, sizes, tag=TAG, gzip_level=0,
                               contents=[Payload(size).pieces(PIECE) for size in sizes])
            digest = RegistryHTTP(self.registry.url, PUSH_TIMEOUT).push_image(REPO, TAG, image)
            if digest != image.digest:
                raise RuntimeError(f"upstream stored the manifest as {digest}, "
                                   f"not {image.digest}")
            blobs = {image.config.digest: image.config.size,
                     **{layer.digest: layer.size for layer in image.layers}}
            return UpstreamImage(self.registry.url, REPO, TAG, image.digest, blobs)
        finally:
            shutil.rmtree(layout, ignore_errors=True)

    def log_offset(self) -> int:
        return self.registry.log_offset()

    def blob_gets(self, since: int) -> Counter[str]:
        """Blob GETs of the image the upstream answered since log offset `since`."""
        return self.registry.blob_fetches(REPO, since=since)
