"""Upload sessions against a storage upload that reports what is done to it."""

from __future__ import annotations

import asyncio

from sshreg.registry.upload_sessions import UploadSession


class RecordingUpload:
    """A storage upload whose writes wait for `release`; it records the order of events."""

    def __init__(self) -> None:
        self.key = "data/recorded"
        self.size = 0
        self.events: list[str] = []
        self.release = asyncio.Event()

    async def write(self, data: bytes | bytearray) -> None:
        self.events.append("write begins")
        await self.release.wait()
        self.size += len(data)
        self.events.append("write ends")

    async def commit(self) -> None:
        self.events.append("commit")

    async def abort(self) -> None:
        self.events.append("abort")


async def test_aborting_a_session_waits_for_the_write_still_in_flight():
    """Storage is never asked to abort an upload while one of its writes is running (a
    client cancels, or the sweep aborts, right after a PATCH handed over its last batch)."""
    upload = RecordingUpload()
    session = UploadSession("app", upload, "SHA256:key")
    await session.append(b"the last batch")
    await asyncio.sleep(0)
    aborting = asyncio.create_task(session.abort())
    await asyncio.sleep(0.05)
    assert upload.events == ["write begins"]
    upload.release.set()
    await asyncio.wait_for(aborting, 5)
    assert upload.events == ["write begins", "write ends", "abort"]
