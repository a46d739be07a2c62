"""Refuse requests that a web page, not a registry client, sends through a tunnel.

An `ssh -L` port answers every process on the user's machine, the browser included, and
whatever arrives through it acts with the tunnel's key. Two kinds of browser request could:

- DNS rebinding: a page whose own name has been re-pointed at 127.0.0.1 is same-origin with
  the tunnel and may read the answers. Its requests name the page's host in `Host`, so only
  names of the loopback are accepted (`localhost`, `127.0.0.0/8`, `[::1]`, any port) plus
  the names in `[registry] hosts`.
- cross-site requests: a "simple" request (GET, HEAD, or POST with a form or text/plain body)
  goes out without a CORS preflight. Browsers mark it with `Origin` and `Sec-Fetch-Site`;
  registry clients send neither, so an `Origin` other than the registry's own
  (`http://` + the request's `Host`) and a `Sec-Fetch-Site` other than `same-origin` or
  `none` are refused. A preflight (`OPTIONS` with `Origin`) is refused the same way, so no
  `Access-Control-Allow-*` is ever granted.

Refusals are `403 DENIED`: a status every registry client reports with the spec's message
(421 Misdirected Request would invite a client to retry on a new connection).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDictProxy

from .errors import Code, RegistryError

LOOPBACK_NAMES = frozenset({"localhost", "localhost."})  # RFC 6761: never resolved by DNS
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})
log = logging.getLogger("sshreg.registry")

MESSAGE = "request from a web page refused"
_HOST = re.compile(r"(?:\[([^\]]*)\]|([^:\[\]]*))(?::[0-9]{0,5})?")


def host_name(host: str) -> str | None:
    """The lower-case name or address of a `Host` value without its port (an IPv6 address
    without its brackets); None if the value is not `name[:port]` or `[address][:port]`."""
    match = _HOST.fullmatch(host.lower())
    if match is None:
        return None
    return match[1] or match[2] or None


def is_loopback_name(name: str) -> bool:
    """Whether `name` (from `host_name`) can only mean this machine's loopback."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class OriginPolicy:
    """Which `Host` names a request may carry besides the loopback's own."""

    hosts: frozenset[str] = frozenset()

    @classmethod
    def allowing(cls, hosts: Iterable[str]) -> OriginPolicy:
        return cls(frozenset(host.lower() for host in hosts))

    def host_allowed(self, host: str) -> bool:
        name = host_name(host)
        return name is not None and (is_loopback_name(name) or name in self.hosts)

    def check(self, headers: CIMultiDictProxy[str]) -> None:
        """Raise `403 DENIED` unless the request looks like a registry client's: one allowed
        `Host`, no `Origin` but the registry's own, no `Sec-Fetch-Site` but `same-origin` or
        `none`."""
        hosts = headers.getall("Host", [])
        if len(hosts) != 1 or not self.host_allowed(hosts[0]):
            raise RegistryError(Code.DENIED, {"host": ", ".join(hosts) if hosts else None},
                                message=f"{MESSAGE}: Host does not name the loopback")
        own = f"http://{hosts[0].lower()}"
        for origin in headers.getall("Origin", []):
            if origin.lower() != own:
                raise RegistryError(Code.DENIED, {"origin": origin},
                                    message=f"{MESSAGE}: Origin is not this registry")
        for site in headers.getall("Sec-Fetch-Site", []):
            if site.lower() not in ALLOWED_FETCH_SITES:
                raise RegistryError(Code.DENIED, {"sec-fetch-site": site},
                                    message=f"{MESSAGE}: Sec-Fetch-Site is not same-origin")


def origin_middleware(policy: OriginPolicy) -> Middleware:
    """The same check for an aiohttp `Application` without keys (the metrics listener):
    a rebound page must not read it either."""

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            policy.check(request.headers)
        except RegistryError as exc:
            log.warning("refused %(method)s %(path)s on the metrics listener: %(error)s",
                        {"method": request.method, "path": request.path, "error": str(exc)})
            return web.Response(status=exc.status, body=exc.body(),
                                content_type="application/json")
        return await handler(request)

    return check_origin
