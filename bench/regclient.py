"""Registry calls on top of `httpclient`: the upload styles real clients use, pulls, HEADs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.support.hashing import sha256
from tests.support.images import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from tests.support.registry import MANIFEST_ACCEPT

from .httpclient import HttpConnection, HttpError, check
from .payload import Payload

MONOLITHIC_PIECE = 1 << 20
CHUNKED_PIECE = 32 << 10  # what Go clients (docker, skopeo) write per HTTP chunk


def _relative(location: str) -> str:
    """A Location header as path + query (distribution answers absolute URLs)."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + f"digest={digest}"


def start_upload(conn: HttpConnection, repo: str) -> str:
    response = conn.request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
    return _relative(response.header("location"))


def push_monolithic(conn: HttpConnection, repo: str, payload: Payload) -> None:
    """POST, then one PUT ?digest= carrying the body with Content-Length (containerd)."""
    location = start_upload(conn, repo)
    conn.send_stream("PUT", _with_digest(location, payload.digest),
                     {"Content-Type": "application/octet-stream"}, payload.size,
                     payload.pieces(MONOLITHIC_PIECE))
    check(conn.response(), (201,), "monolithic PUT")


def push_chunked(conn: HttpConnection, repo: str, payload: Payload) -> None:
    """POST, one streamed PATCH in chunked encoding, empty PUT ?digest= (docker, skopeo)."""
    location = start_upload(conn, repo)
    conn.send_chunked("PATCH", location, {"Content-Type": "application/octet-stream"},
                      payload.pieces(CHUNKED_PIECE))
    response = conn.response()
    check(response, (202,), "streamed PATCH")
    location = _relative(response.header("location"))
    conn.request("PUT", _with_digest(location, payload.digest), expect=(201,))


def push_bytes(conn: HttpConnection, repo: str, data: bytes) -> str:
    """A small blob in memory, monolithic; returns its digest."""
    digest = sha256(data)
    location = start_upload(conn, repo)
    conn.request("PUT", _with_digest(location, digest),
                 {"Content-Type": "application/octet-stream"}, data, expect=(201,))
    return digest


def get_blob(conn: HttpConnection, repo: str, digest: str, size: int) -> int:
    """Stream a blob to nowhere; returns the bytes received (checked against `size`)."""
    conn.send("GET", f"/v2/{repo}/blobs/{digest}")
    response = conn.response(keep=False)
    check(response, (200,), f"GET blob {digest}")
    if response.length != size:
        raise HttpError(f"blob {digest}: got {response.length} bytes, expected {size}")
    return response.length


@dataclass(frozen=True)
class PushedImage:
    repo: str
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digest: str
    size: int  # manifest + config + layer bytes


def push_image(conn: HttpConnection, repo: str, tag: str, layer: Payload) -> PushedImage:
    """A single-layer OCI image: the layer, a config, a manifest under `tag`."""
    push_monolithic(conn, repo, layer)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}).encode()
    config_digest = push_bytes(conn, repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}],
    }).encode()
    response = conn.request("PUT", f"/v2/{repo}/manifests/{tag}", {"Content-Type": OCI_MANIFEST},
                            manifest, expect=(201,))
    digest = response.header("docker-content-digest") or sha256(manifest)
    return PushedImage(repo, tag, digest, config_digest, layer.digest,
                       len(manifest) + len(config) + layer.size)


def pull_image(conn: HttpConnection, repo: str, tag: str) -> int:
    """GET the manifest, then every blob it names; returns the bytes received."""
    response = conn.request("GET", f"/v2/{repo}/manifests/{tag}", {"Accept": MANIFEST_ACCEPT})
    manifest = json.loads(response.body)
    total = response.length
    for descriptor in [manifest["config"], *manifest["layers"]]:
        total += get_blob(conn, repo, descriptor["digest"], descriptor["size"])
    return total


def head_manifest(conn: HttpConnection, repo: str, tag: str) -> None:
    response = conn.request("HEAD", f"/v2/{repo}/manifests/{tag}", {"Accept": MANIFEST_ACCEPT})
    if not response.header("docker-content-digest"):
        raise HttpError("manifest HEAD without Docker-Content-Digest")


def head_blob(conn: HttpConnection, repo: str, digest: str) -> None:
    conn.request("HEAD", f"/v2/{repo}/blobs/{digest}")
