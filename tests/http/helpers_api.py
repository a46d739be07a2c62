"""Helpers for the HTTP-level tests: pushing blobs and manifests, checking error envelopes,
sending raw requests that aiohttp's client would normalize, and snapshotting the store."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import RawTestServer, TestClient
from multidict import CIMultiDict

from sshreg.oci import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from sshreg.references import Digest
from sshreg.registry.app import Registry
from sshreg.registry.settings import RegistrySettings
from sshreg.storage.base import Driver
from sshreg.store import paths
from sshreg.store.registry_store import RegistryStore
from tests.conftest import TEST_IDENTITY_HEADER, identify_from_test_header
from tests.support.hashing import digest_of

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_UNCOMPRESSED = "application/vnd.oci.image.layer.v1.tar"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# The digest of b"hello world": a well-formed digest nothing in a fresh store has.
UNKNOWN_DIGEST = "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"


@asynccontextmanager
async def serving(driver: Driver, **settings: Any) -> AsyncIterator[tuple[Registry, TestClient]]:
    """A registry on `driver` with these settings, started, and a client talking to it."""
    async with started(Registry(RegistryStore(driver), RegistrySettings(**settings),
                                identify=identify_from_test_header)) as served:
        yield served


@asynccontextmanager
async def started(registry: Registry) -> AsyncIterator[tuple[Registry, TestClient]]:
    """`registry` started, with a client talking to it; closed on the way out."""
    await registry.start()
    try:
        async with TestClient(RawTestServer(registry.handle)) as client:
            yield registry, client
    finally:
        await registry.close()


def as_identity(identity: str) -> dict[str, str]:
    return {TEST_IDENTITY_HEADER: identity}


def descriptor(media_type: str, data: bytes, algorithm: str = "sha256", **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data, algorithm), "size": len(data), **extra}


def image_manifest(
    config: dict[str, Any],
    layers: list[dict[str, Any]],
    *,
    media_type: str = OCI_MANIFEST,
    subject: dict[str, Any] | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
    indent: int | None = 3,
) -> bytes:
    """An image manifest; indented oddly so that a registry that re-serializes is caught."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    doc["config"] = config
    doc["layers"] = layers
    if subject is not None:
        doc["subject"] = subject
    if annotations is not None:
        doc["annotations"] = annotations
    return json.dumps(doc, indent=indent).encode()


def index_manifest(
    children: list[dict[str, Any]],
    *,
    media_type: str = OCI_INDEX,
    subject: dict[str, Any] | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, "manifests": children}
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    if subject is not None:
        doc["subject"] = subject
    if annotations is not None:
        doc["annotations"] = annotations
    return json.dumps(doc, indent="\t").encode()


async def error_code(resp: ClientResponse) -> str:
    """The code of the first error in the spec's JSON envelope (which must be well formed)."""
    assert resp.content_type == "application/json", resp.content_type
    body = await resp.json()
    assert set(body) == {"errors"}
    errors = body["errors"]
    assert isinstance(errors, list) and errors
    for error in errors:
        assert {"code", "message", "detail"} <= set(error)
        assert error["code"].replace("_", "").isalpha() and error["code"].isupper()
    return errors[0]["code"]


async def error_detail(resp: ClientResponse) -> Any:
    """The detail of the first error in the envelope: what the registry says was wrong."""
    await error_code(resp)
    return (await resp.json())["errors"][0]["detail"]


async def assert_error(resp: ClientResponse, status: int, code: str) -> None:
    assert resp.status == status, (resp.status, await resp.text())
    assert await error_code(resp) == code


async def push_blob(client: TestClient, name: str, data: bytes, *, algorithm: str = "sha256",
                    identity: str = "full") -> str:
    """Push with a single `POST ?digest=`; return the digest."""
    digest = digest_of(data, algorithm)
    resp = await client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, data=data,
                             headers=as_identity(identity))
    assert resp.status == 201, await resp.text()
    return digest


async def start_upload(client: TestClient, name: str, *, identity: str = "full") -> str:
    """Open an upload session; return its Location."""
    resp = await client.post(f"/v2/{name}/blobs/uploads/", headers=as_identity(identity))
    assert resp.status == 202, await resp.text()
    return resp.headers["Location"]


async def put_manifest(client: TestClient, name: str, reference: str, data: bytes,
                       media_type: str | None = OCI_MANIFEST, *, identity: str = "full",
                       params: dict[str, str] | list[tuple[str, str]] | None = None) -> ClientResponse:
    headers = as_identity(identity)
    if media_type is not None:
        headers["Content-Type"] = media_type
    return await client.put(f"/v2/{name}/manifests/{reference}", data=data, headers=headers,
                            params=params)


@dataclass
class Image:
    """A pushed image: its manifest bytes and digest, and the blobs it references."""

    manifest: bytes
    digest: str
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest)}


async def push_image(client: TestClient, name: str, tag: str | None = None, *, seed: str = "",
                     docker: bool = False, subject: dict[str, Any] | None = None,
                     artifact_type: str | None = None, annotations: dict[str, str] | None = None,
                     ) -> Image:
    """Push a config, one layer and a manifest referencing them (by tag, or by digest)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer bytes {seed}".encode() * 7
    await push_blob(client, name, config)
    await push_blob(client, name, layer)
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = image_manifest(
        descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
        [descriptor(DOCKER_LAYER if docker else OCI_LAYER, layer)],
        media_type=media_type, subject=subject, artifact_type=artifact_type, annotations=annotations,
    )
    digest = digest_of(manifest)
    resp = await put_manifest(client, name, tag or digest, manifest, media_type)
    assert resp.status == 201, await resp.text()
    return Image(manifest, digest, media_type, {digest_of(config): config, digest_of(layer): layer})


async def push_index(client: TestClient, name: str, children: list[Image], tag: str | None = None, *,
                     docker: bool = False) -> Image:
    media_type = DOCKER_MANIFEST_LIST if docker else OCI_INDEX
    manifest = index_manifest([c.descriptor for c in children], media_type=media_type)
    digest = digest_of(manifest)
    resp = await put_manifest(client, name, tag or digest, manifest, media_type)
    assert resp.status == 201, await resp.text()
    return Image(manifest, digest, media_type)


async def tags_of(client: TestClient, name: str) -> list[str]:
    resp = await client.get(f"/v2/{name}/tags/list")
    assert resp.status == 200
    return (await resp.json())["tags"]


# -- raw HTTP ----------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_request(client: TestClient, method: str, target: str, *,
                      headers: list[tuple[str, str]] = (), body: bytes = b"") -> RawResponse:
    """Send bytes exactly as written: aiohttp's client would normalize `..`, `//` and `%2e`."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    response_headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        key, _, value = line.partition(":")
        response_headers.add(key.strip(), value.strip())
    if "Content-Length" in response_headers:
        payload = payload[: int(response_headers["Content-Length"])]
    return RawResponse(int(status_line.split()[1]), response_headers, payload)


# -- what the storage backend holds ------------------------------------------------------


def files_under(root: Path) -> set[str]:
    """Every file below `root`, as paths relative to it."""
    found = set()
    for directory, _, names in os.walk(root):
        for name in names:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


async def stored_keys(driver: Driver, prefix: str = "") -> set[str]:
    """The keys of every finished object under `prefix`, on any backend."""
    return {obj.key async for obj in driver.list(prefix)}


async def blob_copies(driver: Driver) -> set[str]:
    """Keys holding blob bytes (`data/...` in the store layout)."""
    return await stored_keys(driver, "data/")


async def has_blob_record(driver: Driver, digest: str) -> bool:
    return await driver.stat(paths.blob_record(Digest.parse(digest))) is not None


async def leftover_uploads(driver: Driver) -> int:
    """Storage uploads still in progress (temporary files, multipart uploads), counted by
    aborting every one of them: call it when the test expects none."""
    return await driver.abort_stale_uploads(older_than=-3600)


Hook = Callable[[str], Awaitable[None]]


class HookedDriver:
    """A driver that runs `before_delete(key)`, `after_delete(key)` and `after_stat(key)`
    around the wrapped driver's calls (the collector's view of storage)."""

    def __init__(self, driver, *, before_delete: Hook | None = None,
                 after_delete: Hook | None = None, after_stat: Hook | None = None) -> None:
        self._driver = driver
        self.before_delete = before_delete
        self.after_delete = after_delete
        self.after_stat = after_stat

    def __getattr__(self, name: str):
        return getattr(self._driver, name)

    async def delete(self, key: str) -> None:
        if self.before_delete:
            await self.before_delete(key)
        await self._driver.delete(key)
        if self.after_delete:
            await self.after_delete(key)

    async def stat(self, key: str):
        info = await self._driver.stat(key)
        if self.after_stat:
            await self.after_stat(key)
        return info


class CountingDriver:
    """A driver that counts the calls made to it, by method name."""

    def __init__(self, driver) -> None:
        self._driver = driver
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str):
        attr = getattr(self._driver, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return counted
