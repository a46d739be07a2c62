"""The registry's aiohttp protocol: what aiohttp itself would answer in plain text, or not bound.

`RegistryServer` stands in for `web.Server`: its `__call__` is a copy of aiohttp's with
`RegistryProtocol` as the protocol, and it overrides `_make_request`, an aiohttp internal.
Both were verified on the aiohttp version pinned in pyproject.toml;
tests/test_library_patches.py fails when another version is installed.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import ERROR as PARSE_ERROR
from yarl import URL

from .context import IDENTITY_INFO, identity_from_transport
from .errors import INTERNAL_ERROR, Code, RegistryError

log = logging.getLogger("sshreg.registry")

MALFORMED = web.RequestKey("sshreg.malformed", str)  # why a parsed request is not one we serve


class RegistryProtocol(web.RequestHandler):
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
        log.warning("client (key %(fingerprint)s) read nothing of a response for %(seconds)gs: "
                    "connection closed", {"fingerprint": identity.fingerprint if identity else "-",
                                          "seconds": self.write_timeout})
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
            log.info("malformed HTTP request from %(peer)s (key %(fingerprint)s): %(error)s",
                     {"peer": request.remote,
                      "fingerprint": identity.fingerprint if identity else "-",
                      "error": detail[0]})
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
            log.info("unreadable request body after the answer (key %(fingerprint)s): %(error)s",
                     {"fingerprint": identity.fingerprint if identity else "-",
                      "error": type(cause).__name__})
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


class RegistryServer(web.Server):
    write_timeout: float | None = None

    def __call__(self) -> web.RequestHandler:
        # As web.Server.__call__, with the protocol above.
        protocol = RegistryProtocol(self, loop=self._loop, **self._kwargs)
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
