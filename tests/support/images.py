"""Synthetic container images, made in pure Python with no network.

An image here is an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`):
each layer is a tar holding one directory and one file of random (incompressible) bytes, gzipped
by default. Everything is deterministic: the bytes of layer `i` depend only on
(`seed`, platform, `i`, its size, `gzip_level`), so two images made with the same seed share their
common leading layers, and a rerun gives the same digests. Layers are written streaming (constant
memory), so 1-2 GiB layers are fine (about 2-4 s per GiB with the default `gzip_level=0`).

`write_docker_archive` turns an image into a `docker load`/`docker-archive:` tarball and
`write_oci_archive` tars a layout for `ctr images import`/`oci-archive:`; both write a file, or
stream into a pipe (`docker load` and `ctr images import -` read stdin: no archive on disk).
The returned dataclasses carry every digest so a test can compare what a client pushed or
pulled byte for byte.

gzip note: `gzip_level=0` writes valid gzip made of stored deflate blocks (random data does not
compress anyway, and level 1 runs at only ~50 MB/s here); every client reads it like any gzip.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tests.support.hashing import CHUNK, GzipWriter, HashingWriter, sha256, sha256_file

OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

REF_NAME = "org.opencontainers.image.ref.name"  # the tag, as skopeo's `oci:DIR:TAG` reads it
CONTAINERD_NAME = "io.containerd.image.name"  # full name, as `ctr images import` reads it

EPOCH = "1970-01-01T00:00:00Z"


def manifest_for(config: bytes, layers: Sequence[bytes], note: str = "") -> bytes:
    """An OCI image manifest of a config and uncompressed layers given as bytes (`note`, an
    annotation, makes manifests of the same blobs differ)."""
    doc: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(layer), "size": len(layer)} for layer in layers]}
    if note:
        doc["annotations"] = {"note": note}
    return json.dumps(doc).encode()


def canonical_json(value: Any) -> bytes:
    """Compact, key-sorted JSON: the bytes whose digest names a manifest or config here."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Platform:
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


DEFAULT_PLATFORMS = (Platform("amd64", "linux"), Platform("arm64", "linux", "v8"))


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    platform: Platform | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class Layer:
    """A layer blob: `descriptor` is the (compressed) blob, `diff_id` the digest of its tar."""

    descriptor: Descriptor
    diff_id: str
    diff_size: int

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def size(self) -> int:
        return self.descriptor.size

    @property
    def compressed(self) -> bool:
        return self.descriptor.media_type.endswith("gzip")


@dataclass(frozen=True)
class Image:
    """One single-platform image in an OCI layout."""

    layout: Path
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Layer, ...]
    platform: Platform
    tag: str | None

    @property
    def digest(self) -> str:
        """The manifest digest (what a registry reports as Docker-Content-Digest)."""
        return self.manifest.digest

    @property
    def image_id(self) -> str:
        """Docker's image ID: the config digest."""
        return self.config.digest

    @property
    def blob_digests(self) -> list[str]:
        """Config first, then layers, as a registry must hold them."""
        return [self.config.digest, *(layer.digest for layer in self.layers)]

    def blob_path(self, digest: str) -> Path:
        return blob_path(self.layout, digest)

    def manifest_bytes(self) -> bytes:
        return self.blob_path(self.manifest.digest).read_bytes()

    def config_bytes(self) -> bytes:
        return self.blob_path(self.config.digest).read_bytes()


@dataclass(frozen=True)
class MultiArchImage:
    """An OCI image index over several single-platform images, in one layout."""

    layout: Path
    index: Descriptor
    images: tuple[Image, ...]
    tag: str | None

    @property
    def digest(self) -> str:
        return self.index.digest

    def index_bytes(self) -> bytes:
        return blob_path(self.layout, self.index.digest).read_bytes()

    def for_platform(self, architecture: str) -> Image:
        return next(i for i in self.images if i.platform.architecture == architecture)


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, hex_ = digest.split(":", 1)
    return layout / "blobs" / algorithm / hex_


def init_layout(layout: Path) -> Path:
    """Create an empty OCI layout (idempotent)."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    if not (layout / "index.json").exists():
        _write_index(layout, [])
    return layout


def _write_index(layout: Path, manifests: list[dict[str, Any]]) -> None:
    data = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    tmp = layout / "index.json.tmp"
    tmp.write_bytes(json.dumps(data, indent=2).encode())
    os.replace(tmp, layout / "index.json")


def add_to_index(layout: Path, descriptor: Descriptor, tag: str | None,
                 full_name: str | None = None) -> None:
    """Record `descriptor` in the layout's index.json, tagged `tag` (replacing that tag).

    `full_name` (e.g. `127.0.0.1:5000/repo:tag`) adds `io.containerd.image.name`, which
    `ctr images import` uses as the image name."""
    index = json.loads((layout / "index.json").read_text())
    manifests = [m for m in index.get("manifests", [])
                 if tag is None or m.get("annotations", {}).get(REF_NAME) != tag]
    annotations = dict(descriptor.annotations)
    if tag is not None:
        annotations[REF_NAME] = tag
    if full_name is not None:
        annotations[CONTAINERD_NAME] = full_name
    entry = Descriptor(descriptor.media_type, descriptor.digest, descriptor.size,
                       tuple(sorted(annotations.items())), descriptor.platform)
    manifests.append(entry.to_json())
    _write_index(layout, manifests)


def write_blob(layout: Path, data: bytes, media_type: str) -> Descriptor:
    """Store `data` as a blob in the layout and return its descriptor."""
    digest = sha256(data)
    path = blob_path(layout, digest)
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return Descriptor(media_type, digest, len(data))


def random_chunks(seed: str, size: int) -> Iterator[bytes]:
    """`size` pseudo-random bytes from `seed`, in 1 MiB chunks (deterministic)."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def _tar_header(name: str, size: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = size
        info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def write_layer(layout: Path, size: int, seed: str, *, directory: str = "layer",
                compressed: bool = True, gzip_level: int = 0,
                content: Iterable[bytes | memoryview] | None = None) -> Layer:
    """A layer holding `directory/` and `directory/data.bin` with `size` random bytes from
    `seed` (or the `size` bytes of `content`); gzipped (OCI `tar+gzip`) unless `compressed` is
    False (OCI `tar`). Streams to disk."""
    init_layout(layout)
    tmp = layout / "blobs" / "sha256" / f".layer-{os.getpid()}-{random.getrandbits(48):x}.tmp"
    try:
        with open(tmp, "wb") as f:
            blob = HashingWriter(f)
            compressor = GzipWriter(blob, gzip_level) if compressed else None
            tar = HashingWriter(compressor if compressor is not None else f)
            tar.write(_tar_header(directory + "/", 0, directory=True))
            tar.write(_tar_header(f"{directory}/data.bin", size))
            for chunk in random_chunks(seed, size) if content is None else content:
                tar.write(chunk)
            tar.write(b"\0" * (-size % 512) + b"\0" * 1024)  # padding + end of archive
            if compressor is not None:
                compressor.close()
        digest = blob.digest if compressed else tar.digest
        os.replace(tmp, blob_path(layout, digest))
    finally:
        tmp.unlink(missing_ok=True)
    media_type = OCI_LAYER_GZIP if compressed else OCI_LAYER_TAR
    return Layer(Descriptor(media_type, digest, blob.size if compressed else tar.size),
                 tar.digest, tar.size)


def image_config(diff_ids: Sequence[str], platform: Platform, *, label: str = "") -> bytes:
    """A config that docker, podman and containerd accept (created/history fixed to 1970)."""
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": EPOCH,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.sshreg.test": label or "synthetic"},
        },
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": EPOCH, "created_by": f"sshreg synthetic layer {i}"}
                    for i in range(len(diff_ids))],
    }
    if platform.variant:
        config["variant"] = platform.variant
    return canonical_json(config)


def make_image(layout: Path, layer_sizes: Sequence[int], *, seed: str | int = 0,
               tag: str | None = "latest", platform: Platform = DEFAULT_PLATFORMS[0],
               compressed: bool = True, gzip_level: int = 0, docker_media_types: bool = False,
               full_name: str | None = None, label: str = "",
               contents: Sequence[Iterable[bytes | memoryview]] | None = None) -> Image:
    """Write a single-platform image with one layer per entry of `layer_sizes` (bytes of random
    payload each, or of `contents[i]`) into the OCI layout `layout`, tag it `tag` in index.json
    (None: don't), and return its digests. `docker_media_types` writes a Docker schema 2
    manifest instead of OCI. `label` goes into the config, to get a distinct image over the
    same layers."""
    init_layout(layout)
    layers = [write_layer(layout, size, f"{seed}:{platform}:{i}:{size}", directory=f"layer{i}",
                          compressed=compressed, gzip_level=gzip_level,
                          content=contents[i] if contents is not None else None)
              for i, size in enumerate(layer_sizes)]
    if docker_media_types:
        if not compressed:
            raise ValueError("docker schema 2 layers here are gzip only")
        layers = [Layer(Descriptor(DOCKER_LAYER_GZIP, la.digest, la.size), la.diff_id,
                        la.diff_size) for la in layers]
    config = write_blob(layout, image_config([la.diff_id for la in layers], platform, label=label),
                        DOCKER_CONFIG if docker_media_types else OCI_CONFIG)
    manifest_type = DOCKER_MANIFEST if docker_media_types else OCI_MANIFEST
    manifest_json = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.to_json(),
        "layers": [la.descriptor.to_json() for la in layers],
    }
    manifest = write_blob(layout, canonical_json(manifest_json), manifest_type)
    if tag is not None:
        add_to_index(layout, manifest, tag, full_name)
    return Image(layout, manifest, config, tuple(layers), platform, tag)


def make_multiarch_image(layout: Path, layer_sizes: Sequence[int], *, seed: str | int = 0,
                         tag: str | None = "latest",
                         platforms: Sequence[Platform] = DEFAULT_PLATFORMS,
                         gzip_level: int = 0, full_name: str | None = None) -> MultiArchImage:
    """An OCI image index with one image per platform (distinct layers per platform)."""
    images = tuple(make_image(layout, layer_sizes, seed=seed, tag=None, platform=p,
                              gzip_level=gzip_level) for p in platforms)
    index_json = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [Descriptor(i.manifest.media_type, i.manifest.digest, i.manifest.size,
                                 platform=i.platform).to_json() for i in images],
    }
    index = write_blob(layout, canonical_json(index_json), OCI_INDEX)
    if tag is not None:
        add_to_index(layout, index, tag, full_name)
    return MultiArchImage(layout, index, images, tag)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, _BytesReader(data))


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else min(len(self.data), self.pos + n)
        out = bytes(self.data[self.pos:end])
        self.pos = end
        return out


def _open_tar(target: Path | BinaryIO) -> tarfile.TarFile:
    """A tar writer on a file path, or streaming into an open binary file (a pipe)."""
    if isinstance(target, Path):
        return tarfile.open(target, "w", format=tarfile.PAX_FORMAT)
    return tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT)


def write_docker_archive(image: Image, path: Path | BinaryIO, repo_tags: Sequence[str] = (),
                         *, compressed_layers: bool = False) -> Path | BinaryIO:
    """A `docker save`-style tarball (manifest.json, `<config hex>.json`, `<hex>/layer.tar`)
    for `docker load` or skopeo's `docker-archive:`. Layers are stored uncompressed as docker
    does (decompressed streaming), or as the gzip blobs with `compressed_layers`."""
    config_name = f"{image.config.hex}.json"
    layer_names: list[str] = []
    with _open_tar(path) as tar:
        _add_bytes(tar, config_name, image.config_bytes())
        for layer in image.layers:
            source = image.blob_path(layer.digest)
            if compressed_layers or not layer.compressed:
                name = f"{layer.descriptor.hex}/layer.tar"
                info = tarfile.TarInfo(name)
                info.size = layer.size
                info.mtime = 0
                with open(source, "rb") as f:
                    tar.addfile(info, f)
            else:
                name = f"{layer.diff_id.split(':', 1)[1]}/layer.tar"
                info = tarfile.TarInfo(name)
                info.size = layer.diff_size
                info.mtime = 0
                with open(source, "rb") as raw, _gunzip_reader(raw) as f:
                    tar.addfile(info, f)
            layer_names.append(name)
        manifest = [{"Config": config_name, "RepoTags": list(repo_tags), "Layers": layer_names}]
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
    return path


def _gunzip_reader(raw: BinaryIO) -> gzip.GzipFile:
    return gzip.GzipFile(fileobj=raw, mode="rb")


def write_oci_archive(layout: Path, path: Path | BinaryIO) -> Path | BinaryIO:
    """Tar up an OCI layout (what `ctr images import` and skopeo's `oci-archive:` read), into
    a file or streamed into an open binary file (a pipe)."""
    with _open_tar(path) as tar:
        for name in ("oci-layout", "index.json"):
            tar.add(layout / name, arcname=name)
        for blob in sorted((layout / "blobs").rglob("*")):
            if blob.is_file() and not blob.name.endswith(".tmp"):
                tar.add(blob, arcname=str(blob.relative_to(layout)))
    return path


def layout_blobs(layout: Path) -> dict[str, int]:
    """digest -> size for every blob in a layout (for comparing two layouts)."""
    out: dict[str, int] = {}
    for algorithm_dir in (layout / "blobs").iterdir():
        for blob in algorithm_dir.iterdir():
            if blob.is_file() and not blob.name.endswith(".tmp"):
                out[f"{algorithm_dir.name}:{blob.name}"] = blob.stat().st_size
    return out


def verify_layout(layout: Path) -> None:
    """Re-hash every blob of a layout; raise ValueError if a file's name is not its digest."""
    for digest in layout_blobs(layout):
        actual = sha256_file(blob_path(layout, digest))
        if actual != digest:
            raise ValueError(f"blob {digest} hashes to {actual}")


def index_entries(layout: Path) -> list[dict[str, Any]]:
    """The descriptors listed in a layout's index.json."""
    return list(json.loads((layout / "index.json").read_text()).get("manifests", []))


def manifest_layers(manifest: bytes | dict[str, Any]) -> list[str]:
    """Layer digests named by a manifest (raw bytes or parsed)."""
    data = json.loads(manifest) if isinstance(manifest, bytes) else manifest
    return [layer["digest"] for layer in data.get("layers", [])]
