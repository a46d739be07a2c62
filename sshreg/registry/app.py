"""The registry as an aiohttp low-level request handler.

`Registry.handle` is the single entry point: it resolves the route, checks the caller's
rights, runs the handler and turns every `RegistryError` (and every unexpected failure)
into the spec's JSON envelope, logging each refusal once. The identity of the caller is
read from the connection by `identify` (the SSH bridge puts it there), never from a
global.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from urllib.parse import unquote

from aiohttp import HttpVersion11, web

from ..access import Action, Identity
from ..browser.app import Browser
from ..events.log import EventLog
from ..memory import HeapTrimmer
from ..metrics import Metrics, method_label
from ..mirror.cache import Mirrors
from ..references import is_valid_name
from ..storage.base import Overloaded, PreconditionFailed, StorageError, TooLarge
from ..store.registry_store import RegistryStore
from . import mirrored, notify
from .context import Access, Context, identity_from_transport
from .errors import INTERNAL_ERROR, LIMIT_RETRY_AFTER, Code, RegistryError
from .http_protocol import MALFORMED, RegistryServer
from .origin import OriginPolicy
from .routes import resolve
from .settings import RegistrySettings
from .upload_sessions import UploadSessions

log = logging.getLogger("sshreg.registry")
audit_log = logging.getLogger("sshreg.audit")

WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
_ACTIONS = {Access.PULL: Action.PULL, Access.PUSH: Action.PUSH, Access.DELETE: Action.DELETE}


class Registry:
    """The OCI Distribution v1.1 API over a `RegistryStore`."""

    def __init__(
        self,
        store: RegistryStore,
        settings: RegistrySettings | None = None,
        *,
        identify: Callable[[web.BaseRequest], Identity | None] = identity_from_transport,
        metrics: Metrics | None = None,
        heap: HeapTrimmer | None = None,
        mirrors: Mirrors | None = None,
        events: EventLog | None = None,
        browser: Browser | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or RegistrySettings()
        self.identify = identify
        self.metrics = metrics or Metrics()
        self.origin = OriginPolicy.allowing(self.settings.hosts)
        self.sessions = UploadSessions(
            self.settings.upload_idle_timeout, self.metrics,
            max_per_key=self.settings.limits.max_uploads_per_key,
            max_total=self.settings.limits.max_uploads)
        self.in_flight = 0  # requests being handled right now
        self.heap = heap  # trimmed whenever no request is left
        self.mirrors = mirrors  # the pull-through cache, if mirrors are configured
        self.events = events  # where pushes and deletes are announced
        self.browser = browser  # the pages at / (None: only /v2/)

    async def start(self) -> None:
        self.sessions.start()
        if self.mirrors is not None:
            await self.mirrors.start()

    async def close(self) -> None:
        await self.sessions.close()
        if self.mirrors is not None:
            await self.mirrors.close()

    def server(self, **kwargs: object) -> web.Server:
        """An aiohttp protocol factory serving this registry (one protocol per connection).

        A connection that goes away cancels its handler, so an upload whose client died
        frees its session and storage at once instead of waiting for a timeout.
        """
        kwargs.setdefault("access_log", None)
        kwargs.setdefault("handler_cancellation", True)
        # aiohttp has no header timeout, but its keep-alive timer runs from the connection's
        # start and from each answer until the next request's headers are complete, and is
        # not reset by bytes arriving: it bounds a slowloris as well as an idle connection.
        kwargs.setdefault("keepalive_timeout", self.settings.header_timeout)
        server = RegistryServer(self.handle, **kwargs)  # type: ignore[arg-type]
        server.write_timeout = self.settings.body_idle_timeout  # responses: the same bound
        return server

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.heap is not None and not self.in_flight:
            self.heap.busy()
        self.in_flight += 1
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1
            if self.heap is not None and not self.in_flight:
                self.heap.idle()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is being handled; False if `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return not self.in_flight

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        ctx: Context | None = None
        identity = self.identify(request)
        try:
            if MALFORMED in request:
                raise RegistryError(Code.UNSUPPORTED, request[MALFORMED], status=400,
                                    message="malformed HTTP request")
            self.origin.check(request.headers)  # before routing and before any body is read
            if identity is None:
                raise RegistryError(Code.UNAUTHORIZED, "no SSH identity on this connection")
            path = unquote(request.rel_url.raw_path)
            if self.browser is not None and (path == "/" or path.startswith("/ui/")):
                return await self._page(request, identity)
            route, params = resolve(request.method, path)
            ctx = Context(self, identity, route, params)
            if self.mirrors is not None:
                ctx = await mirrored.route(ctx, self.mirrors)
            self._authorize(ctx)
            await self._continue(request)
            response = await ctx.route.handler(request, ctx)
            if self.events is not None and request.method in WRITE_METHODS:
                await self._announce(self.events, request, ctx, response)
        except RegistryError as exc:
            response = self._refusal(request, identity, exc)
        except PreconditionFailed as exc:
            response = self._refusal(request, identity, RegistryError(
                Code.TOOMANYREQUESTS, "concurrent update, retry", headers={"Retry-After": "1"}))
            log.warning("conflict on %(method)s %(path)s: %(error)s",
                        {"method": request.method, "path": request.path, "error": str(exc)})
        except TooLarge as exc:
            response = self._refusal(request, identity, RegistryError(
                Code.BLOB_UPLOAD_INVALID, str(exc), status=413, message="blob too large"))
        except Overloaded as exc:
            response = self._refusal(request, identity, RegistryError(
                Code.TOOMANYREQUESTS, str(exc), headers={"Retry-After": LIMIT_RETRY_AFTER}))
        except StorageError as exc:
            log.error("storage failure on %(method)s %(path)s: %(error)s",
                      {"method": request.method, "path": request.path, "error": str(exc)})
            response = self._error_response(RegistryError(
                Code.UNAVAILABLE, "storage unavailable", headers={"Retry-After": "5"}))
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("internal error on %(method)s %(path)s",
                          {"method": request.method, "path": request.path})
            response = web.Response(status=500, content_type="application/json",
                                    body=INTERNAL_ERROR)
        response.headers["Docker-Distribution-API-Version"] = "registry/2.0"
        self.metrics.inc("sshreg_http_requests_total", method=method_label(request.method),
                         route=ctx.route.path if ctx else "-", status=str(response.status))
        if ctx is not None and request.method in WRITE_METHODS and response.status < 400:
            self._audit(request, ctx.identity, response.status, ctx, started)
        if response.status in (408, 413) or MALFORMED in request:
            await self._answer_and_close(request, response)
        return response

    async def _page(self, request: web.BaseRequest, identity: Identity) -> web.StreamResponse:
        """A page of the browser (it answers its own errors, as HTML)."""
        assert self.browser is not None
        response = await self.browser.handle(request, identity)
        self.metrics.inc("sshreg_http_requests_total", method=method_label(request.method),
                         route="/ui/", status=str(response.status))
        return response

    @staticmethod
    async def _announce(events: EventLog, request: web.BaseRequest, ctx: Context,
                        response: web.StreamResponse) -> None:
        """The write's event; the write succeeded whatever happens to its event."""
        try:
            await notify.after_write(events, request, ctx, response)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("announcing %(method)s %(path)s failed",
                          {"method": request.method, "path": request.path})

    @staticmethod
    async def _answer_and_close(request: web.BaseRequest, response: web.StreamResponse) -> None:
        """Send an answer after which the rest of the body is never read, then close the
        connection at once: aiohttp would linger up to 10 s reading (or, for a stalled
        client, waiting for) a body nobody wants."""
        response.force_close()
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return  # the client is gone already
        request.protocol.force_close()

    def _authorize(self, ctx: Context) -> None:
        name = ctx.params.get("name")
        if name is not None and not is_valid_name(name):
            raise RegistryError(Code.NAME_INVALID, {"name": name})
        action = _ACTIONS.get(ctx.route.access)
        if action is not None and name is not None and not ctx.may(action, name):
            raise RegistryError(Code.DENIED, f"this key may not {action.value} {name}")

    @staticmethod
    async def _continue(request: web.BaseRequest) -> None:
        """Answer `Expect: 100-continue` (curl sends it for bodies over 1 MiB and otherwise
        waits a second); aiohttp only does so for `web.Application` routes, not for us.
        Requests refused before this point get their final status instead, without a body."""
        if (request.version >= HttpVersion11
                and request.headers.get("Expect", "").lower() == "100-continue"):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the interim response is not part of the answer

    def _refusal(self, request: web.BaseRequest, identity: Identity | None,
                 exc: RegistryError) -> web.Response:
        who = identity.fingerprint if identity else "-"
        if exc.status in (401, 403):
            log.warning("refused %(method)s %(path)s for key %(fingerprint)s: %(error)s",
                        {"method": request.method, "path": request.path, "fingerprint": who,
                         "error": str(exc)})
            self._audit(request, identity, exc.status, None, None, error=exc.code.name)
        elif exc.status == 429:  # a limit reached: worth a warning, once, with the key
            log.warning("limited %(method)s %(path)s for key %(fingerprint)s: %(error)s",
                        {"method": request.method, "path": request.path, "fingerprint": who,
                         "error": str(exc)})
        else:
            log.info("%(method)s %(path)s -> %(status)d %(code)s (key %(fingerprint)s)",
                     {"method": request.method, "path": request.path, "status": exc.status,
                      "code": exc.code.name, "fingerprint": who})
        return self._error_response(exc)

    @staticmethod
    def _error_response(exc: RegistryError) -> web.Response:
        return web.Response(status=exc.status, body=exc.body(), content_type="application/json",
                            headers=exc.headers)

    @staticmethod
    def _audit(request: web.BaseRequest, identity: Identity | None, status: int,
               ctx: Context | None, started: float | None, error: str | None = None) -> None:
        event: dict[str, object] = {
            "time": round(time.time(), 3),
            "method": request.method,
            "path": request.path,
            "status": status,
        }
        if identity is not None:
            event.update(identity.log_fields())
        if ctx is not None:
            event["repository"] = ctx.params.get("name")
            if ctx.reference:
                event["reference"] = ctx.reference
            event["bytes"] = ctx.bytes_in
        if started is not None:
            event["seconds"] = round(time.monotonic() - started, 3)
        if error:
            event["error"] = error
        audit_log.info(event)
