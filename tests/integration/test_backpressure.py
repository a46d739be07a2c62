"""Backpressure end to end: slow storage must throttle the SSH window, not grow memory.

The service runs in this test process (so its memory can be sampled and its storage made
slow); the client is the real OpenSSH `ssh -L` plus a raw HTTP client in a subprocess.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from sshreg.config import load_config
from sshreg.service import Service
from sshreg.storage.filesystem import FilesystemDriver
from tests.support.rss import PeakRss
from tests.support.sshreg_server import ClientKey, free_port

pytestmark = pytest.mark.integration

MiB = 1 << 20

# Streams `size` bytes as one chunked POST ?digest= (the digest is computed first from the
# same deterministic stream), then prints the HTTP status line.
CLIENT = r"""
import hashlib, socket, sys
port, size, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
block = bytes(range(256)) * 4096
def chunks():
    sent = 0
    while sent < size:
        n = min(len(block), size - sent)
        yield block[:n]
        sent += n
digest = hashlib.sha256()
for c in chunks():
    digest.update(c)
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"POST /v2/%s/blobs/uploads/?digest=sha256:%s HTTP/1.1\r\nHost: localhost\r\n"
          b"Transfer-Encoding: chunked\r\n\r\n" % (name.encode(), digest.hexdigest().encode()))
for c in chunks():
    s.sendall(b"%x\r\n" % len(c) + c + b"\r\n")
s.sendall(b"0\r\n\r\n")
print(s.recv(4096).split(b"\r\n")[0].decode(), flush=True)
"""


class SlowDriver(FilesystemDriver):
    """A filesystem whose uploads accept at most `rate` bytes per second."""

    def __init__(self, root: Path, rate: float) -> None:
        super().__init__(root)
        self.rate = rate

    async def begin_upload(self, key: str, part_size: int | None = None):
        upload = await super().begin_upload(key, part_size)
        write, rate = upload.write, self.rate

        async def slow_write(data: bytes | bytearray) -> None:
            await asyncio.sleep(len(data) / rate)
            await write(data)

        upload.write = slow_write  # type: ignore[method-assign]
        return upload


async def _start_service(tmp_path: Path, driver: FilesystemDriver, key: ClientKey) -> Service:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "authorized_keys").write_text(key.public + "\n")
    config = load_config(listen="127.0.0.1:0", keys=str(keys_dir), storage=str(tmp_path / "data"))
    service = Service(config, driver=driver)
    await service.start()
    return service


async def _open_tunnel(service: Service, key: ClientKey) -> tuple[asyncio.subprocess.Process, int]:
    local = free_port()
    proc = await asyncio.create_subprocess_exec(
        "ssh", "-N", "-p", str(service.port), "-i", str(key.path), "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ExitOnForwardFailure=yes",
        "-L", f"127.0.0.1:{local}:localhost:80", "user@127.0.0.1")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", local)
            writer.close()
            return proc, local
        except OSError:
            await asyncio.sleep(0.1)
    proc.kill()
    raise TimeoutError("tunnel did not come up")


async def test_slow_storage_throttles_a_1gib_upload_instead_of_growing_memory(tmp_path):
    key = ClientKey.generate(tmp_path, "pusher")
    driver = SlowDriver(tmp_path / "data", rate=120e6)
    service = await _start_service(tmp_path, driver, key)
    tunnel, port = await _open_tunnel(service, key)
    try:
        with PeakRss() as rss:
            client = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLIENT, str(port), str(1024 * MiB), "slow/blob",
                stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(client.communicate(), timeout=240)
        assert out.decode().strip() == "HTTP/1.1 201 Created"
    finally:
        tunnel.terminate()
        await tunnel.wait()
        await service.stop(grace=5)
    growth = rss.growth / MiB
    # The server shares this process with pytest, so only its growth is the server's.
    assert growth < 64, f"server memory grew by {growth:.0f} MiB during a throttled upload"


async def test_a_client_killed_mid_upload_frees_its_handler_promptly(tmp_path):
    key = ClientKey.generate(tmp_path, "quitter")
    driver = SlowDriver(tmp_path / "data", rate=20e6)
    service = await _start_service(tmp_path, driver, key)
    tunnel, port = await _open_tunnel(service, key)
    try:
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, str(port), str(512 * MiB), "dead/blob",
            stdout=asyncio.subprocess.PIPE)
        deadline = time.monotonic() + 30
        while service.registry.in_flight == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert service.registry.in_flight == 1
        await asyncio.sleep(1)
        tunnel.kill()  # the user's ssh dies: the channel and its HTTP connection go away
        await tunnel.wait()
        client.kill()
        await client.wait()
        deadline = time.monotonic() + 10
        while service.registry.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert service.registry.in_flight == 0, "the upload handler outlived its client"
        assert [obj async for obj in driver.list("blobs/")] == [], "a partial blob is visible"
    finally:
        await service.stop(grace=5)
