"""The filesystem driver lists in S3's byte order across directories too, as R2 does.

(The storage contract only promises byte order within one directory, which is all the
registry relies on: SeaweedFS, the test S3 server, lists as a directory tree.)
"""

from __future__ import annotations

import pytest

from sshreg.storage.filesystem import FilesystemDriver

from .test_storage_contract import FLAT, NESTED, ORDERED, keys


@pytest.fixture
async def listed(tmp_path):
    driver = FilesystemDriver(tmp_path / "store")
    for key in [*reversed(ORDERED), *reversed(FLAT), *reversed(NESTED)]:
        await driver.put(key, key.encode())
    await driver.put("p2", b"")
    yield driver
    await driver.close()


async def test_keys_come_in_byte_order_across_directories(listed):
    assert await keys(listed, "p/") == ORDERED
    assert await keys(listed, "p") == [*ORDERED, "p2"]
    assert await keys(listed, "p/a") == ["p/a-b/x", "p/a.b", "p/a/x", "p/a/y/z", "p/a:c", "p/a_d"]


@pytest.mark.parametrize(("start_after", "expected"), [
    ("p/a.b", ORDERED[3:]),
    ("p/a", ORDERED[1:]),
    ("p/a/", ORDERED[3:]),
    ("p/a/x", ORDERED[4:]),
    ("p/a/y", ORDERED[4:]),
    ("p/b/y", ["p/z"]),
    ("p/zz", []),
    ("a", ORDERED),
])
async def test_start_after_works_across_directories(listed, start_after, expected):
    assert await keys(listed, "p/", start_after) == expected


async def test_start_after_a_marker_ending_in_a_slash(listed):
    assert await keys(listed, "t/", "t/a/") == FLAT[11:]
