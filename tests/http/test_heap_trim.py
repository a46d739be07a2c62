"""The registry hands freed heap back to the kernel once no request is running."""

from __future__ import annotations

import asyncio
import os

from aiohttp.test_utils import RawTestServer, TestClient

from sshreg.memory import MALLOC_SETTINGS, HeapTrimmer, _find_malloc_trim, tune_malloc
from sshreg.registry.app import Registry
from sshreg.storage.filesystem import FilesystemDriver
from sshreg.store.registry_store import RegistryStore
from tests.conftest import identify_from_test_header
from tests.support.hashing import digest_of

from .helpers_api import as_identity, push_blob

MiB = 1 << 20


class CountingTrim:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


async def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_trims_once_after_the_last_request_ends():
    trim = CountingTrim()
    heap = HeapTrimmer(delay=0.05, trim=trim)
    heap.busy()
    heap.idle()
    heap.idle()  # a second idle while one is scheduled does not schedule another
    assert await wait_for(lambda: heap.trims == 1)
    await asyncio.sleep(0.1)
    assert trim.calls == [0]
    await heap.close()


async def test_a_request_starting_within_the_delay_postpones_the_trim():
    trim = CountingTrim()
    heap = HeapTrimmer(delay=0.2, trim=trim)
    heap.idle()
    await asyncio.sleep(0.1)
    heap.busy()
    await asyncio.sleep(0.3)
    assert trim.calls == []
    heap.idle()
    assert await wait_for(lambda: heap.trims == 1)
    await heap.close()


async def test_without_malloc_trim_nothing_is_scheduled(monkeypatch):
    monkeypatch.setattr("sshreg.memory._find_malloc_trim", lambda: None)
    heap = HeapTrimmer(delay=0.01)
    heap.idle()
    await asyncio.sleep(0.05)
    assert heap.trims == 0 and not heap.available
    await heap.close()


def test_glibc_malloc_trim_is_found_and_callable():
    trim = _find_malloc_trim()
    assert trim is not None  # Debian's glibc
    assert trim(0) in (0, 1)


async def test_registry_trims_only_when_its_last_request_has_ended(tmp_path):
    trim = CountingTrim()
    heap = HeapTrimmer(delay=0.2, trim=trim)
    registry = Registry(RegistryStore(FilesystemDriver(tmp_path)), heap=heap,
                        identify=identify_from_test_header)
    async with TestClient(RawTestServer(registry.handle)) as client:
        data = os.urandom(MiB)
        await push_blob(client, "team/app", data)
        for _ in range(5):  # requests closer together than the delay: no trim between them
            resp = await client.get(f"/v2/team/app/blobs/{digest_of(data)}",
                                    headers=as_identity("full"))
            assert resp.status == 200 and await resp.read() == data
        assert trim.calls == []
        assert await wait_for(lambda: heap.trims == 1)
    await registry.close()
    await heap.close()


def test_malloc_is_tuned_except_where_the_operator_chose_a_setting(monkeypatch):
    for name in MALLOC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert tune_malloc() == ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert tune_malloc() == list(MALLOC_SETTINGS)  # Debian's glibc accepts them all
