"""A 1 GiB blob streamed through the registry, in and out, with constant memory."""

from __future__ import annotations

import gc
import hashlib
import os
import threading
from collections.abc import AsyncIterator

import psutil

from sshreg.references import Digest

GIB = 1 << 30
PIECE = 1 << 20
MAX_RSS_GROWTH = 64 << 20


class PeakRss:
    """Samples this process's resident set size from a thread (so a busy event loop cannot
    hide a peak) and keeps the largest value seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.baseline = 0
        self.peak = 0

    def _sample(self) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.baseline = self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


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
    with PeakRss() as rss:
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
