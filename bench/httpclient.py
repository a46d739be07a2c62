"""A minimal blocking HTTP/1.1 client on a raw socket, cheap enough not to be the bottleneck.

curl tops out near 190 MB/s for uploads on this machine; this client sends memoryviews of
a shared buffer with `sendall`/`sendmsg` and receives into one reused buffer with
`recv_into`, so a transfer costs the client little more than the system calls.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

RECV_SIZE = 1 << 20
MAX_HEAD = 64 << 10
KEEP_BODY_MAX = 16 << 20


class HttpError(RuntimeError):
    """An unexpected status, or a connection that broke mid-answer."""


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # kept only when asked for
    length: int = 0  # body bytes received

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


class HttpConnection:
    """One keep-alive connection to 127.0.0.1:`port`."""

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.host = f"127.0.0.1:{port}"
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()
        self._scratch = bytearray(RECV_SIZE)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> HttpConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending -------------------------------------------------------------------

    def _head_bytes(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}",
                 *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def send(self, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes = b"") -> None:
        """A request with a body in memory (possibly empty)."""
        all_headers = dict(headers or {})
        if body or method in ("PUT", "POST", "PATCH"):
            all_headers.setdefault("Content-Length", str(len(body)))
        self.sock.sendall(self._head_bytes(method, path, all_headers) + body)

    def send_stream(self, method: str, path: str, headers: dict[str, str], length: int,
                    pieces: Iterable[memoryview]) -> None:
        """A request whose `length`-byte body is streamed from `pieces`."""
        self.sock.sendall(self._head_bytes(method, path, {**headers,
                                                          "Content-Length": str(length)}))
        for piece in pieces:
            self.sock.sendall(piece)

    def send_chunked(self, method: str, path: str, headers: dict[str, str],
                     pieces: Iterable[memoryview]) -> None:
        """A request body in `Transfer-Encoding: chunked`, one HTTP chunk per piece."""
        self.sock.sendall(self._head_bytes(method, path, {**headers,
                                                          "Transfer-Encoding": "chunked"}))
        for piece in pieces:
            if len(piece):
                self._sendmsg_all([b"%x\r\n" % len(piece), piece, b"\r\n"])
        self.sock.sendall(b"0\r\n\r\n")

    def _sendmsg_all(self, parts: list[bytes | memoryview]) -> None:
        views = [memoryview(p) for p in parts]
        while views:
            sent = self.sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]

    # -- receiving -----------------------------------------------------------------

    def _fill(self) -> None:
        n = self.sock.recv_into(self._scratch)
        if n == 0:
            raise HttpError("connection closed by the server")
        self._buffer += self._scratch[:n]

    def _read_line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise HttpError("line too long")
            self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 2]
        return line

    def _read_head(self) -> Response:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise HttpError("response head too long")
            self._fill()
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[:end + 4]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"bad status line {lines[0]!r}")
        response = Response(int(parts[1]))
        for line in lines[1:]:
            name, _, value = line.partition(":")
            response.headers[name.strip().lower()] = value.strip()
        return response

    def _read_exact(self, n: int, keep: bool) -> bytes:
        """Read `n` body bytes; return them only if `keep`."""
        kept = bytearray() if keep else None
        take = min(n, len(self._buffer))
        if kept is not None:
            kept += self._buffer[:take]
        del self._buffer[:take]
        remaining = n - take
        view = memoryview(self._scratch)
        while remaining > 0:
            got = self.sock.recv_into(view, min(remaining, RECV_SIZE))
            if got == 0:
                raise HttpError(f"connection closed with {remaining} body bytes missing")
            if kept is not None:
                kept += view[:got]
            remaining -= got
        return bytes(kept) if kept is not None else b""

    def _read_chunked(self, keep: bool) -> tuple[bytes, int]:
        kept, total = bytearray(), 0
        while True:
            size = int(self._read_line().split(b";")[0], 16)
            if size == 0:
                while self._read_line():
                    pass
                return bytes(kept), total
            kept += self._read_exact(size, keep)
            total += size
            self._read_line()

    def response(self, *, head: bool = False, keep: bool = True) -> Response:
        """Read one response; `head` for answers to HEAD (no body); `keep` keeps the body."""
        response = self._read_head()
        while 100 <= response.status < 200:
            response = self._read_head()
        if head or response.status in (204, 304):
            return response
        if "chunked" in response.header("transfer-encoding").lower():
            response.body, response.length = self._read_chunked(keep)
            return response
        length = int(response.header("content-length", "0"))
        keep = keep and length <= KEEP_BODY_MAX
        response.body = self._read_exact(length, keep)
        response.length = length
        return response

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes = b"", *, expect: tuple[int, ...] = (200,),
                keep: bool = True) -> Response:
        self.send(method, path, headers, body)
        response = self.response(head=method == "HEAD", keep=keep)
        check(response, expect, f"{method} {path}")
        return response


def check(response: Response, expect: tuple[int, ...], what: str) -> None:
    if response.status not in expect:
        raise HttpError(f"{what}: HTTP {response.status} {response.body[:300]!r}")
