"""A fault-injecting TCP proxy for an HTTP server (SeaweedFS's S3 port), run on command.

`FaultProxy(upstream_port).start()` listens on a free 127.0.0.1 port and relays bytes to the
upstream, in an event loop of its own thread, until told otherwise by `set(mode)`:

- `pass`: relay everything;
- `slow`: hold every chunk of an answer for `delay` seconds before relaying it (a slow server);
- `stall`: relay requests, never any answer (a server that hangs);
- `error`: answer every new request with `status` and an S3 error document, then close;
- `drop`: accept connections and reset them at once.

Changing the mode resets the connections in progress, so that a client's pooled keep-alive
connections meet the new behaviour at once (and a fault lands mid-request, as a real one
would). `bytes_up` counts the request bytes relayed, so a test can wait for a push to be
under way before injecting a fault.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.loopserver import LoopServer

_REASONS = {500: "Internal Server Error", 503: "Service Unavailable", 429: "Too Many Requests"}
_CODES = {500: "InternalError", 503: "ServiceUnavailable", 429: "SlowDown"}


class FaultProxy(LoopServer):
    thread_name = "fault-proxy"

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.delay = 0.0
        self.status = 503
        self.bytes_up = 0
        self.errors_sent = 0
        self._writers: set[asyncio.StreamWriter] = set()

    def set(self, mode: str, *, delay: float = 0.0, status: int = 503) -> None:
        """Switch to `mode` (see the module doc) and reset the connections in progress."""
        if mode not in ("pass", "slow", "stall", "error", "drop"):
            raise ValueError(mode)
        self._call(self._set(mode, delay, status))

    async def _set(self, mode: str, delay: float, status: int) -> None:
        self.mode, self.delay, self.status = mode, delay, status
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _close(self) -> None:
        await self._set("pass", 0.0, 503)
        await super()._close()

    # -- relaying ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "drop":
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            if self.mode == "error":
                await self._answer_error(reader, writer)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1",
                                                                     self.upstream_port)
            except OSError:
                writer.transport.abort()
                return
            self._writers.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer, upstream=True),
                                 self._pump(up_reader, writer, upstream=False),
                                 return_exceptions=True)
            self._writers.discard(up_writer)
            up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    upstream: bool) -> None:
        while data := await reader.read(1 << 16):
            if upstream:
                self.bytes_up += len(data)
            elif self.mode == "stall":
                await asyncio.Event().wait()  # until the connection is reset
            elif self.mode == "slow":
                await asyncio.sleep(self.delay)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def _answer_error(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                                 ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
        status = self.status
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{_CODES.get(status, "X")}'
                f"</Code><Message>injected fault</Message></Error>").encode()
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                     f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
        self.errors_sent += 1
        with contextlib.suppress(ConnectionError):
            await writer.drain()
