"""The spool of blob fills: what a reader may see, and what a new start clears."""

from __future__ import annotations

import asyncio
import os

import pytest

from sshreg.mirror.fills import FillFailed, FillReader, Fills, FillState, SpoolFiles
from sshreg.references import Digest

DIGEST = Digest.parse("sha256:" + "ab" * 32)


def test_a_start_clears_the_files_of_fills_nobody_runs_and_keeps_running_ones(tmp_path):
    stopped = SpoolFiles(tmp_path, DIGEST)
    running = SpoolFiles(tmp_path, Digest.parse("sha256:" + "cd" * 32))
    for files in (stopped, running):
        files.data.write_bytes(b"partial")
        files.write_state(FillState("an-id", "filling", 10))
        os.close(os.open(files.lock, os.O_CREAT | os.O_RDWR))
    held = running.try_lock()
    try:
        assert Fills(store=None, spool=tmp_path).sweep() == 2  # type: ignore[arg-type]
        assert not stopped.data.exists() and not stopped.state.exists()
        assert running.data.exists() and running.state.exists()
        assert stopped.lock.exists()  # another process may be opening it right now
    finally:
        os.close(held)


def test_a_fill_held_by_nobody_is_seen_as_gone(tmp_path):
    files = SpoolFiles(tmp_path, DIGEST)
    assert not files.filler_alive()
    fd = files.try_lock()
    assert files.filler_alive()
    os.close(fd)
    assert not files.filler_alive()


async def test_a_reader_gets_the_last_byte_only_once_the_fill_is_verified(tmp_path):
    files = SpoolFiles(tmp_path, DIGEST)
    files.data.write_bytes(b"0123456789")  # every byte arrived, not yet checked
    files.write_state(FillState("fill-1", "filling", 10))
    held = files.try_lock()
    reader = FillReader(files, "fill-1", idle_timeout=5)
    assert reader.open()
    chunks = reader.chunks()
    assert await anext(chunks) == b"012345678"
    waiting = asyncio.ensure_future(anext(chunks))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # the last byte waits for the digest check
    files.write_state(FillState("fill-1", "done", 10))
    assert await waiting == b"9"
    with pytest.raises(StopAsyncIteration):
        await anext(chunks)
    os.close(held)


async def test_a_reader_of_a_failed_fill_fails_without_the_last_byte(tmp_path):
    files = SpoolFiles(tmp_path, DIGEST)
    files.data.write_bytes(b"0123456789")
    files.write_state(FillState("fill-1", "filling", 10))
    held = files.try_lock()
    reader = FillReader(files, "fill-1", idle_timeout=5)
    assert reader.open()
    received = bytearray()
    files.write_state(FillState("fill-1", "failed", error="upstream bytes do not match"))
    with pytest.raises(FillFailed, match="do not match"):
        async for chunk in reader.chunks():
            received += chunk
    assert len(received) < 10
    os.close(held)


async def test_a_reader_whose_filler_died_fails_instead_of_waiting(tmp_path):
    files = SpoolFiles(tmp_path, DIGEST)
    files.data.write_bytes(b"01234")
    files.write_state(FillState("fill-1", "filling", 10))  # and nobody holds the lock
    reader = FillReader(files, "fill-1", idle_timeout=30)
    assert reader.open()
    with pytest.raises(FillFailed, match="went away"):
        async for _ in reader.chunks():
            pass
