"""The registry as an aiohttp low-level request handler.

`Registry.handle` is the single entry point: it resolves the route, checks the caller's
rights, runs the handler and turns every `RegistryError` (and every unexpected failure)
into the spec's JSON envelope, logging each refusal once. The identity of the caller is
read from the connection by `identify` (the SSH bridge puts it there), never from a
global.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import ERROR as PARSE_ERROR
from yarl import URL

from ..access import Action, Identity
from ..memory import HeapTrimmer
from ..metrics import Metrics, method_label
from ..references import Digest, is_valid_name
from ..storage.base import Overloaded, PreconditionFailed, StorageError, TooLarge
from ..storage.store import RegistryStore
from .errors import LIMIT_RETRY_AFTER, Code, RegistryError
from .origin import OriginPolicy
from .routes import Access, Route, resolve
from .sessions import UploadSessions
from .settings import RegistrySettings

log = logging.getLogger("sshreg.registry")
audit_log = logging.getLogger("sshreg.audit")

IDENTITY_INFO = "sshreg.identity"
MALFORMED = web.RequestKey("sshreg.malformed", str)  # why a parsed request is not one we serve
WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
_ACTIONS = {Access.PULL: Action.PULL, Access.PUSH: Action.PUSH, Access.DELETE: Action.DELETE}
INTERNAL_ERROR = json.dumps({"errors": [{"code": "UNKNOWN", "message": "internal error",
                                          "detail": None}]}).encode()


def identity_from_transport(request: web.BaseRequest) -> Identity | None:
    """The identity the SSH bridge attached to this request's connection."""
    transport = request.transport
    return transport.get_extra_info(IDENTITY_INFO) if transport is not None else None


@dataclass
class Context:
    """What a handler needs to answer one request."""

    registry: Registry
    identity: Identity
    route: Route
    params: dict[str, str]
    bytes_in: int = 0
    reference: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def store(self) -> RegistryStore:
        return self.registry.store

    @property
    def sessions(self) -> UploadSessions:
        return self.registry.sessions

    @property
    def settings(self) -> RegistrySettings:
        return self.registry.settings

    @property
    def name(self) -> str:
        return self.params["name"]

    def may(self, action: Action, repository: str) -> bool:
        return self.identity.may(action, repository)


class _Protocol(web.RequestHandler):
    """aiohttp's protocol for one connection, answering what never reaches `Registry.handle`
    (a malformed request line or header, headers too large, broken chunked framing) with the
    spec's JSON envelope instead of aiohttp's plain text, logged in one line, not a traceback.

    It also bounds a client that stops reading: every response write waits in aiohttp's
    `drain` while the transport has writing paused (the SSH channel's window is shut). If
    the transport's write buffer has not moved for `write_timeout` while paused, the
    connection is aborted and the handler cancelled, which releases the blob stream and
    file it holds. A slow reader keeps the buffer moving, however long one 4 MiB chunk
    takes it; only a client that reads nothing is cut off."""

    write_timeout: float | None = None
    _stall: asyncio.TimerHandle | None = None
    _unsent = -1  # the write buffer's size when the stall timer was last armed

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.write_timeout and self._stall is None:
            self._arm_stall()

    def _arm_stall(self) -> None:
        assert self.write_timeout and self.transport is not None
        self._unsent = self.transport.get_write_buffer_size()
        self._stall = self._loop.call_later(self.write_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        self._cancel_stall()
        super().resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_stall()
        super().connection_lost(exc)

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _write_stalled(self) -> None:
        self._stall = None
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() != self._unsent:  # slow, but moving
            self._arm_stall()
            return
        identity = transport.get_extra_info(IDENTITY_INFO)
        log.warning("client (key %s) read nothing of a response for %gs: connection closed",
                    identity.fingerprint if identity else "-", self.write_timeout)
        transport.abort()
        # An SSH channel is only gone once the peer confirms the close, which a client that
        # reads nothing may never do: let go of the handler now, not then.
        self.connection_lost(TimeoutError("response stalled"))

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        if status >= 500:  # aiohttp logs it with its traceback; only the body is ours
            super().handle_error(request, status, exc, message)
            body = INTERNAL_ERROR
        else:
            if request.writer.output_size > 0:
                raise ConnectionError("response already sent, cannot send an error")
            detail = (message or "").strip().splitlines()[0:1] or [""]
            identity = identity_from_transport(request)
            log.info("malformed HTTP request from %s (key %s): %s", request.remote,
                     identity.fingerprint if identity else "-", detail[0])
            body = RegistryError(Code.UNSUPPORTED, detail[0].rstrip(":"), status=status,
                                 message="malformed HTTP request").body()
        response = web.Response(status=status, body=body, content_type="application/json",
                                headers={"Docker-Distribution-API-Version": "registry/2.0"})
        response.force_close()
        return response

    def log_exception(self, *args: object, **kw: object) -> None:
        """A body whose framing or `Content-Encoding` breaks while aiohttp drains it after
        the answer (the handler did not need it) is the client's fault: one line, no
        traceback. Anything else is aiohttp's own failure and keeps its traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError):
            identity = self.transport.get_extra_info(IDENTITY_INFO) if self.transport else None
            cause = exc.__cause__ or exc
            log.info("unreadable request body after the answer (key %s): %s",
                     identity.fingerprint if identity else "-", type(cause).__name__)
            return
        super().log_exception(*args, **kw)


def _unsupported(message: RawRequestMessage) -> str | None:
    """Why a request the parser accepted is still not HTTP/1.x we serve, or None.
    llhttp lets HTTP/0.9 (`GET /`, no version), HTTP/2.0 request lines and CONNECT through."""
    if message.version not in (HttpVersion10, HttpVersion11):
        return f"unsupported HTTP version {message.version.major}.{message.version.minor}"
    if message.method == "CONNECT":
        return "CONNECT is not supported: this is a registry, not a proxy"
    return None


class _Server(web.Server):
    write_timeout: float | None = None

    def __call__(self) -> web.RequestHandler:
        # As web.Server.__call__, with the protocol above.
        protocol = _Protocol(self, loop=self._loop, **self._kwargs)
        protocol.write_timeout = self.write_timeout
        return protocol

    def _make_request(self, message: RawRequestMessage, payload: StreamReader,
                      protocol: web.RequestHandler, writer: AbstractStreamWriter,
                      task: asyncio.Task[None]) -> web.BaseRequest:
        """Every message becomes a request that can be answered with an HTTP/1.1 status
        line (aiohttp answers in the request's version: `HTTP/0.9 404`, or `HTTP/1.0` for
        what it could not parse); an unsupported one is marked for `Registry.handle` to
        refuse. Building a request must not fail: it happens outside any handler, and the
        connection would be left unanswered (a CONNECT without a target has no URL at all)."""
        reason = _unsupported(message) if message is not PARSE_ERROR else None
        if reason is not None or message is PARSE_ERROR:
            message = _answerable(message)
        try:
            request = web.BaseRequest(message, payload, protocol, writer, task, self._loop)
        except ValueError as exc:  # a target the parser passed but yarl cannot read
            reason = f"unreadable request target ({type(exc).__name__})"
            request = web.BaseRequest(_answerable(message), payload, protocol, writer, task,
                                      self._loop)
        if reason is not None:
            request[MALFORMED] = reason
        return request


def _answerable(message: RawRequestMessage) -> RawRequestMessage:
    """The message with what an error answer needs and nothing it could trip on: HTTP/1.1,
    and `/` for a target (absent for `CONNECT `; a host IDNA cannot decode, in the
    pure-Python parser's CONNECT or absolute-form)."""
    return message._replace(version=HttpVersion11, url=URL("/"))


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
    ) -> None:
        self.store = store
        self.settings = settings or RegistrySettings()
        self.identify = identify
        self.metrics = metrics or Metrics()
        self.sessions = UploadSessions(self.settings.upload_idle_timeout, self.metrics)
        self.origin = OriginPolicy.allowing(self.settings.hosts)
        self.sessions = UploadSessions(
            self.settings.upload_idle_timeout, self.metrics,
            max_per_key=self.settings.limits.max_uploads_per_key,
            max_total=self.settings.limits.max_uploads)
        self.in_flight = 0  # requests being handled right now
        self.heap = heap  # trimmed whenever no request is left
        self._pins: Counter[Digest] = Counter()

    async def start(self) -> None:
        self.sessions.start()

    @contextlib.contextmanager
    def pin(self, digests: Iterable[Digest]) -> Iterator[None]:
        """Mark digests as being referenced by a write in progress, for garbage collection."""
        held = list(digests)
        self._pins.update(held)
        try:
            yield
        finally:
            self._pins.subtract(held)
            for digest in held:
                if self._pins[digest] <= 0:
                    del self._pins[digest]

    def is_pinned(self, digest: Digest) -> bool:
        return self._pins[digest] > 0 if digest in self._pins else False

    async def close(self) -> None:
        await self.sessions.close()

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
        server = _Server(self.handle, **kwargs)  # type: ignore[arg-type]
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
            route, params = resolve(request.method, path)
            ctx = Context(self, identity, route, params)
            self._authorize(ctx)
            await self._continue(request)
            response = await route.handler(request, ctx)
        except RegistryError as exc:
            response = self._refusal(request, identity, exc)
        except PreconditionFailed as exc:
            response = self._refusal(request, identity, RegistryError(
                Code.TOOMANYREQUESTS, "concurrent update, retry", headers={"Retry-After": "1"}))
            log.warning("conflict on %s %s: %s", request.method, request.path, exc)
        except TooLarge as exc:
            response = self._refusal(request, identity, RegistryError(
                Code.BLOB_UPLOAD_INVALID, str(exc), status=413, message="blob too large"))
        except Overloaded as exc:
            response = self._refusal(request, identity, RegistryError(
                Code.TOOMANYREQUESTS, str(exc), headers={"Retry-After": LIMIT_RETRY_AFTER}))
        except StorageError as exc:
            log.error("storage failure on %s %s: %s", request.method, request.path, exc)
            response = self._error_response(RegistryError(
                Code.UNAVAILABLE, "storage unavailable", headers={"Retry-After": "5"}))
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
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
            log.warning("refused %s %s for key %s: %s", request.method, request.path, who, exc)
            self._audit(request, identity, exc.status, None, None, error=exc.code.name)
        elif exc.status == 429:  # a limit reached: worth a warning, once, with the key
            log.warning("limited %s %s for key %s: %s", request.method, request.path, who, exc)
        else:
            log.info("%s %s -> %d %s (key %s)", request.method, request.path, exc.status,
                     exc.code.name, who)
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
