"""The SSH receive window only re-opens for data the HTTP handler has consumed.

asyncssh 2.24.1 re-opens the full window when a paused channel resumes, ignoring what is
still queued; an HTTP handler that reads in small steps then lets the server buffer the
whole upload (measured: +306 MiB for a 300 MiB body). `sshreg.ssh.flow` fixes it; this
test drives the production gateway with a deliberately slow reader and a real `ssh -L`.
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncssh
import pytest
from aiohttp import web

from sshreg.keys.local_file import AuthorizedKeys
from sshreg.settings import Address
from sshreg.ssh.server import Gateway
from sshreg.ssh.settings import GatewaySettings
from tests.support.rss import PeakRss
from tests.support.sshreg_server import ClientKey, free_port

pytestmark = pytest.mark.integration

MiB = 1 << 20
BODY = 256 * MiB

SENDER = r"""
import socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
block = b"x" * (1 << 20)
for _ in range(size // len(block)):
    s.sendall(block)
print(s.recv(4096).split(b"\r\n\r\n", 1)[1].decode(), flush=True)
"""


async def slow_reader(request: web.BaseRequest) -> web.Response:
    """Consumes the body 64 KiB at a time with a pause after each read."""
    received = 0
    while chunk := await request.content.read(64 * 1024):
        received += len(chunk)
        await asyncio.sleep(0.001)
    return web.Response(text=str(received))


async def test_a_slow_http_reader_keeps_server_memory_within_one_window(tmp_path):
    key = ClientKey.generate(tmp_path, "client")
    (tmp_path / "authorized_keys").write_text(key.public + "\n")
    gateway = Gateway(
        GatewaySettings(listen=Address("127.0.0.1", 0)),
        AuthorizedKeys(tmp_path / "authorized_keys"),
        asyncssh.generate_private_key("ssh-ed25519"),
        web.Server(slow_reader),
    )
    await gateway.start()
    local = free_port()
    tunnel = await asyncio.create_subprocess_exec(
        "ssh", "-N", "-p", str(gateway.sockets[0].getsockname()[1]), "-i", str(key.path),
        "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        "-L", f"127.0.0.1:{local}:localhost:80", "user@127.0.0.1")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                (await asyncio.open_connection("127.0.0.1", local))[1].close()
                break
            except OSError:
                assert time.monotonic() < deadline, "tunnel did not come up"
                await asyncio.sleep(0.1)
        with PeakRss() as rss:
            sender = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SENDER, str(local), str(BODY),
                stdout=asyncio.subprocess.PIPE)
            reply = asyncio.create_task(sender.communicate())
            deadline = time.monotonic() + 180
            while not reply.done():
                assert time.monotonic() < deadline, "upload did not finish"
                await asyncio.sleep(0.05)
        out, _ = reply.result()
        assert out.decode().strip() == str(BODY)
    finally:
        tunnel.kill()
        await tunnel.wait()
        await gateway.close()
    growth = rss.growth / MiB
    assert growth < 32, f"server buffered {growth:.0f} MiB for a slow reader"
