"""An upstream registry in the test's own event loop, for the pull-through cache's fast tests.

`Upstream` is sshreg's own registry on its own filesystem store, served over real loopback
TCP by aiohttp, with the knobs a mirror meets in the wild:

- `auth`: None (anonymous), `"basic"` (HTTP Basic), or `"token"` (Docker's token flow: a
  `401` with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`, tokens issued by `/token`
  of the same server for `expires_in` seconds);
- `redirect_blobs`: blob GETs answered with a `307` to a second server on 127.0.0.2, which
  records the `Authorization` headers it was sent (a mirror must send none there);
- `corrupt`: one byte of every blob body flipped, the length kept;
- `available = False`: every request answered `503`, as an upstream that is down;
- `throttle`: seconds to wait between 64 KiB pieces of a blob body, to keep fills running.

`requests` counts the requests served by (method, path); `blob_fetches(digest)` counts the
blob GETs that sent bytes. The real-upstream tests (distribution, with its token server)
are in tests/integration/test_mirror_clients.py.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections import Counter
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient, TestServer

from sshreg.access import Identity, Rights
from sshreg.references import Digest
from sshreg.registry.app import Registry
from sshreg.storage.filesystem import FilesystemDriver
from sshreg.store.registry_store import RegistryStore

USER, PASSWORD = "mirror-user", "mirror-secret"
SERVICE = "upstream.test"
OWNER = Identity("SHA256:upstream-owner", "owner@upstream", Rights.full())
PIECE = 64 << 10


class Upstream:
    def __init__(self, root: Path, *, auth: str | None = None, expires_in: int = 300) -> None:
        self.registry = Registry(RegistryStore(FilesystemDriver(root)), identify=lambda _: OWNER)
        self.auth = auth
        self.expires_in = expires_in
        self.redirect_blobs = False
        self.corrupt = False
        self.available = True
        self.throttle = 0.0
        self.requests: Counter[tuple[str, str]] = Counter()
        self.token_requests = 0
        self.sent_to_other_host: list[str | None] = []  # Authorization headers, None if none
        self._tokens: dict[str, float] = {}
        self._blob_bodies: Counter[str] = Counter()
        self._server = TestServer(self._app(), host="127.0.0.1")
        self._other = TestServer(self._other_app(), host="127.0.0.2")

    async def start(self) -> Upstream:
        await self.registry.start()
        await self._server.start_server()
        await self._other.start_server()
        return self

    async def close(self) -> None:
        await self._server.close()
        await self._other.close()
        await self.registry.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def client(self) -> TestClient:
        """A client pushing straight to the upstream's registry (no auth, not counted)."""
        return TestClient(RawTestServer(self.registry.handle))

    def blob_fetches(self, digest: str) -> int:
        return self._blob_bodies[digest]

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._token)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        return app

    def _other_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/cdn/{name:.+}/{digest}", self._serve_redirected)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        header = request.headers.get("Authorization")
        if header is not None and header != _basic(USER, PASSWORD):
            return web.Response(status=401)
        if header is None and request.query.get("account"):
            return web.Response(status=401)
        token = secrets.token_hex(16)
        self._tokens[token] = time.monotonic() + self.expires_in
        return web.json_response({"token": token, "expires_in": self.expires_in})

    def _authorized(self, request: web.BaseRequest) -> bool:
        header = request.headers.get("Authorization", "")
        if self.auth == "basic":
            return header == _basic(USER, PASSWORD)
        if self.auth == "token":
            token = header.removeprefix("Bearer ")
            return header.startswith("Bearer ") and self._tokens.get(token, 0) > time.monotonic()
        return True

    def _challenge(self, request: web.BaseRequest) -> str:
        if self.auth == "basic":
            return 'Basic realm="upstream"'
        name = request.path.removeprefix("/v2/").split("/manifests/")[0].split("/blobs/")[0]
        return (f'Bearer realm="{self.url}/token",service="{SERVICE}",'
                f'scope="repository:{name}:pull"')

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests[(request.method, request.path)] += 1
        if not self.available:
            return web.Response(status=503, headers={"Retry-After": "30"})
        if self.auth and request.path != "/v2/" and not self._authorized(request):
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401,
                                     headers={"WWW-Authenticate": self._challenge(request)})
        name, is_blob, digest = _blob_path(request.path)
        if is_blob and request.method == "GET":
            if self.redirect_blobs:
                return web.Response(status=307, headers={
                    "Location": f"http://127.0.0.2:{self._other.port}/cdn/{name}/{digest}"})
            return await self._send_blob(request, name, digest)
        return await self.registry.handle(request)

    async def _serve_redirected(self, request: web.Request) -> web.StreamResponse:
        self.sent_to_other_host.append(request.headers.get("Authorization"))
        return await self._send_blob(request, request.match_info["name"],
                                     request.match_info["digest"])

    async def _send_blob(self, request: web.BaseRequest, name: str, digest: str
                         ) -> web.StreamResponse:
        store = self.registry.store
        record = await store.repositories.blob(name, Digest.parse(digest))
        if record is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        data = await store.blobs.read_all(record)
        if self.corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self._blob_bodies[digest] += 1
        response = web.StreamResponse(headers={"Docker-Content-Digest": digest,
                                               "Content-Type": "application/octet-stream"})
        response.content_length = len(data)
        await response.prepare(request)
        for start in range(0, len(data), PIECE):
            await response.write(data[start:start + PIECE])
            if self.throttle:
                await asyncio.sleep(self.throttle)
        await response.write_eof()
        return response


def _blob_path(path: str) -> tuple[str, bool, str]:
    head, sep, digest = path.removeprefix("/v2/").rpartition("/blobs/")
    is_blob = bool(sep) and digest.startswith("sha256:") and "/" not in digest
    return head, is_blob, digest


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
