"""A tiny HTTP/1.1 client on a raw socket, for tests that must decide every byte and moment.

`Connection(port)` talks to 127.0.0.1:PORT (a tunnel), as `Host: localhost` unless a request
names another Host. `request()` sends a body from bytes or
an iterable of chunks, with `Transfer-Encoding: chunked` if asked; it calls `checkpoint()`
before every chunk and after the whole request is sent (a crash test kills the server there),
and stops sending when the server answers early (as Go's client does), so an error that
arrives mid-body is seen instead of a broken pipe. `send_partial()` sends a request head and
part of its body and returns, for tests that then disconnect or stall. Every socket
operation has a timeout; `request` never blocks longer than that per step.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT = 30.0


class HTTPError(Exception):
    """The connection broke or the answer was not HTTP."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        """The first spec error code of an error answer, if it has the JSON envelope."""
        try:
            return str(self.json()["errors"][0]["code"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None


class Connection:
    """One keep-alive HTTP connection to 127.0.0.1:`port`."""

    def __init__(self, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = bytearray()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP RST, as a crashed client's kernel would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    # -- sending -----------------------------------------------------------------------

    def send_head(self, method: str, target: str, headers: dict[str, str] | None = None) -> None:
        """Send a request head; `Host: localhost` unless `headers` name a Host of their own."""
        headers = dict(headers or {})
        if not any(name.lower() == "host" for name in headers):
            headers = {"Host": "localhost", **headers}
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def answered(self) -> bool:
        """Whether the server has sent something (or closed) without being asked to."""
        if self._buffer:
            return True
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def request(self, method: str, target: str, body: bytes | Iterable[bytes] | None = None, *,
                headers: dict[str, str] | None = None, chunked: bool = False,
                checkpoint: Callable[[], None] | None = None) -> Response:
        """Send a request and read its answer. An iterable body without `chunked` needs a
        Content-Length in `headers`."""
        head = dict(headers or {})
        if isinstance(body, bytes | bytearray):
            chunks: Iterable[bytes] = [bytes(body)] if body else []
            if not chunked:
                head.setdefault("Content-Length", str(len(body)))
        else:
            chunks = body or []
            if body is None and method in ("POST", "PUT", "PATCH") and not chunked:
                head.setdefault("Content-Length", "0")
        if chunked:
            head["Transfer-Encoding"] = "chunked"
        try:
            self.send_head(method, target, head)
            for chunk in chunks:
                if checkpoint:
                    checkpoint()
                if self.answered():
                    break  # an early answer: the server will not read the rest
                if chunk:
                    self.sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            else:
                if chunked:
                    self.sock.sendall(b"0\r\n\r\n")
            if checkpoint:
                checkpoint()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may have answered before closing: read it
        return self.read_response(head_only=method == "HEAD")

    def send_partial(self, method: str, target: str, body: bytes, headers: dict[str, str]
                     ) -> None:
        """Send the head and `body` (a part of what `headers` announce), and return."""
        self.send_head(method, target, headers)
        self.sock.sendall(body)

    # -- receiving -----------------------------------------------------------------------

    def _fill(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            raise HTTPError(f"no answer within {self.timeout}s") from None
        except ConnectionResetError as exc:
            raise HTTPError(f"connection reset: {exc}") from None
        if not data:
            raise HTTPError("connection closed")
        self._buffer += data

    def _take(self, n: int, skip: int = 0) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n + skip]
        return data

    def _read_until(self, marker: bytes) -> bytes:
        start = 0
        while (found := self._buffer.find(marker, start)) < 0:
            start = max(0, len(self._buffer) - len(marker) + 1)
            self._fill()
        return self._take(found, len(marker))

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        return self._take(n)

    def read_response(self, head_only: bool = False, allow_short: bool = False) -> Response:
        """The next answer. With `allow_short`, a body cut short by the server closing the
        connection is returned as it is (a test then checks it is shorter than announced)."""
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise HTTPError(f"not an HTTP answer: {status_line!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if status == 100:
            return self.read_response(head_only)
        if head_only or status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, b"")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n")
                    break
                body += self._read_exactly(size)
                self._read_exactly(2)
            return Response(status, headers, bytes(body))
        if "content-length" in headers:
            length = int(headers["content-length"])
            try:
                return Response(status, headers, self._read_exactly(length))
            except HTTPError:
                if not allow_short:
                    raise
                return Response(status, headers, self._take(len(self._buffer)))
        while True:
            try:
                self._fill()
            except HTTPError:
                break
        return Response(status, headers, self._take(len(self._buffer)))

    def wait_received(self, n: int) -> None:
        """Wait until `n` bytes of answers have arrived (they stay to be read)."""
        while len(self._buffer) < n:
            self._fill()

    def read_some(self, n: int) -> bytes:
        """At most `n` bytes of what has arrived (waiting for at least one)."""
        if not self._buffer:
            self._fill()
        return self._take(n)

    def closed_by_peer(self, timeout: float) -> bool:
        """Whether the server closes the connection within `timeout` seconds (anything it
        sends meanwhile is read and dropped)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(self.timeout)


def request(port: int, method: str, target: str, body: bytes | None = None, *,
            headers: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> Response:
    """One request on a fresh connection."""
    with Connection(port, timeout) as conn:
        return conn.request(method, target, body, headers=headers)
