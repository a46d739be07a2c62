"""The storage contract (`sshreg/storage/base.py`), checked on every backend.

Each test runs once per driver of the `driver` fixture (the filesystem, and S3 on a real
SeaweedFS with 5 MiB parts), so a backend is correct exactly when it passes this file.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from sshreg.storage.base import Driver, PreconditionFailed, StorageError

MiB = 1 << 20


async def keys(driver: Driver, prefix: str, start_after: str = "") -> list[str]:
    return [obj.key async for obj in driver.list(prefix, start_after)]


async def read_all(driver: Driver, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in driver.read(key, start, end)])


async def upload(driver: Driver, key: str, data: bytes, write_size: int = MiB + 7) -> None:
    up = await driver.begin_upload(key)
    for offset in range(0, len(data), write_size):
        await up.write(data[offset:offset + write_size])
    await up.commit()


# -- small objects -----------------------------------------------------------------------


async def test_put_then_get_returns_the_bytes_and_the_same_etag(driver):
    etag = await driver.put("objects/one", b"hello")
    blob = await driver.get("objects/one")
    assert blob is not None
    assert blob.data == b"hello"
    assert blob.etag == etag
    info = await driver.stat("objects/one")
    assert info is not None
    assert (info.key, info.size, info.etag) == ("objects/one", 5, etag)
    assert abs(info.modified - time.time()) < 120


async def test_missing_objects_are_none_and_deleting_them_is_fine(driver):
    assert await driver.get("objects/none") is None
    assert await driver.stat("objects/none") is None
    await driver.delete("objects/none")


async def test_put_replaces_and_changes_the_etag(driver):
    first = await driver.put("objects/x", b"one")
    second = await driver.put("objects/x", b"two!")
    assert first != second
    blob = await driver.get("objects/x")
    assert blob is not None and blob.data == b"two!" and blob.etag == second


async def test_empty_object(driver):
    await driver.put("objects/empty", b"")
    blob = await driver.get("objects/empty")
    assert blob is not None and blob.data == b""
    assert await read_all(driver, "objects/empty") == b""
    info = await driver.stat("objects/empty")
    assert info is not None and info.size == 0


async def test_delete_removes_the_object_and_it_leaves_listings(driver):
    await driver.put("objects/gone", b"x")
    await driver.put("objects/kept", b"y")
    await driver.delete("objects/gone")
    assert await driver.get("objects/gone") is None
    assert await keys(driver, "objects/") == ["objects/kept"]


# -- listing -----------------------------------------------------------------------------

# Byte order: '-' (0x2d) and '.' (0x2e) sort before '/' (0x2f), ':' (0x3a) after it. A store
# that walks a directory tree lists "a/x" before "a-b/x" and gets this wrong.
ORDERED = ["p/A", "p/a-b/x", "p/a.b", "p/a/x", "p/a/y/z", "p/a:c", "p/a_d", "p/b/y", "p/z"]
# What the registry's own listings need: names within one directory (tags), and nested
# keys whose directory names do not interleave with such siblings.
FLAT = ["t/-", "t/.x", "t/0", "t/9", "t/:", "t/A", "t/Z", "t/_", "t/a", "t/a-b", "t/a.b",
        "t/a0", "t/a:b", "t/a_b", "t/ab", "t/b"]
NESTED = ["n/a/b/c", "n/a/b/d", "n/a/c", "n/b", "n/c/a/a", "n/c/b"]


@pytest.fixture
async def listed(driver) -> Driver:
    for key in [*reversed(ORDERED), *reversed(FLAT), *reversed(NESTED)]:
        await driver.put(key, key.encode())
    await driver.put("q/outside", b"")
    await driver.put("p2", b"")
    return driver


async def test_list_yields_one_directory_in_byte_order_with_sizes(listed):
    objects = [obj async for obj in listed.list("t/")]
    assert [o.key for o in objects] == FLAT
    assert [o.size for o in objects] == [len(k) for k in FLAT]


@pytest.mark.parametrize(("start_after", "expected"), [
    ("t/a", FLAT[9:]), ("t/a.b", FLAT[11:]), ("t/", FLAT), ("t/b", []), ("s", FLAT),
    ("t/a1", FLAT[12:]),
])
async def test_list_start_after_in_one_directory(listed, start_after, expected):
    assert await keys(listed, "t/", start_after) == expected


async def test_list_nested_keys_in_order(listed):
    assert await keys(listed, "n/") == NESTED
    assert await keys(listed, "n/a/") == NESTED[:3]
    assert await keys(listed, "n/", "n/a/b/c") == NESTED[1:]
    assert await keys(listed, "n/", "n/a/c") == NESTED[3:]
    assert await keys(listed, "n/", "n/b") == NESTED[4:]


async def test_list_yields_every_key_across_directories_once(listed):
    # The order across directories is the backend's (the contract promises byte order only
    # within one directory): R2, S3 and the filesystem give byte order, SeaweedFS lists
    # as a directory tree. `tests/storage/test_filesystem_listing.py` checks the filesystem's order.
    listed_keys = await keys(listed, "p/")
    assert sorted(listed_keys) == ORDERED and len(set(listed_keys)) == len(listed_keys)


async def test_list_prefix_need_not_end_at_a_slash(listed):
    assert await keys(listed, "p/a/") == ["p/a/x", "p/a/y/z"]
    assert await keys(listed, "t/a") == [k for k in FLAT if k.startswith("t/a")]
    assert await keys(listed, "nothing/") == []
    assert await keys(listed, "nothing") == []
    assert sorted(await keys(listed, "p/a")) == [
        "p/a-b/x", "p/a.b", "p/a/x", "p/a/y/z", "p/a:c", "p/a_d"]
    assert sorted(await keys(listed, "p")) == [*ORDERED, "p2"]


async def test_list_can_stop_early(listed):
    seen = []
    async for obj in listed.list("t/"):
        seen.append(obj.key)
        if len(seen) == 2:
            break
    assert seen == FLAT[:2]


# -- conditional writes ------------------------------------------------------------------


async def test_if_none_match_creates_only_once(driver):
    await driver.put("tags/t", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await driver.put("tags/t", b"second", if_none_match=True)
    blob = await driver.get("tags/t")
    assert blob is not None and blob.data == b"first"


async def test_if_match_is_a_compare_and_swap(driver):
    etag = await driver.put("tags/t", b"v1")
    new = await driver.put("tags/t", b"v2", if_match=etag)
    assert new != etag
    with pytest.raises(PreconditionFailed):
        await driver.put("tags/t", b"v3", if_match=etag)  # stale
    blob = await driver.get("tags/t")
    assert blob is not None and blob.data == b"v2" and blob.etag == new


async def test_if_match_on_a_missing_key_fails(driver):
    etag = await driver.put("tags/elsewhere", b"v1")
    with pytest.raises(PreconditionFailed):
        await driver.put("tags/missing", b"v", if_match=etag)
    assert await driver.get("tags/missing") is None


async def test_concurrent_creates_have_exactly_one_winner(driver):
    async def attempt(i: int) -> bool:
        try:
            await driver.put("tags/race", str(i).encode(), if_none_match=True)
            return True
        except PreconditionFailed:
            return False

    results = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert results.count(True) == 1
    blob = await driver.get("tags/race")
    assert blob is not None and blob.data == str(results.index(True)).encode()


async def test_concurrent_swaps_have_exactly_one_winner(driver):
    etag = await driver.put("tags/cas", b"start")

    async def attempt(i: int) -> bool:
        try:
            await driver.put("tags/cas", str(i).encode(), if_match=etag)
            return True
        except PreconditionFailed:
            return False

    results = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert results.count(True) == 1
    blob = await driver.get("tags/cas")
    assert blob is not None and blob.data == str(results.index(True)).encode()


# -- reading ranges ----------------------------------------------------------------------


@pytest.fixture
async def stored(driver) -> tuple[Driver, bytes]:
    data = os.urandom(3 * MiB + 123)
    await driver.put("data/aa/ranged", data)
    return driver, data


@pytest.mark.parametrize(("start", "end"), [
    (0, None), (1, None), (MiB, None), (0, 1), (5, 10), (MiB - 1, 2 * MiB + 1),
    (3 * MiB, 3 * MiB + 123), (3 * MiB + 122, None), (3 * MiB + 100, 4 * MiB),
])
async def test_read_returns_the_byte_range(stored, start, end):
    driver, data = stored
    assert await read_all(driver, "data/aa/ranged", start, end) == data[start:end]


@pytest.mark.parametrize(("start", "end"), [(3 * MiB + 123, None), (4 * MiB, None), (7, 7)])
async def test_read_of_an_empty_range_yields_nothing(stored, start, end):
    driver, _ = stored
    assert await read_all(driver, "data/aa/ranged", start, end) == b""


async def test_read_streams_in_bounded_chunks(driver):
    data = os.urandom(9 * MiB + 1)  # larger than any driver's read chunk
    await driver.put("data/aa/large", data)
    chunks = [chunk async for chunk in driver.read("data/aa/large")]
    assert len(chunks) > 1
    assert max(len(c) for c in chunks) <= 4 * MiB
    assert b"".join(chunks) == data


@pytest.mark.parametrize(("start", "end"), [(0, None), (5, 10), (3, 3)])
async def test_read_of_a_missing_object_raises_file_not_found(driver, start, end):
    with pytest.raises(FileNotFoundError):
        await read_all(driver, "data/aa/missing", start, end)


# -- uploads -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 5 * MiB - 1, 5 * MiB, 12 * MiB + 3])
async def test_upload_is_invisible_until_commit(driver, size):
    data = os.urandom(size)
    up = await driver.begin_upload("data/bb/up")
    assert up.key == "data/bb/up"
    for offset in range(0, size, 3 * MiB + 1):
        await up.write(data[offset:offset + 3 * MiB + 1])
    assert up.size == size
    assert await driver.stat("data/bb/up") is None
    assert await keys(driver, "data/") == []
    await up.commit()
    info = await driver.stat("data/bb/up")
    assert info is not None and info.size == size
    assert await keys(driver, "data/") == ["data/bb/up"]
    assert await read_all(driver, "data/bb/up") == data


async def test_upload_accepts_bytearrays_the_caller_reuses(driver):
    buffer = bytearray(MiB)
    expected = bytearray()
    up = await driver.begin_upload("data/bb/reused")
    for i in range(7):
        buffer[:] = bytes([i]) * MiB
        await up.write(buffer)
        expected += buffer
    await up.commit()
    assert await read_all(driver, "data/bb/reused") == expected


@pytest.mark.parametrize("size", [0, MiB, 11 * MiB])
async def test_abort_leaves_nothing_and_may_be_repeated(driver, size):
    up = await driver.begin_upload("data/cc/aborted")
    if size:
        await up.write(os.urandom(size))
    await up.abort()
    await up.abort()
    assert await driver.stat("data/cc/aborted") is None
    assert await keys(driver, "data/") == []
    assert await driver.abort_stale_uploads(0) == 0


async def test_abort_after_commit_keeps_the_object(driver):
    await upload(driver, "data/cc/kept", b"abc")
    up = await driver.begin_upload("data/cc/kept2")
    await up.write(b"xyz")
    await up.commit()
    await up.abort()
    blob = await driver.get("data/cc/kept2")
    assert blob is not None and blob.data == b"xyz"


async def test_abort_stale_uploads_removes_only_old_uploads(driver):
    old = await driver.begin_upload("data/dd/old")
    await old.write(os.urandom(6 * MiB))  # past one S3 part, so the upload exists remotely
    await asyncio.sleep(3)  # S3 reports upload times in whole seconds
    young = await driver.begin_upload("data/dd/young")
    await young.write(os.urandom(6 * MiB))
    assert await driver.abort_stale_uploads(3600) == 0
    assert await driver.abort_stale_uploads(2.0) == 1
    with pytest.raises((StorageError, FileNotFoundError)):
        await old.commit()
    await old.abort()
    await young.commit()
    assert await keys(driver, "data/") == ["data/dd/young"]
    assert await driver.abort_stale_uploads(0) == 0


async def test_concurrent_uploads_do_not_mix(driver):
    blobs = {f"data/ee/{i}": os.urandom(2 * MiB + i * 1000) for i in range(4)}
    await asyncio.gather(*(upload(driver, key, data, 777_777) for key, data in blobs.items()))
    for key, data in blobs.items():
        assert await read_all(driver, key) == data
