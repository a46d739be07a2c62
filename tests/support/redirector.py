"""An upstream that sends blob downloads elsewhere, as Docker Hub (Cloudflare) and S3-backed
registries do, and that can serve corrupted blobs: what a pull-through cache must cope with.

`Redirector(registry_url).start()` is an HTTP proxy on a free 127.0.0.1 port in front of a
registry (a `DistributionRegistry`), run by aiohttp in an event loop of its own thread. It
forwards every request as is, streaming both ways (headers kept: Host, so the registry's
upload Locations name the proxy; WWW-Authenticate, Docker-Content-Digest, Content-Type,
Content-Length), except a blob GET (`GET /v2/<name>/blobs/<digest>`):

- it asks the registry first (a HEAD with the client's headers): unless that is 200 (or 206,
  for a Range), the GET is forwarded as is, so the client meets the registry's own 401 or 404;
- else it answers `307` to `http://127.0.0.2:<blob_port>/blobs/<digest>?repository=..&ticket=..`,
  a second listener on another loopback address (another host, to the client). The ticket
  plays a presigned URL's part: it stands for the client's Authorization, which the blob host
  uses to fetch the bytes from the registry and stream them back. A client must not send its
  registry credentials to the other host: `blob_requests` records the Authorization header of
  every request the blob host got, and `blob_fetches` counts its fetches per digest.

`redirect=False` streams blob GETs through the proxy itself instead.

`corrupt`: digests whose bytes are served with one byte flipped (`EVERY_BLOB` for all), the
length and every header (Docker-Content-Digest included) left as they were, for a test that a
client refuses a bad upstream. `corrupt_offset` picks the byte (negative: from the end; the
default is the last byte, so a client has streamed the whole blob before it can tell). It may
be changed while running; `corrupted` counts the bodies altered per digest.
"""

from __future__ import annotations

import contextlib
import secrets
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from tests.support.loopserver import LoopServer
from tests.support.processes import free_port
from tests.support.registry import BLOB_PATH

CHUNK = 1 << 18
SHUTDOWN_TIMEOUT = 2.0  # at stop, how long answers under way may take to finish
EVERY_BLOB = "*"
BLOB_HOST = "127.0.0.2"
# Per connection, not end to end (RFC 9110 7.6.1): never forwarded.
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade"))
# The request headers the blob host passes on to the registry.
BLOB_REQUEST_HEADERS = ("Range", "If-Range", "If-None-Match", "If-Modified-Since")


@dataclass(frozen=True)
class BlobHostRequest:
    """One request the blob host got."""

    method: str
    digest: str
    authorization: str | None  # the client's Authorization header, if it sent one
    status: int


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy got on its main listener."""

    method: str
    path: str
    status: int
    redirected: bool


@dataclass(frozen=True)
class Ticket:
    repository: str
    authorization: str | None


def end_to_end(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """`headers` less the hop-by-hop ones."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


def origin_form(target: str) -> str:
    """A request target as path and query (a client may send the absolute form)."""
    if target.startswith("/"):
        return target
    parts = urllib.parse.urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def flip_byte(chunk: bytes, index: int) -> bytes:
    return chunk[:index] + bytes([chunk[index] ^ 0xFF]) + chunk[index + 1:]


def body_span(status: int, headers: Mapping[str, str]) -> tuple[int, int | None]:
    """(offset in the blob of the body's first byte, size of the whole blob or None)."""
    if status == 206:
        unit_range, _, total = headers.get("Content-Range", "").partition("/")
        first = unit_range.removeprefix("bytes ").partition("-")[0]
        return (int(first) if first.isdigit() else 0), (int(total) if total.isdigit() else None)
    length = headers.get("Content-Length", "")
    return 0, (int(length) if length.isdigit() else None)


class Redirector(LoopServer):
    thread_name = "redirector"

    def __init__(self, registry_url: str, *, redirect: bool = True,
                 corrupt: Iterable[str] = (), corrupt_offset: int = -1,
                 blob_host: str = BLOB_HOST, port: int | None = None,
                 blob_port: int | None = None) -> None:
        super().__init__(port)
        self.registry_url = registry_url.rstrip("/")
        self.redirect = redirect
        self.corrupt = set(corrupt)
        self.corrupt_offset = corrupt_offset
        self.blob_host = blob_host
        self.blob_port = blob_port or free_port()
        self.requests: list[ProxiedRequest] = []
        self.blob_requests: list[BlobHostRequest] = []
        self.blob_fetches: Counter[str] = Counter()
        self.corrupted: Counter[str] = Counter()
        self._tickets: dict[str, Ticket] = {}
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, the registry part of an image reference through the proxy."""
        return f"127.0.0.1:{self.port}"

    @property
    def blob_url(self) -> str:
        return f"http://{self.blob_host}:{self.blob_port}"

    def blob_authorizations(self) -> list[str | None]:
        """The Authorization header of each request the blob host got (None: none sent)."""
        return [r.authorization for r in self.blob_requests]

    # -- life ----------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300))
        await self._serve_app(self._proxy, "127.0.0.1", self.port)
        await self._serve_app(self._blob_host, self.blob_host, self.blob_port)

    async def _serve_app(self, handler: Handler, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runners.append(runner)

    async def _close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()
        await super()._close()

    # -- the registry's listener ---------------------------------------------------------

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        match = BLOB_PATH.match(request.path)
        if request.method == "GET" and match and self.redirect:
            location = await self._redirect_location(request, match["name"], match["digest"])
            if location is not None:
                self.requests.append(ProxiedRequest("GET", request.path, 307, True))
                return web.Response(status=307, headers={"Location": location})
        digest = match["digest"] if match and request.method == "GET" else None

        def record(status: int) -> None:
            self.requests.append(ProxiedRequest(request.method, request.path, status, False))

        return await self._forward(request, self.registry_url + origin_form(request.raw_path),
                                   end_to_end(request.headers), digest, record)

    async def _redirect_location(self, request: web.Request, repository: str,
                                 digest: str) -> str | None:
        """The blob host's URL for this blob if the registry would serve it to this client."""
        assert self._session is not None
        async with self._session.head(self.registry_url + origin_form(request.raw_path),
                                      headers=end_to_end(request.headers),
                                      allow_redirects=False) as probe:
            if probe.status not in (200, 206):  # 206: it asked for a range
                return None
        ticket = secrets.token_urlsafe(16)
        self._tickets[ticket] = Ticket(repository, request.headers.get("Authorization"))
        query = urllib.parse.urlencode({"repository": repository, "ticket": ticket})
        return f"{self.blob_url}/blobs/{digest}?{query}"

    # -- the other host ------------------------------------------------------------------

    async def _blob_host(self, request: web.Request) -> web.StreamResponse:
        digest = request.path.removeprefix("/blobs/")
        ticket = self._tickets.get(request.query.get("ticket", ""))

        def record(status: int) -> None:
            self.blob_requests.append(BlobHostRequest(
                request.method, digest, request.headers.get("Authorization"), status))

        if not request.path.startswith("/blobs/"):
            response: web.StreamResponse = web.Response(status=404)
        elif request.method != "GET":
            response = web.Response(status=405)
        elif ticket is None or ticket.repository != request.query.get("repository"):
            response = web.Response(status=403, text="unknown ticket")
        else:
            headers = CIMultiDict((k, request.headers[k]) for k in BLOB_REQUEST_HEADERS
                                  if k in request.headers)
            if ticket.authorization:
                headers["Authorization"] = ticket.authorization
            url = f"{self.registry_url}/v2/{ticket.repository}/blobs/{digest}"
            self.blob_fetches[digest] += 1
            return await self._forward(request, url, headers, digest, record)
        record(response.status)
        return response

    # -- relaying ------------------------------------------------------------------------

    async def _forward(self, request: web.Request, url: str, headers: CIMultiDict[str],
                       digest: str | None, record: Callable[[int], None]) -> web.StreamResponse:
        """Send `request` on to `url` and stream the answer back (a blob's bytes corrupted if
        `digest` is to be). `record` gets the status before the client can see any of the
        answer: a test that reads the records right after its request finds this one."""
        assert self._session is not None
        data = request.content if request.body_exists else None
        async with self._session.request(request.method, url, headers=headers, data=data,
                                         allow_redirects=False) as upstream:
            record(upstream.status)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                          headers=end_to_end(upstream.headers))
            await response.prepare(request)
            chunks = upstream.content.iter_chunked(CHUNK)
            if digest is not None and upstream.status in (200, 206) and self._corrupts(digest):
                chunks = self._corrupting(chunks, digest, upstream.status, upstream.headers)
            with contextlib.suppress(ConnectionResetError):
                async for chunk in chunks:
                    await response.write(chunk)
                await response.write_eof()
        return response

    def _corrupts(self, digest: str) -> bool:
        return EVERY_BLOB in self.corrupt or digest in self.corrupt

    async def _corrupting(self, chunks: AsyncIterator[bytes], digest: str, status: int,
                          headers: Mapping[str, str]) -> AsyncIterator[bytes]:
        """`chunks` with the byte at `corrupt_offset` of the blob flipped, if it is in them."""
        position, size = body_span(status, headers)
        target = self.corrupt_offset
        if target < 0:
            target = (size + target) if size is not None else -1
        async for chunk in chunks:
            if position <= target < position + len(chunk):
                chunk = flip_byte(chunk, target - position)
                self.corrupted[digest] += 1
            position += len(chunk)
            yield chunk
