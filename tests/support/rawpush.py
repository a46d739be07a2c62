"""Pushing and reading back images with the raw HTTP client, in every upload style.

Styles (what real clients send, design.md section 2):
- `patch_chunked`: POST, one PATCH streamed with `Transfer-Encoding: chunked`, empty PUT
  `?digest=` (docker, podman);
- `patch_ranges`: POST, several PATCHes with `Content-Range`, empty PUT (oras chunked);
- `put_monolithic`: POST, then PUT `?digest=` with the whole body (containerd);
- `post_digest`: one POST `?digest=` with the body (oras, conformance).

Every function takes an optional `checkpoint` that `rawhttp` calls before each body chunk and
after each request is sent, and raises `PushError` on an unexpected answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from tests.support.hashing import sha256
from tests.support.images import Image
from tests.support.rawhttp import Connection, Response
from tests.support.registry import MANIFEST_ACCEPT

STYLES = ("patch_chunked", "patch_ranges", "put_monolithic", "post_digest")
PIECE = 1 << 20

Checkpoint = Callable[[], None] | None


class PushError(Exception):
    def __init__(self, what: str, response: Response) -> None:
        super().__init__(f"{what}: {response.status} {response.body[:300]!r}")
        self.response = response



def pieces(data: bytes, size: int = PIECE) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _expect(response: Response, status: int, what: str) -> Response:
    if response.status != status:
        raise PushError(what, response)
    return response


def _location(response: Response) -> str:
    location = response.header("location")
    assert location, "no Location"
    return location


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def push_blob(conn: Connection, name: str, data: bytes, style: str, *,
              checkpoint: Checkpoint = None, piece: int = PIECE) -> Response:
    """Upload `data` to `name` in `style`; returns the 201 answer."""
    digest = sha256(data)
    uploads = f"/v2/{name}/blobs/uploads/"
    if style == "post_digest":
        answer = conn.request("POST", f"{uploads}?digest={digest}", pieces(data, piece),
                              headers={"Content-Length": str(len(data))}, checkpoint=checkpoint)
        return _expect(answer, 201, f"POST ?digest= {digest}")
    location = _location(_expect(conn.request("POST", uploads, checkpoint=checkpoint), 202,
                                 "POST"))
    if style == "put_monolithic":
        answer = conn.request("PUT", _with_digest(location, digest), pieces(data, piece),
                              headers={"Content-Length": str(len(data)),
                                       "Content-Type": "application/octet-stream"},
                              checkpoint=checkpoint)
        return _expect(answer, 201, f"PUT {digest}")
    if style == "patch_chunked":
        answer = conn.request("PATCH", location, pieces(data, piece), chunked=True,
                              checkpoint=checkpoint)
        location = _location(_expect(answer, 202, "PATCH"))
    elif style == "patch_ranges":
        offset = 0
        for chunk in pieces(data, max(piece, len(data) // 3 + 1)):
            answer = conn.request(
                "PATCH", location, pieces(chunk, piece), checkpoint=checkpoint,
                headers={"Content-Length": str(len(chunk)),
                         "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                         "Content-Type": "application/octet-stream"})
            location = _location(_expect(answer, 202, f"PATCH {offset}"))
            offset += len(chunk)
    else:
        raise ValueError(f"unknown upload style {style!r}")
    answer = conn.request("PUT", _with_digest(location, digest), checkpoint=checkpoint)
    return _expect(answer, 201, f"closing PUT {digest}")


def has_blob(conn: Connection, name: str, digest: str) -> bool:
    answer = conn.request("HEAD", f"/v2/{name}/blobs/{digest}")
    if answer.status not in (200, 404):
        raise PushError(f"HEAD {digest}", answer)
    return answer.status == 200


def push_manifest(conn: Connection, name: str, reference: str, body: bytes, media_type: str,
                  *, checkpoint: Checkpoint = None) -> Response:
    answer = conn.request("PUT", f"/v2/{name}/manifests/{reference}", pieces(body),
                          headers={"Content-Type": media_type,
                                   "Content-Length": str(len(body))}, checkpoint=checkpoint)
    return _expect(answer, 201, f"manifest PUT {name}:{reference}")


def push_image(conn: Connection, name: str, tags: list[str], image: Image,
               styles: list[str], *, checkpoint: Checkpoint = None) -> None:
    """Blobs first (skipping those the repository has, as clients do), then the manifest
    under each tag; `styles[i]` uploads the i-th blob (config first, then layers)."""
    for digest, style in zip(image.blob_digests, styles, strict=True):
        if not has_blob(conn, name, digest):
            push_blob(conn, name, image.blob_path(digest).read_bytes(), style,
                      checkpoint=checkpoint)
    for tag in tags:
        push_manifest(conn, name, tag, image.manifest_bytes(), image.manifest.media_type,
                      checkpoint=checkpoint)


def get_manifest(conn: Connection, name: str, reference: str) -> Response:
    return conn.request("GET", f"/v2/{name}/manifests/{reference}",
                        headers={"Accept": MANIFEST_ACCEPT})


def manifest_blobs(body: bytes) -> list[dict[str, Any]]:
    """The config and layer descriptors of an image manifest (an index has none)."""
    doc = json.loads(body)
    return ([doc["config"]] if "config" in doc else []) + list(doc.get("layers", []))


def pull_image(conn: Connection, name: str, tag: str, image: Image) -> None:
    """Pull `name:tag` and check it is `image`, byte for byte."""
    answer = get_manifest(conn, name, tag)
    assert answer.status == 200, answer
    assert answer.body == image.manifest_bytes()
    for digest in image.blob_digests:
        blob = conn.request("GET", f"/v2/{name}/blobs/{digest}")
        assert blob.status == 200 and sha256(blob.body) == digest, (digest, blob.status)
