"""Empty objects (layer links and repository markers are empty) must not stall storage."""

from __future__ import annotations

import time


async def test_writing_empty_objects_keeps_the_next_calls_fast(driver):
    # botocore's `Expect: 100-continue` on an empty PutObject made SeaweedFS answer twice,
    # and the next request on that connection waited 60 s for its read timeout.
    started = time.monotonic()
    for i in range(5):
        await driver.put(f"markers/m{i}", b"")
        await driver.put(f"values/v{i}", b"x")
        assert (await driver.get(f"markers/m{i}")).data == b""
    assert time.monotonic() - started < 10
