"""A 1 GiB blob streamed through the registry, in and out, with constant memory."""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import AsyncIterator

from sshreg.references import Digest
from tests.support.rss import PeakRss

GIB = 1 << 30
PIECE = 1 << 20
MAX_RSS_GROWTH = 64 << 20


async def generated(size: int, hasher: hashlib._Hash) -> AsyncIterator[bytes]:
    """`size` pseudo-random bytes made on the fly (never held whole), hashed as they go."""
    block = bytearray(os.urandom(PIECE))
    for i in range(size // PIECE):
        block[:8] = i.to_bytes(8, "big")  # no two pieces alike
        piece = bytes(block)
        hasher.update(piece)
        yield piece


async def warm_up(client) -> None:
    """Run the measured flow once on 16 MiB, so thread pools and buffers exist before measuring."""
    hasher = hashlib.sha256()
    location = (await client.post("/v2/warm/blobs/uploads/")).headers["Location"]
    assert (await client.patch(location, data=generated(16 << 20, hasher))).status == 202
    resp = await client.put(location, params={"digest": f"sha256:{hasher.hexdigest()}"})
    assert resp.status == 201
    await (await client.get(resp.headers["Location"])).read()


async def test_one_gib_chunked_upload_and_download_run_in_constant_memory(client, registry):
    await warm_up(client)
    sent = hashlib.sha256()
    gc.collect()
    with PeakRss(interval=0.005) as rss:
        resp = await client.post("/v2/big/blobs/uploads/")
        assert resp.status == 202
        location = resp.headers["Location"]
        resp = await client.patch(location, data=generated(GIB, sent))  # chunked, no length
        assert resp.status == 202
        assert resp.headers["Range"] == f"0-{GIB - 1}"
        digest = f"sha256:{sent.hexdigest()}"
        resp = await client.put(location, params={"digest": digest})
        assert resp.status == 201
        upload_growth = rss.growth

        received = hashlib.sha256()
        size = 0
        resp = await client.get(f"/v2/big/blobs/{digest}")
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(GIB)
        async for chunk in resp.content.iter_chunked(PIECE):
            received.update(chunk)
            size += len(chunk)
    await registry.store.blobs.delete(Digest.parse(digest))  # do not leave 1 GiB in the temp dir
    assert size == GIB
    assert f"sha256:{received.hexdigest()}" == digest
    assert upload_growth < MAX_RSS_GROWTH, f"upload grew RSS by {upload_growth >> 20} MiB"
    assert rss.growth < MAX_RSS_GROWTH, f"upload + download grew RSS by {rss.growth >> 20} MiB"
