"""An OCI image layout on disk for skopeo: one gzip layer of incompressible data.

Built streaming, in constant memory, by the test suite's image writer (gzip level 0: stored
deflate blocks, since random data does not compress anyway, and level 0 costs only a copy and
a CRC), from a `Payload` instead of seeded random bytes, so that making it costs next to
nothing and every run's layer is a new blob.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.images import make_image

from .payload import Payload

PIECE = 4 << 20


@dataclass(frozen=True)
class OciImage:
    directory: Path
    tag: str
    layer_size: int  # compressed layer bytes (what crosses the tunnel)

    @property
    def reference(self) -> str:
        return f"oci:{self.directory}:{self.tag}"


def build_oci_image(directory: Path, size: int, tag: str = "1") -> OciImage:
    """An OCI layout in `directory` whose single layer is about `size` bytes."""
    payload = Payload(size)
    image = make_image(directory, [size], tag=tag, contents=[payload.pieces(PIECE)])
    return OciImage(directory, tag, image.layers[0].size)
