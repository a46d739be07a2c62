"""Repository names that try to escape the store: refused with NAME_INVALID, nothing written.

aiohttp's client normalizes `..`, `//` and `%2e` out of URLs, so these requests are written
as raw bytes on a socket, exactly as a hostile client would send them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from sshreg.oci import OCI_MANIFEST
from tests.support.hashing import digest_of

from .helpers_api import files_under, push_blob, raw_request, stored_keys

BLOB = b"escape attempt"
DIGEST = digest_of(BLOB)

TRAVERSAL_NAMES = [
    "../x", "../../x", "x/../y", "x/..", "..", "a//b", "/a", "a/",
    "%2e%2e/x", "%2E%2E/x", "x/%2e%2e/%2e%2e/y", "%2e%2e%2fx", "x%2f..%2f..%2fy", ".%2e/x",
    "a%2f%2fb", "a/./b", "%2e/x", "x/..%2f..", "App", "a%00b", "a%5cb",
]


Snapshot = Callable[[], Awaitable[tuple[set[str], set[str]]]]


@pytest.fixture
async def snapshot(client, driver, tmp_path) -> Snapshot:
    """With one blob in `src`: a function listing every object of the store and every file in
    the temporary root around it (which holds the filesystem store and its neighbours)."""
    await push_blob(client, "src", BLOB)

    async def take() -> tuple[set[str], set[str]]:
        return await stored_keys(driver), files_under(tmp_path.parent)

    return take


def requests_for(name: str) -> list[tuple[str, str, list[tuple[str, str]], bytes]]:
    """Every kind of write (and the reads) against repository `name`."""
    manifest = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","config":{},"layers":[]}'
    return [
        ("POST", f"/v2/{name}/blobs/uploads/?digest={DIGEST}", [], BLOB),
        ("POST", f"/v2/{name}/blobs/uploads/", [], b""),
        ("POST", f"/v2/{name}/blobs/uploads/?mount={DIGEST}&from=src", [], b""),
        ("PUT", f"/v2/{name}/manifests/latest", [("Content-Type", OCI_MANIFEST)], manifest),
        ("DELETE", f"/v2/{name}/manifests/latest", [], b""),
        ("DELETE", f"/v2/{name}/blobs/{DIGEST}", [], b""),
        ("GET", f"/v2/{name}/tags/list", [], b""),
        ("GET", f"/v2/{name}/blobs/{DIGEST}", [], b""),
        ("GET", f"/v2/{name}/manifests/latest", [], b""),
        ("GET", f"/v2/{name}/referrers/{DIGEST}", [], b""),
    ]


@pytest.mark.parametrize("name", TRAVERSAL_NAMES)
async def test_path_traversal_name_is_400_name_invalid_and_nothing_is_written(client, snapshot, name):
    before = await snapshot()
    for method, target, headers, body in requests_for(name):
        resp = await raw_request(client, method, target, headers=headers, body=body)
        assert resp.status == 400, (method, target, resp.status, resp.body)
        assert resp.json()["errors"][0]["code"] == "NAME_INVALID", (method, target)
    assert await snapshot() == before


async def test_mount_from_a_traversal_name_links_nothing(client, snapshot):
    before = await snapshot()
    for source in ("../src", "x/../src", "%2e%2e/src", "src/..", "src//"):
        resp = await raw_request(client, "POST", f"/v2/app/blobs/uploads/?mount={DIGEST}&from={source}")
        assert resp.status == 202
    keys, files = await snapshot()
    assert not any("/app/_layers/" in key for key in keys)
    assert keys == before[0]
    # Only the upload sessions the failed mounts opened may have left temporary files.
    assert {f for f in files - before[1] if "/_tmp/" not in f} == set()


@pytest.mark.parametrize("target", [
    "/v2/src/manifests/..", "/v2/src/manifests/.%2e", "/v2/src/manifests/..%2f..%2fx",
    "/v2/src/manifests/%2e%2e%2f%2e%2e%2f%2e%2e%2fescaped",
])
async def test_traversal_in_a_tag_writes_nothing(client, snapshot, target):
    before = await snapshot()
    resp = await raw_request(client, "PUT", target, headers=[("Content-Type", OCI_MANIFEST)],
                             body=b'{"schemaVersion":2,"config":{},"layers":[]}')
    assert resp.status in (400, 404)
    assert resp.json()["errors"]
    assert await snapshot() == before


@pytest.mark.parametrize("target", [
    "/v2/src/blobs/sha256:..%2f..%2f..%2fescaped", "/v2/src/blobs/sha256%3a..",
    "/v2/src/blobs/uploads/..", "/v2/src/blobs/uploads/..%2f..%2f_tmp",
    "/v2/src/referrers/sha256:..",
])
async def test_traversal_in_a_digest_or_session_id_writes_nothing(client, snapshot, target):
    before = await snapshot()
    for method in ("PUT", "PATCH", "DELETE", "GET"):
        resp = await raw_request(client, method, f"{target}?digest={DIGEST}", body=BLOB)
        assert 400 <= resp.status < 500
    assert await snapshot() == before
