"""A reference registry and a tiny HTTP reader for checking what clients pushed.

`DistributionRegistry(workdir).start()` runs Debian's `docker-registry` (distribution 2.8) on a
free 127.0.0.1 port with a filesystem root under `workdir`, deletes enabled, debug log with the
access log. It is the yardstick the client helpers were verified against, and lets a test
compare sshreg's behaviour with distribution's.

`RegistryHTTP(base_url)` fetches manifests and blobs over plain HTTP (urllib, bounded timeouts),
so a test can check that what a client pushed is byte for byte what it had; `call` makes any
request and returns error statuses as answers. `StreamedPatch` is docker's upload (POST, one
chunked PATCH) under the test's control, to cut it mid-body.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemon import Daemon
from tests.support.images import Image, MultiArchImage
from tests.support.processes import free_port, wait_until

START_TIMEOUT = 30.0
HTTP_TIMEOUT = 60.0

MANIFEST_ACCEPT = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
))


def distribution_binary() -> str | None:
    return shutil.which("docker-registry") or shutil.which("registry")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


CONFIG = """\
version: 0.1
log:
  level: {level}
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
"""


class DistributionRegistry(Daemon):
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, plain HTTP, no auth.

    `config`: distribution's whole configuration instead of the filesystem one above (the
    bench's S3 driver), written as JSON, which is valid YAML."""

    def __init__(self, workdir: Path, *, port: int | None = None, debug: bool = True,
                 config: dict[str, object] | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.debug = debug
        self.config = config

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = START_TIMEOUT) -> DistributionRegistry:
        binary = distribution_binary()
        if binary is None:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        if self.config is None:
            config.write_text(CONFIG.format(level="debug" if self.debug else "info",
                                            root=self.workdir / "data", port=self.port))
        else:
            config.write_text(json.dumps(self.config, indent=1))
            config.chmod(0o600)  # it may hold S3 credentials
        # distribution's S3 driver panics when AWS_CA_BUNDLE is set; only its env drops it.
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self._launch([binary, "serve", config], lambda: http_ok(self.url + "/v2/"), timeout,
                     "docker-registry to answer /v2/", env=env)
        return self


@dataclass(frozen=True)
class Fetched:
    body: bytes
    content_type: str
    docker_digest: str | None  # the Docker-Content-Digest header

    @property
    def digest(self) -> str:
        """sha256 of the body as received."""
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, whatever its status."""

    status: int
    headers: dict[str, str]
    body: bytes

    def error_codes(self) -> list[str]:
        """The spec's error codes in a JSON error body."""
        try:
            return [e["code"] for e in json.loads(self.body)["errors"]]
        except (ValueError, KeyError, TypeError):
            return []


class RegistryHTTP:
    """Minimal reader for a registry at `base_url` (http://127.0.0.1:PORT)."""

    def __init__(self, base_url: str, timeout: float = HTTP_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        """Any request; error statuses are answers too (not exceptions)."""
        url = path if path.startswith("http") else self.base_url + path
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, dict(exc.headers), exc.read())

    def _get(self, path: str, method: str = "GET", accept: str | None = None) -> Fetched:
        request = urllib.request.Request(self.base_url + path, method=method)
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            body = response.read()
            return Fetched(body, response.headers.get("Content-Type", ""),
                           response.headers.get("Docker-Content-Digest"))

    def manifest(self, repository: str, reference: str, accept: str = MANIFEST_ACCEPT) -> Fetched:
        return self._get(f"/v2/{repository}/manifests/{reference}", accept=accept)

    def blob(self, repository: str, digest: str) -> Fetched:
        return self._get(f"/v2/{repository}/blobs/{digest}")

    def has_blob(self, repository: str, digest: str) -> bool:
        try:
            self._get(f"/v2/{repository}/blobs/{digest}", method="HEAD")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def tags(self, repository: str) -> list[str]:
        return list(json.loads(self._get(f"/v2/{repository}/tags/list").body).get("tags") or [])

    def push_blob(self, repository: str, path: Path, digest: str) -> None:
        """Monolithic upload (POST, then PUT with the whole body), skipped if present."""
        if self.has_blob(repository, digest):
            return
        post = urllib.request.Request(f"{self.base_url}/v2/{repository}/blobs/uploads/",
                                      method="POST", data=b"")
        with urllib.request.urlopen(post, timeout=self.timeout) as response:
            location = response.headers["Location"]
        if location.startswith("/"):
            location = self.base_url + location
        separator = "&" if "?" in location else "?"
        with open(path, "rb") as body:
            put = urllib.request.Request(f"{location}{separator}digest={digest}", method="PUT",
                                         data=body, headers={
                                             "Content-Length": str(path.stat().st_size),
                                             "Content-Type": "application/octet-stream"})
            with urllib.request.urlopen(put, timeout=self.timeout) as response:
                if response.status != 201:
                    raise RuntimeError(f"blob PUT answered {response.status}")

    def push_manifest(self, repository: str, reference: str, body: bytes,
                      media_type: str) -> str:
        """PUT a manifest; returns the Docker-Content-Digest the registry answered."""
        request = urllib.request.Request(f"{self.base_url}/v2/{repository}/manifests/{reference}",
                                         method="PUT", data=body,
                                         headers={"Content-Type": media_type})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return str(response.headers.get("Docker-Content-Digest", ""))

    def push_image(self, repository: str, tag: str, image: Image | MultiArchImage) -> str:
        """Upload a synthetic image (or index with all its images) exactly as generated."""
        if isinstance(image, MultiArchImage):
            for child in image.images:
                self.push_image(repository, child.digest, child)
            return self.push_manifest(repository, tag, image.index_bytes(),
                                      image.index.media_type)
        for digest in image.blob_digests:
            self.push_blob(repository, image.blob_path(digest), digest)
        return self.push_manifest(repository, tag, image.manifest_bytes(),
                                  image.manifest.media_type)

    def wait_ready(self, timeout: float = 10.0) -> None:
        wait_until(lambda: http_ok(self.base_url + "/v2/"), timeout, f"{self.base_url}/v2/")


class StreamedPatch:
    """A blob upload as docker sends it: POST, then one PATCH whose chunked body the test
    sends piece by piece (`send`), and can leave unfinished to cut it, or `finish`."""

    def __init__(self, base_url: str, repository: str, timeout: float = HTTP_TIMEOUT) -> None:
        started = RegistryHTTP(base_url, timeout).call(
            "POST", f"/v2/{repository}/blobs/uploads/", b"")
        if started.status != 202:
            raise RuntimeError(f"POST answered {started.status}: {started.body!r}")
        self.location = started.headers["Location"]
        self.base_url = base_url
        parts = urllib.parse.urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.connection.putrequest("PATCH", self.location, skip_accept_encoding=True)
        self.connection.putheader("Content-Type", "application/octet-stream")
        self.connection.putheader("Transfer-Encoding", "chunked")
        self.connection.endheaders()
        self.sent = 0

    def send(self, data: bytes) -> None:
        self.connection.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.sent += len(data)

    def finish(self) -> Answer:
        """End the body and read the PATCH's answer."""
        self.connection.send(b"0\r\n\r\n")
        response = self.connection.getresponse()
        return Answer(response.status, dict(response.headers), response.read())

    def close(self) -> None:
        self.connection.close()
