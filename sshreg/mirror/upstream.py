"""Talking to an upstream registry: its auth flows, redirects and error answers.

Auth follows what the upstream asks for in its `401`: the Docker token flow (`Bearer
realm=…,service=…,scope=…`: a token fetched from the realm, anonymously or with the
mirror's credentials, kept until it expires), HTTP Basic, or nothing. Redirects (Docker Hub
sends blobs to a CDN) are followed here rather than by aiohttp, so that `Authorization` only
ever goes to the upstream's own origin.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from ..oci import MANIFEST_TYPES
from .settings import MirrorSettings

log = logging.getLogger("sshreg.mirror")

MANIFEST_ACCEPT = ", ".join(sorted(MANIFEST_TYPES))
MAX_REDIRECTS = 5
TOKEN_MARGIN = 10.0  # seconds before its expiry a token is fetched again
DEFAULT_TOKEN_LIFETIME = 60.0  # the token spec's default for a missing expires_in
MAX_MANIFEST = 4 << 20
_PARAM = re.compile(r'(\w+)="([^"]*)"')


class UpstreamUnavailable(Exception):
    """The upstream gave no usable answer (unreachable, refused, rate limited, broken)."""


class UpstreamMissing(Exception):
    """The upstream answered that the manifest or blob does not exist."""


@dataclass(frozen=True)
class Fetched:
    """A small answer read whole (a manifest, or the headers of a HEAD)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Upstream:
    """One upstream registry, with its credentials and the tokens it issued."""

    def __init__(self, mirror: MirrorSettings, *, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0) -> None:
        self.mirror = mirror
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout,
                                              sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expiry)
        self._basic: str | None = None  # set once the upstream asked for Basic
        self._origin = _origin(mirror.upstream)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made in the loop that uses it
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def manifest(self, remote: str, reference: str, *, head: bool = False) -> Fetched:
        """A manifest (by tag or digest) or, with `head`, only its headers."""
        async with self._request("HEAD" if head else "GET", f"/v2/{remote}/manifests/{reference}",
                                 remote, {"Accept": MANIFEST_ACCEPT}) as response:
            self._raise_for(response, f"manifest {remote}:{reference}")
            body = b"" if head else await _read_limited(response, MAX_MANIFEST)
            return Fetched(response.status, dict(response.headers), body)

    async def json(self, remote: str, path: str) -> dict[str, object] | None:
        """A JSON document (tags list, referrers), None if the upstream has no such thing."""
        async with self._request("GET", path, remote, {"Accept": "application/json"}) as response:
            if response.status == 404:
                return None
            self._raise_for(response, path)
            try:
                doc = json.loads(await _read_limited(response, MAX_MANIFEST))
            except ValueError:
                raise UpstreamUnavailable(f"{path}: the upstream answered no JSON") from None
            return doc if isinstance(doc, dict) else None

    async def blob_size(self, remote: str, digest: str) -> int | None:
        """The size of a blob upstream, by a HEAD (None if it did not say)."""
        async with self._request("HEAD", f"/v2/{remote}/blobs/{digest}", remote, {}) as response:
            self._raise_for(response, f"blob {remote}@{digest}")
            return response.content_length

    @contextlib.asynccontextmanager
    async def blob(self, remote: str, digest: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response whose body is the blob (after redirects), status 200."""
        async with self._request("GET", f"/v2/{remote}/blobs/{digest}", remote, {}) as response:
            self._raise_for(response, f"blob {remote}@{digest}")
            yield response

    @staticmethod
    def _raise_for(response: aiohttp.ClientResponse, what: str) -> None:
        if response.status == 404:
            raise UpstreamMissing(f"{what}: not found upstream")
        if response.status != 200:
            retry = response.headers.get("Retry-After")
            raise UpstreamUnavailable(f"{what}: upstream answered {response.status}"
                                      + (f" (retry after {retry})" if retry else ""))

    @contextlib.asynccontextmanager
    async def _request(self, method: str, path: str, remote: str, headers: dict[str, str]
                       ) -> AsyncIterator[aiohttp.ClientResponse]:
        response = await self._open(method, path, f"repository:{remote}:pull", headers)
        try:
            yield response
        finally:
            response.release()

    async def _open(self, method: str, path: str, scope: str, headers: dict[str, str]
                    ) -> aiohttp.ClientResponse:
        """The answer to a request, after the auth the upstream asked for."""
        url = self.mirror.upstream + path
        try:
            response = await self._follow(method, url, {**headers, **self._authorization(scope)})
            if response.status == 401:
                challenge = response.headers.get("WWW-Authenticate", "")
                response.release()
                credentials = await self._authenticate(challenge, scope)
                response = await self._follow(method, url, {**headers, **credentials})
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if response.status == 401:
            response.release()
            raise UpstreamUnavailable(f"{method} {path}: the upstream refused our credentials")
        return response

    async def _follow(self, method: str, url: str, headers: dict[str, str]
                      ) -> aiohttp.ClientResponse:
        """Send, following redirects; `Authorization` only goes to the upstream's origin."""
        for _ in range(MAX_REDIRECTS + 1):
            sent = headers if _origin(url) == self._origin else _without_auth(headers)
            response = await self._client().request(method, url, headers=sent,
                                                    allow_redirects=False)
            location = response.headers.get("Location")
            if response.status not in (301, 302, 303, 307, 308) or not location:
                return response
            response.release()
            url = urljoin(url, location)
            if response.status == 303:
                method = "GET"
        raise UpstreamUnavailable(f"more than {MAX_REDIRECTS} redirects")

    def _authorization(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.monotonic():
            return {"Authorization": f"Bearer {token[0]}"}
        if self._basic is not None:
            return {"Authorization": self._basic}
        return {}

    async def _authenticate(self, challenge: str, scope: str) -> dict[str, str]:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            if not self.mirror.username:
                raise UpstreamUnavailable("the upstream asks for credentials; the mirror has none")
            self._basic = _basic(self.mirror.username, self.mirror.password() or "")
            return {"Authorization": self._basic}
        if scheme.lower() != "bearer":
            raise UpstreamUnavailable(f"the upstream asks for {scheme or 'unknown'} auth")
        fields = dict(_PARAM.findall(params))
        realm = fields.get("realm")
        if not realm:
            raise UpstreamUnavailable("the upstream's Bearer challenge names no realm")
        query = {"scope": fields.get("scope") or scope}
        if "service" in fields:
            query["service"] = fields["service"]
        headers = {}
        if self.mirror.username:
            query["account"] = self.mirror.username
            headers["Authorization"] = _basic(self.mirror.username, self.mirror.password() or "")
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}"
        async with self._client().get(url, headers=headers) as response:
            if response.status != 200:
                raise UpstreamUnavailable(f"the token service answered {response.status}")
            try:
                doc = json.loads(await _read_limited(response, 1 << 20))
                token = doc.get("token") or doc["access_token"]
                lifetime = float(doc.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise UpstreamUnavailable("the token service answered no token") from None
        margin = min(TOKEN_MARGIN, lifetime / 10)  # not to send a token about to expire
        self._tokens[scope] = (token, time.monotonic() + lifetime - margin)
        return {"Authorization": f"Bearer {token}"}


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _without_auth(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    data = bytearray()
    try:
        async for chunk in response.content.iter_chunked(64 << 10):
            data += chunk
            if len(data) > limit:
                raise UpstreamUnavailable(f"the upstream's answer is over {limit} bytes")
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UpstreamUnavailable(f"reading the upstream's answer: {exc!r}") from None
    return bytes(data)
