"""An OCI image layout on disk for skopeo: one gzip layer of incompressible data.

Built streaming, in constant memory: a tar holding one file of random bytes, gzip'ed at
level 0 (stored deflate blocks: random data does not compress anyway, and level 0 costs
only a copy and a CRC), hashed on the way (digest of the gzip, diff_id of the tar).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .payload import Payload
from .regclient import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST

PIECE = 4 << 20
TAR_BLOCK = 512


@dataclass(frozen=True)
class OciImage:
    directory: Path
    tag: str
    layer_size: int  # compressed layer bytes (what crosses the tunnel)

    @property
    def reference(self) -> str:
        return f"oci:{self.directory}:{self.tag}"


class _HashingWriter:
    """Writes the gzip stream to a file while hashing both sides of the compression."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed in finish()
        self.gzip = zlib.compressobj(0, zlib.DEFLATED, 31)
        self.diff_id = hashlib.sha256()
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.diff_id.update(data)
        self._out(self.gzip.compress(data))

    def _out(self, data: bytes) -> None:
        self.digest.update(data)
        self.file.write(data)
        self.size += len(data)

    def finish(self) -> None:
        self._out(self.gzip.flush())
        self.file.close()


def _write_blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _write_layer(blobs: Path, payload: Payload) -> tuple[dict[str, object], str]:
    """The gzip'ed tar of one file holding `payload`; returns its descriptor and diff_id."""
    tmp = blobs / "layer.tmp"
    writer = _HashingWriter(tmp)
    info = tarfile.TarInfo("random.bin")
    info.size = payload.size
    info.mode = 0o644
    writer.write(info.tobuf(format=tarfile.USTAR_FORMAT))
    for piece in payload.pieces(PIECE):
        writer.write(piece)
    writer.write(bytes(-payload.size % TAR_BLOCK + 2 * TAR_BLOCK))
    writer.finish()
    digest = writer.digest.hexdigest()
    tmp.rename(blobs / digest)
    descriptor = {"mediaType": OCI_LAYER_GZIP, "digest": f"sha256:{digest}", "size": writer.size}
    return descriptor, f"sha256:{writer.diff_id.hexdigest()}"


def build_oci_image(directory: Path, size: int, tag: str = "1") -> OciImage:
    """An OCI layout in `directory` whose single layer is about `size` bytes."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer, diff_id = _write_layer(blobs, Payload(size))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
                        ).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, **_write_blob(blobs, config)},
                           "layers": [layer]}).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, **_write_blob(blobs, manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (directory / "index.json").write_text(json.dumps(index))
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return OciImage(directory, tag, int(layer["size"]))  # type: ignore[call-overload]
