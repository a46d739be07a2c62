"""A real browser against a tunnel: Debian's headless `chromium` and an attacker's web site.

`AttackSite(address, port, pages, rebind_to=...)` is the attacker's server on a loopback
address of its own (127.0.0.2): it serves `pages` (path -> HTML), records what a page POSTs
to `/report?name=NAME` in `reports`, and answers 404 to anything else. With `rebind_to`, it
also stands in for DNS rebinding: a connection whose first request names a host other than
the site's own address and is not for a page or a report is relayed byte for byte to
`rebind_to` (the tunnel), exactly as the browser would send it there once the page's name
resolved to 127.0.0.1. Every page, report and 404 closes its connection, so each new
connection is decided on its own.

`chromium(url, workdir, host_rules)` runs headless chromium (as root: `--no-sandbox`) in its
own process group, with name resolution confined by `--host-resolver-rules` and no traffic
off the loopback; the group is killed on exit.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.processes import Process

CHROMIUM = "/usr/bin/chromium"
HEAD_LIMIT = 64 << 10
SOCKET_TIMEOUT = 30.0

# No network beyond what a test maps, no background traffic to Google's services.
_CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--no-default-browser-check", "--disable-background-networking", "--disable-sync",
    "--disable-component-update", "--disable-domain-reliability", "--disable-extensions",
    "--metrics-recording-only", "--no-proxy-server", "--mute-audio",
)


class AttackSite(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, pages: dict[str, str],
                 rebind_to: tuple[str, int] | None = None) -> None:
        self.pages = pages
        self.rebind_to = rebind_to
        self.reports: dict[str, Any] = {}
        self.relayed = 0  # connections handed to `rebind_to`
        self._lock = threading.Lock()
        super().__init__((address, port), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, name="attack-site",
                                        daemon=True)

    @property
    def origin(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> AttackSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(10)

    def record(self, name: str, report: Any) -> None:
        with self._lock:
            self.reports[name] = report


class _Handler(socketserver.BaseRequestHandler):
    server: AttackSite

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(SOCKET_TIMEOUT)
        head = _read_head(sock)
        if head is None:
            return
        request_line, headers = _parse_head(head)
        method, target = [*request_line.split(" "), "", ""][:2]
        url = urlsplit(target)
        if url.path in self.server.pages:
            self._answer(sock, 200, self.server.pages[url.path].encode(), "text/html")
        elif url.path == "/report" and method == "POST":
            body = _read_body(sock, head, int(headers.get("content-length", "0")))
            name = parse_qs(url.query).get("name", ["report"])[0]
            self.server.record(name, json.loads(body))
            self._answer(sock, 204, b"", "text/plain")
        elif self.server.rebind_to and headers.get("host") != _own_host(sock):
            with self.server._lock:
                self.server.relayed += 1
            _relay(sock, head, self.server.rebind_to)
        else:
            self._answer(sock, 404, b"not found", "text/plain")

    @staticmethod
    def _answer(sock: socket.socket, status: int, body: bytes, content_type: str) -> None:
        head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(OSError):
            sock.sendall(head.encode() + body)


def _own_host(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _read_head(sock: socket.socket) -> bytes | None:
    """Bytes received up to and including the first request's blank line (and any that
    came after it in the same reads); None if the connection ends or stalls first."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < HEAD_LIMIT:
        try:
            chunk = sock.recv(HEAD_LIMIT)
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data if b"\r\n\r\n" in data else None


def _parse_head(data: bytes) -> tuple[str, dict[str, str]]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    request_line, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return request_line, headers


def _read_body(sock: socket.socket, data: bytes, length: int) -> bytes:
    body = data.split(b"\r\n\r\n", 1)[1]
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return body[:length]


def _relay(client: socket.socket, first: bytes, target: tuple[str, int]) -> None:
    """Pass bytes both ways between `client` and `target` until either side closes."""
    try:
        upstream = socket.create_connection(target, timeout=SOCKET_TIMEOUT)
    except OSError:
        return
    with upstream:
        upstream.sendall(first)
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join(SOCKET_TIMEOUT)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(1 << 16):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def chromium(url: str, workdir: Path, host_rules: str = "") -> Iterator[Process]:
    """Headless chromium showing `url` until the block ends; its process group is then
    killed. `host_rules` go before rules that make every other name unresolvable and leave
    127.0.0.0/24 addresses alone."""
    rules = ", ".join(r for r in (host_rules, "MAP * ~NOTFOUND", "EXCLUDE 127.0.0.*") if r)
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    args = [CHROMIUM, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}",
            f"--host-resolver-rules={rules}", url]
    process = Process.start(args, workdir / "chromium.log")
    try:
        yield process
    finally:
        process.stop(timeout=5)
