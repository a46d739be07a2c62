"""Thin helpers around oras-py (the `oras` Python package, 0.2.x) for artifact round trips.

What oras-py 0.2.43 sends (read from oras/provider.py, confirmed against distribution 2.8):
  - push, per file and then for the config: `HEAD /v2/<repo>/blobs/<digest>`; if 200 the blob
    is skipped. Otherwise, by default (monolithic): `POST /blobs/uploads/` (no body,
    `Content-Length: 0`), then one `PUT <location>?digest=…` carrying the whole file with
    `Content-Length` (the file is read into memory). With `do_chunked=True` (our `chunked=True`):
    `POST` (Content-Length 0), then `PATCH` per `chunk_size` bytes (default 16 MiB) with
    `Content-Range: <start>-<end>` (no `bytes=`), `Content-Length`, `Content-Type:
    application/octet-stream`, following each new Location; then `PUT ?digest=` with no body.
  - no `GET /v2/` probe; no cross-repository mount; auth only on a 401/403.
  - the manifest: `PUT /manifests/<tag>` with `Content-Type:
    application/vnd.oci.image.manifest.v1+json`, body `json.dumps` of the dict (default
    separators). Config defaults to the 2-byte `{}` with media type
    `application/vnd.unknown.config.v1+json`; layers get `org.opencontainers.image.title`.
    No `artifactType` field is written.
  - `subject` is supported: pass an `oras.oci.Subject(mediaType, digest, size)`; it is written
    into the manifest as `"subject"`. (`Subject.from_manifest` re-serializes a dict and may not
    match the registry's bytes, so `subject_of` below takes digest and size from the registry.)
    oras-py has no referrers-API call (`GET /v2/<repo>/referrers/<digest>`); use HTTP for it.
  - pull: `GET /manifests/<ref>` with `Accept: application/vnd.oci.image.manifest.v1+json,
    application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json,
    application/vnd.docker.distribution.manifest.list.v2+json` (one header, comma-joined), then
    `GET /blobs/<digest>` per layer, streamed to a file named by the title annotation. It does
    not verify digests; `Oras.pull` here does.

Bounding: oras-py calls requests without a timeout and wraps every request in a retry decorator
(5 attempts, sleeping 3+5+11+29+83 s on exceptions or a 500). `Oras` sets a default timeout on
the session and, unless `retries=True`, bypasses that decorator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import oras.client
import oras.defaults
import oras.oci
import oras.provider
import requests

from tests.support.hashing import sha256, sha256_file

DEFAULT_TIMEOUT = (10.0, 300.0)  # connect, read (seconds)
OCI_MANIFEST = oras.defaults.default_manifest_media_type


class _Registry(oras.provider.Registry):
    """oras-py's Registry with bounded requests: a default timeout, optional retries."""

    def __init__(self, *args: Any, timeout: tuple[float, float] | float = DEFAULT_TIMEOUT,
                 retries: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retries = retries
        session_request = self.session.request

        def request(method: str, url: str, **options: Any) -> requests.Response:
            options.setdefault("timeout", timeout)
            return session_request(method, url, **options)

        self.session.request = request

    def do_request(self, *args: Any, **kwargs: Any) -> requests.Response:
        if self.retries:
            return super().do_request(*args, **kwargs)
        unwrapped = oras.provider.Registry.do_request.__wrapped__
        response: requests.Response = unwrapped(self, *args, **kwargs)
        return response


@dataclass(frozen=True)
class Pushed:
    """What the registry answered for the manifest PUT."""

    reference: str
    digest: str  # Docker-Content-Digest
    status: int


class Oras:
    """oras-py bound to one plain-HTTP registry (`127.0.0.1:PORT`)."""

    def __init__(self, registry: str, *, chunked: bool = False,
                 chunk_size: int = oras.defaults.default_chunksize,
                 timeout: tuple[float, float] | float = DEFAULT_TIMEOUT,
                 retries: bool = False) -> None:
        self.registry = registry
        self.chunked = chunked
        self.chunk_size = chunk_size
        self.client = _Registry(hostname=registry, insecure=True, timeout=timeout,
                                retries=retries)
        assert isinstance(self.client, oras.client.OrasClient)

    def ref(self, repository: str, tag_or_digest: str) -> str:
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.registry}/{repository}{sep}{tag_or_digest}"

    def push(self, repository: str, tag: str, files: Sequence[Path], *,
             media_type: str | None = None, config: Path | None = None,
             config_media_type: str | None = None,
             annotations: dict[str, str] | None = None,
             subject: oras.oci.Subject | None = None) -> Pushed:
        """Push `files` as layers of an OCI manifest tagged `tag`; returns its digest.

        `media_type` applies to every file (default `application/vnd.oci.image.layer.v1.tar`);
        a directory is tarred and gzipped by oras-py. `subject` makes it a referrer."""
        target = self.ref(repository, tag)
        blobs = [f"{path}:{media_type}" if media_type else str(path) for path in files]
        manifest_config = None
        if config is not None:
            manifest_config = f"{config}:{config_media_type}" if config_media_type else str(config)
        response = self.client.push(
            target=target, files=blobs, disable_path_validation=True,
            manifest_config=manifest_config, manifest_annotations=annotations,
            # oras-py annotates `subject` as str but uses it as an oras.oci.Subject
            subject=subject,
            do_chunked=self.chunked, chunk_size=self.chunk_size, quiet=True)
        return Pushed(target, response.headers.get("Docker-Content-Digest", ""),
                      response.status_code)

    def pull(self, repository: str, reference: str, outdir: Path, *,
             verify: bool = True) -> list[Path]:
        """Pull every layer into `outdir` (named by title annotation); checks their digests."""
        outdir.mkdir(parents=True, exist_ok=True)
        target = self.ref(repository, reference)
        paths = [Path(p) for p in self.client.pull(target=target, outdir=str(outdir))]
        if verify:
            manifest = self.manifest(repository, reference)
            for layer, path in zip(manifest.get("layers", []), paths, strict=True):
                actual = sha256_file(path)
                if actual != layer["digest"] and layer["mediaType"] != \
                        oras.defaults.default_blob_dir_media_type:
                    raise ValueError(f"{path}: digest {actual}, manifest says {layer['digest']}")
        return paths

    def manifest(self, repository: str, reference: str) -> dict[str, Any]:
        return dict(self.client.get_manifest(self.ref(repository, reference)))

    def manifest_bytes(self, repository: str, reference: str,
                       accept: str = OCI_MANIFEST) -> tuple[bytes, str, str]:
        """Raw manifest: (body, Content-Type, Docker-Content-Digest or sha256 of the body)."""
        url = f"http://{self.registry}/v2/{repository}/manifests/{reference}"
        response = self.client.session.request("GET", url, headers={"Accept": accept})
        response.raise_for_status()
        digest = response.headers.get("Docker-Content-Digest") or \
            sha256(response.content)
        return response.content, response.headers.get("Content-Type", ""), digest

    def subject_of(self, repository: str, reference: str,
                   media_type: str = OCI_MANIFEST) -> oras.oci.Subject:
        """A Subject with the digest and size of the manifest as the registry stores it."""
        body, content_type, _ = self.manifest_bytes(repository, reference, media_type)
        return oras.oci.Subject(content_type.split(";")[0] or media_type,
                                sha256(body), len(body))

    def referrers(self, repository: str, digest: str,
                  artifact_type: str | None = None) -> requests.Response:
        """`GET /v2/<repo>/referrers/<digest>` (OCI 1.1; not an oras-py call)."""
        url = f"http://{self.registry}/v2/{repository}/referrers/{digest}"
        params = {"artifactType": artifact_type} if artifact_type else None
        return self.client.session.request("GET", url, params=params)

    def tags(self, repository: str) -> list[str]:
        return list(self.client.get_tags(f"{self.registry}/{repository}"))


def manifest_json(body: bytes) -> dict[str, Any]:
    return dict(json.loads(body))
