"""An S3 front for SeaweedFS that enforces the Cloudflare R2 rules SeaweedFS does not.

`R2Proxy(upstream_port).start()` listens on a free 127.0.0.1 port, in an event loop of its own
thread, and relays HTTP/1.1 to the upstream, streaming bodies both ways (each connection
buffers at most about two 256 KiB reads). Before relaying a request it applies R2's
documented limits (developers.cloudflare.com/r2/platform/limits,
/r2/objects/multipart-objects) and answers as R2 does when one is broken:

- **1 write per second per key** -> `429 TooManyRequests`. Writes are the requests that
  replace or remove an object: PutObject, CopyObject (its destination),
  CompleteMultipartUpload and DeleteObject. Every write relayed counts, whatever the upstream
  answers (a conditional PUT that ends in 412 counts too): stricter than R2 may be, never
  looser. UploadPart, CreateMultipartUpload, AbortMultipartUpload and reads are free.
- **5 GiB less 5 MiB per request body** (PutObject, UploadPart) -> `400 EntityTooLarge`.
- **at most 10,000 parts** (UploadPart with a higher number, or a Complete listing more)
  -> `400 InvalidArgument` / `400 InvalidPart`.
- **equal non-trailing parts, the last no larger**, checked at CompleteMultipartUpload from
  the sizes of the parts this proxy relayed -> `400 InvalidPart`.
- **checksums R2 rejects**: CRC64NVME (`x-amz-checksum-crc64nvme`, or it named by
  `x-amz-sdk-checksum-algorithm`), `aws-chunked` bodies and trailing checksums
  (`x-amz-content-sha256: STREAMING-...-TRAILER`, `x-amz-trailer`) -> `501 NotImplemented`.

`Expect: 100-continue` is answered by the proxy (the upstream never sees it), so a refused
request never sends its body. `stats` counts what was refused, by S3 error code.

`R2ProxyProcess` runs the same proxy in a child process (`python -m tests.support.r2proxy`):
the session's S3 goes through it, so relaying gigabytes never takes the test process's GIL
from the threads that time and measure a push. Its `stats` are read from `STATS_PATH`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.loopserver import LoopServer
from tests.support.processes import Process, free_port, port_is_free

MAX_REQUEST_BODY = (5 << 30) - (5 << 20)  # "5 MiB less than 5 GiB"
MAX_PARTS = 10_000
WRITE_INTERVAL = 1.0
CHUNK = 1 << 18
_REASONS = {400: "Bad Request", 429: "Too Many Requests", 501: "Not Implemented"}
_PART_NUMBER = re.compile(rb"<PartNumber>\s*(\d+)\s*</PartNumber>")
MAX_COMPLETE_BODY = 4 << 20  # a Complete request lists at most 10,000 parts
# (method, has uploadId) of the writes besides PUT: DeleteObject, CompleteMultipartUpload
_KEY_WRITES = (("DELETE", False), ("POST", True))
STATS_PATH = "/_r2proxy/stats"  # no S3 bucket name holds an underscore
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


Upstream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Request:
    method: str
    target: str
    head: list[tuple[str, str]]  # header lines as sent, minus Expect

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.head if k.lower() == name), None)

    @property
    def key(self) -> str:
        """bucket/key of a path-style request ("" for a bucket-level request)."""
        path = unquote(urlsplit(self.target).path).lstrip("/")
        return path if "/" in path.strip("/") else ""

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    @property
    def length(self) -> int:
        return int(self.header("content-length") or 0)

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.header("transfer-encoding") or "").lower()


class R2Proxy(LoopServer):
    thread_name = "r2-proxy"
    buffer_limit = CHUNK

    def __init__(self, upstream_port: int, *, write_interval: float = WRITE_INTERVAL,
                 port: int | None = None) -> None:
        super().__init__(port)
        self.upstream_port = upstream_port
        self.write_interval = write_interval
        self.stats: Counter[str] = Counter()
        self._last_write: dict[str, float] = {}
        self._parts: dict[str, dict[int, int]] = {}  # upload id -> part number -> size
        self._connections: set[asyncio.StreamWriter] = set()

    async def _close(self) -> None:
        for writer in list(self._connections):
            writer.transport.abort()  # each relay then ends on its own...
        for _ in range(50):  # ...rather than be cancelled, which asyncio logs as an error
            if not self._connections:
                break
            await asyncio.sleep(0.01)
        await super()._close()

    # -- rules -----------------------------------------------------------------------

    def _check(self, req: Request) -> None:
        """Raise Refusal if R2 would refuse `req` before reading its body."""
        self._check_checksums(req)
        query = req.query
        if req.method == "PUT" and req.key:
            if req.length > MAX_REQUEST_BODY:
                raise Refusal(400, "EntityTooLarge",
                              "Your proposed upload exceeds the maximum allowed object size.")
            if "partNumber" in query:
                if int(query["partNumber"][0]) > MAX_PARTS:
                    raise Refusal(400, "InvalidArgument",
                                  f"Part number must be an integer between 1 and {MAX_PARTS}")
                return
            self._count_write(req.key)
        elif req.key and (req.method, "uploadId" in query) in _KEY_WRITES:
            self._count_write(req.key)

    @staticmethod
    def _check_checksums(req: Request) -> None:
        names = {k.lower() for k, _ in req.head}
        sha = (req.header("x-amz-content-sha256") or "").upper()
        algorithm = (req.header("x-amz-sdk-checksum-algorithm") or "").upper()
        if ("x-amz-checksum-crc64nvme" in names or algorithm == "CRC64NVME"
                or "x-amz-trailer" in names
                or (sha.startswith("STREAMING-") and sha.endswith("-TRAILER"))
                or "aws-chunked" in (req.header("content-encoding") or "").lower()):
            raise Refusal(501, "NotImplemented",
                          "Header 'x-amz-checksum-algorithm' / streaming trailer not implemented")

    def _count_write(self, key: str) -> None:
        now = time.monotonic()
        last = self._last_write.get(key)
        if last is not None and now - last < self.write_interval:
            raise Refusal(429, "TooManyRequests",
                          "Reduce your concurrent request rate for the same object.")
        self._last_write[key] = now
        if len(self._last_write) > 50_000:
            cutoff = now - self.write_interval
            self._last_write = {k: t for k, t in self._last_write.items() if t >= cutoff}

    def _check_complete(self, req: Request, body: bytes) -> None:
        upload = req.query["uploadId"][0]
        numbers = [int(n) for n in _PART_NUMBER.findall(body)]
        if len(numbers) > MAX_PARTS:
            raise Refusal(400, "InvalidPart", f"more than {MAX_PARTS} parts")
        known = self._parts.get(upload, {})
        sizes = [known.get(n) for n in numbers]
        if any(s is None for s in sizes):
            return  # parts not seen here (uploaded around the proxy): the upstream judges
        if any(s != sizes[0] for s in sizes[:-1]) or (sizes and sizes[-1] > sizes[0]):
            raise Refusal(400, "InvalidPart",
                          "All non-trailing parts must have the same length.")

    # -- relaying --------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: Upstream | None = None
        self._connections.add(writer)
        try:
            while True:
                req = await self._read_head(reader)
                if req is None:
                    return
                keep_client, upstream = await self._handle(req, reader, writer, upstream)
                if not keep_client:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError):
            return
        finally:
            self._connections.discard(writer)
            writer.transport.abort()
            if upstream is not None:
                upstream[1].transport.abort()

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> Request | None:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = raw.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        head = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                head.append((name.strip(), value.strip()))
        return Request(method, target, head)

    async def _handle(self, req: Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter,
                      upstream: Upstream | None) -> tuple[bool, Upstream | None]:
        """Answer one request; return whether the client's connection stays open, and the
        upstream connection to reuse (None: open a new one for the next request)."""
        if req.method == "GET" and req.target == STATS_PATH:
            body = json.dumps(self.stats).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            await writer.drain()
            return False, upstream
        expects = (req.header("expect") or "").lower() == "100-continue"
        req.head = [(k, v) for k, v in req.head if k.lower() != "expect"]
        body: bytes | None = None
        try:
            self._check(req)
            if req.method == "POST" and "uploadId" in req.query:
                if expects:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    expects = False
                if req.length > MAX_COMPLETE_BODY:
                    raise Refusal(400, "InvalidPart", "too many parts")
                body = await reader.readexactly(req.length)
                self._check_complete(req, body)
        except Refusal as refusal:
            self.stats[refusal.code] += 1
            if not expects and body is None:
                await self._discard_body(req, reader)
            self._refuse(writer, refusal, close=expects)
            await writer.drain()
            return not expects, upstream
        if upstream is None or upstream[1].is_closing():
            up = await asyncio.open_connection("127.0.0.1", self.upstream_port, limit=CHUNK)
        else:
            up = upstream
        if expects:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        head = f"{req.method} {req.target} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in req.head) + "\r\n"
        up[1].write(head.encode("latin-1"))
        if body is not None:
            up[1].write(body)
        else:
            await self._relay_body(req, reader, up[1])
        status, keep = await self._relay_response(req, up[0], writer)
        self._note_part(req, status)
        if not keep:
            up[1].transport.abort()
        return True, up if keep else None

    def _note_part(self, req: Request, status: int) -> None:
        query = req.query
        if req.method == "PUT" and "partNumber" in query and "uploadId" in query and status == 200:
            parts = self._parts.setdefault(query["uploadId"][0], {})
            parts[int(query["partNumber"][0])] = req.length
        elif req.method in ("POST", "DELETE") and "uploadId" in query and status < 300:
            self._parts.pop(query["uploadId"][0], None)

    @staticmethod
    def _refuse(writer: asyncio.StreamWriter, refusal: Refusal, *, close: bool) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{refusal.code}</Code>'
                f"<Message>{refusal.message}</Message></Error>").encode()
        writer.write(f"HTTP/1.1 {refusal.status} {_REASONS.get(refusal.status, 'Error')}\r\n"
                     f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
                     f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n"
                     f"\r\n".encode() + body)

    async def _discard_body(self, req: Request, reader: asyncio.StreamReader) -> None:
        if req.chunked:
            await self._copy_chunked(reader, None)
            return
        left = req.length
        while left:
            data = await reader.read(min(left, CHUNK))
            if not data:
                raise ConnectionError("request body cut")
            left -= len(data)

    async def _relay_body(self, req: Request, reader: asyncio.StreamReader,
                          out: asyncio.StreamWriter) -> None:
        if req.chunked:
            await self._copy_chunked(reader, out)
        else:
            await self._copy(reader, out, req.length)

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, out: asyncio.StreamWriter,
                    length: int | None) -> None:
        """Relay `length` bytes (None: until EOF)."""
        left = length
        while left is None or left > 0:
            data = await reader.read(CHUNK if left is None else min(left, CHUNK))
            if not data:
                if left is None:
                    return
                raise ConnectionError("body cut short")
            out.write(data)
            await out.drain()
            if left is not None:
                left -= len(data)

    @staticmethod
    async def _copy_chunked(reader: asyncio.StreamReader,
                            out: asyncio.StreamWriter | None) -> None:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if out is not None:
                out.write(line)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = await reader.readuntil(b"\r\n")
                    if out is not None:
                        out.write(trailer)
                    if trailer == b"\r\n":
                        break
                if out is not None:
                    await out.drain()
                return
            left = size + 2
            while left:
                data = await reader.read(min(left, CHUNK))
                if not data:
                    raise ConnectionError("chunked body cut short")
                if out is not None:
                    out.write(data)
                    await out.drain()
                left -= len(data)

    async def _relay_response(self, req: Request, up: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> tuple[int, bool]:
        """Relay one response; return its status and whether both sides stay open."""
        while True:
            raw = await up.readuntil(b"\r\n\r\n")
            status = int(raw.split(b" ", 2)[1])
            if status != 100:
                break  # an interim 100 from upstream is not for the client (it got ours)
        writer.write(raw)
        head = Request("", "", [])
        for line in raw.decode("latin-1").split("\r\n")[1:]:
            if line:
                name, _, value = line.partition(":")
                head.head.append((name.strip(), value.strip()))
        keep = (head.header("connection") or "").lower() != "close"
        if req.method == "HEAD" or status in (204, 304):
            pass
        elif head.chunked:
            await self._copy_chunked(up, writer)
        elif head.header("content-length") is not None:
            await self._copy(up, writer, head.length)
        else:
            await self._copy(up, writer, None)
            keep = False
        await writer.drain()
        return status, keep


class R2ProxyProcess:
    """`R2Proxy` in a child process of its own, with the same `url`, `stats` and `stop`."""

    def __init__(self, upstream_port: int, log_path: Path, *,
                 write_interval: float = WRITE_INTERVAL) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.write_interval = write_interval
        self.log_path = log_path
        self._proc: Process | None = None

    @classmethod
    def attached(cls, port: int, upstream_port: int, log_path: Path) -> R2ProxyProcess:
        """The proxy another process started on `port` (its `stop` leaves it running)."""
        proxy = cls(upstream_port, log_path)
        proxy.port = port
        return proxy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats(self) -> Counter[str]:
        with urllib.request.urlopen(self.url + STATS_PATH, timeout=10) as answer:
            return Counter(json.load(answer))

    def start(self) -> R2ProxyProcess:
        self._proc = Process.start(
            [sys.executable, "-m", "tests.support.r2proxy", str(self.port),
             str(self.upstream_port), str(self.write_interval)], self.log_path,
            cwd=Path(REPO_ROOT))
        self._proc.wait_ready(lambda: not port_is_free(self.port), 20, "the R2 proxy to listen")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()

    def __enter__(self) -> R2ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> None:
    """`python -m tests.support.r2proxy PORT UPSTREAM_PORT WRITE_INTERVAL`: serve until
    SIGTERM or SIGINT."""
    port, upstream, interval = int(argv[0]), int(argv[1]), float(argv[2])
    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)  # the loop's thread inherits the mask
    proxy = R2Proxy(upstream, write_interval=interval, port=port).start()
    signal.sigwait(stopping)
    proxy.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
