"""Headless chromium driven through its DevTools protocol, for tests that act as a person.

`open_chromium(workdir, host_rules)` starts Debian's `chromium` (flags and name resolution as
in `tests/support/browser.py`: as root with `--no-sandbox`, nothing resolves beyond the
loopback and what `host_rules` map) with `--remote-debugging-port=0`, reads the port it
chose from the profile's `DevToolsActivePort`, and yields a `Chromium` whose `new_page()` is
a fresh tab as a `Page`, driven over a WebSocket (aiohttp's client, in a thread of its own,
so tests stay synchronous). No WebDriver, no browser download: the protocol is what chromium
itself speaks.

A `Page` navigates and waits for the load event, evaluates JavaScript, clicks at an
element's centre and types keys as real input events, emulates a viewport, takes PNG
screenshots, and records what a person would see go wrong: every console message, uncaught
exception and browser log entry (`problems()` lists those of level warning or error: CSP
violations, failed loads, script errors). A `confirm()`/`alert()` is answered as
`accept_dialogs` says, from the reader, and recorded in `dialogs`.

Every wait is bounded: each command by `COMMAND_TIMEOUT`, each load by `LOAD_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from tests.support.browser import _CHROMIUM_FLAGS, CHROMIUM
from tests.support.processes import Process, wait_until

T = TypeVar("T")

START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0
LOAD_TIMEOUT = 30.0

# What a key press sends: (key, code, Windows virtual key code, text typed).
KEYS = {
    "Tab": ("Tab", "Tab", 9, ""),
    "Enter": ("Enter", "Enter", 13, "\r"),
    "Space": (" ", "Space", 32, " "),
    "Escape": ("Escape", "Escape", 27, ""),
}
SHIFT = 8  # the modifiers bit of Shift


class DevToolsError(RuntimeError):
    """A command the browser answered with an error, or a script that threw."""


@dataclass(frozen=True)
class Message:
    """Something the page's console or the browser's log showed."""

    level: str  # "error", "warning", "info", "log", "debug", "verbose"
    source: str  # "console", "exception", or the log entry's source ("network", "security")
    text: str
    url: str = ""

    def __str__(self) -> str:
        return f"[{self.level} {self.source}] {self.text} {self.url}".strip()


class Page:
    """One chromium tab, through the DevTools WebSocket at `ws_url`."""

    def __init__(self, ws_url: str) -> None:
        self.accept_dialogs = True
        self.dialogs: list[str] = []  # the messages of every dialog shown, in order
        self.messages: list[Message] = []
        self._loads = 0  # main-frame load events so far
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._answers: set[asyncio.Future[dict[str, Any]]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="devtools",
                                        daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        try:
            self._run(self._connect(ws_url), START_TIMEOUT)
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    # -- plumbing ------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _connect(self, ws_url: str) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=256 << 20)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            else:
                self._event(message["method"], message.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DevToolsError("the DevTools connection closed"))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            with self._lock:
                self._loads += 1
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(params.get("message", ""))
            # Answered from here: the command that opened it waits until it is closed.
            answer = asyncio.ensure_future(self._command("Page.handleJavaScriptDialog",
                                                         {"accept": self.accept_dialogs}))
            self._answers.add(answer)
            answer.add_done_callback(self._answers.discard)
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", "")))
                            for a in params.get("args", []))
            level = {"assert": "error", "warning": "warning"}.get(params["type"], params["type"])
            self._record(Message(level, "console", text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self._record(Message("error", "exception", text, details.get("url", "")))
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self._record(Message(entry["level"], entry["source"], entry["text"],
                                 entry.get("url", "")))

    def _record(self, message: Message) -> None:
        with self._lock:
            self.messages.append(message)

    async def _command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._pending[self._next_id] = future
        await self._ws.send_str(json.dumps({"id": self._next_id, "method": method,
                                            "params": params}))
        return await future

    def send(self, method: str, timeout: float = COMMAND_TIMEOUT, **params: Any) -> dict[str, Any]:
        """Send a command and return its result; raise `DevToolsError` on an error answer."""
        answer = self._run(self._command(method, params), timeout)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def close(self) -> None:
        async def shut() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._reader is not None:
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await asyncio.wait_for(self._reader, 5)
            if self._session is not None:
                await self._session.close()

        with contextlib.suppress(Exception):
            self._run(shut(), 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # -- what a test does ----------------------------------------------------------------

    @property
    def loads(self) -> int:
        with self._lock:
            return self._loads

    def wait_for_load(self, loads_before: int, timeout: float = LOAD_TIMEOUT) -> None:
        """Wait until a load event fires after the `loads` count `loads_before` was read."""
        wait_until(lambda: self.loads > loads_before, timeout, "the page's load event",
                   interval=0.01)

    def navigate(self, url: str) -> None:
        """Go to `url` and return once its load event fired."""
        before = self.loads
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise DevToolsError(f"navigating to {url}: {result['errorText']}")
        self.wait_for_load(before)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True, userGesture=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise DevToolsError(details.get("exception", {}).get("description")
                                or details.get("text", "script failed"))
        return result["result"].get("value")

    @property
    def url(self) -> str:
        return str(self.evaluate("location.href"))

    def text(self, selector: str = "body") -> str:
        return str(self.evaluate(f"document.querySelector({json.dumps(selector)}).innerText"))

    def click(self, selector: str, index: int = 0) -> None:
        """A left click at the centre of the `index`-th element matching `selector` (of its
        first line, if it wraps), scrolled into view first, as the mouse would make it."""
        box = self.evaluate(f"""(() => {{
            const element = document.querySelectorAll({json.dumps(selector)})[{index}];
            if (!element) return null;
            element.scrollIntoView({{block: "center"}});
            const r = element.getClientRects()[0];  // a wrapped link: its first line
            const x = r.left + r.width / 2, y = r.top + r.height / 2;
            const hit = document.elementFromPoint(x, y);
            return {{x, y, hit: !!hit && (hit === element || element.contains(hit))}};
        }})()""")
        if box is None:
            raise DevToolsError(f"nothing matches {selector!r} [{index}]")
        if not box["hit"]:
            raise DevToolsError(f"{selector!r} [{index}] is covered where a click would go")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"],
                      button="left" if kind != "mouseMoved" else "none",
                      clickCount=1 if kind != "mouseMoved" else 0)

    def press(self, name: str, shift: bool = False) -> None:
        """A key pressed and released, as the keyboard would send it."""
        key, code, virtual, text = KEYS[name]
        common = {"key": key, "code": code, "windowsVirtualKeyCode": virtual,
                  "nativeVirtualKeyCode": virtual, "modifiers": SHIFT if shift else 0}
        if text:
            self.send("Input.dispatchKeyEvent", type="keyDown", text=text,
                      unmodifiedText=text, **common)
        else:
            self.send("Input.dispatchKeyEvent", type="rawKeyDown", **common)
        self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    def focused(self) -> dict[str, str] | None:
        """What has the keyboard focus: tag, id, text, href, type and aria-label."""
        value = self.evaluate("""(() => {
            const e = document.activeElement;
            if (!e || e === document.body) return null;
            return {tag: e.tagName.toLowerCase(), id: e.id, text: e.innerText || "",
                    href: e.getAttribute("href") || "", type: e.getAttribute("type") || "",
                    label: e.getAttribute("aria-label") || ""};
        })()""")
        return value if value else None

    def type_text(self, text: str) -> None:
        """Text typed into whatever has the focus."""
        self.send("Input.insertText", text=text)

    def navigation(self) -> dict[str, Any]:
        """The current document's HTTP status and navigation timing, once its load event
        has ended: `loaded` (the load event's end), `waited` (request sent to the answer's
        first byte) in milliseconds from the navigation's start."""
        script = ("(() => { const n = performance.getEntriesByType('navigation')[0];"
                  " return n && n.loadEventEnd > 0 ? {loaded: n.loadEventEnd,"
                  " waited: n.responseStart - n.requestStart,"
                  " status: n.responseStatus} : null; })()")
        timing: dict[str, Any] = wait_until(lambda: self.evaluate(script), LOAD_TIMEOUT,
                                            "the navigation's timing", interval=0.01)
        return timing

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=mobile)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def problems(self) -> list[Message]:
        """Console messages, exceptions and log entries of level warning or error so far."""
        with self._lock:
            return [m for m in self.messages if m.level in ("error", "warning")]


def _devtools_json(port: int, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/json/{path}", method=method)
    with urllib.request.urlopen(request, timeout=COMMAND_TIMEOUT) as response:
        body = response.read()
    return json.loads(body) if body.strip().startswith((b"{", b"[")) else body.decode()


class Chromium:
    """A running headless chromium; each `new_page()` is a fresh tab of it."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port

    @contextlib.contextmanager
    def new_page(self) -> Iterator[Page]:
        """A new tab showing about:blank, closed when the block ends."""
        target = _devtools_json(self.port, "new?about:blank", method="PUT")
        page = Page(target["webSocketDebuggerUrl"])
        try:
            yield page
        finally:
            page.close()
            with contextlib.suppress(OSError):
                _devtools_json(self.port, f"close/{target['id']}")


@contextlib.contextmanager
def open_chromium(workdir: Path, host_rules: str = "") -> Iterator[Chromium]:
    """Headless chromium with its DevTools endpoint on a port of its choosing, until the
    block ends; its process group is then stopped. `host_rules` as for `browser.chromium`."""
    rules = ", ".join(r for r in (host_rules, "MAP * ~NOTFOUND", "EXCLUDE 127.0.0.*") if r)
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    port_file = profile / "DevToolsActivePort"
    port_file.unlink(missing_ok=True)
    args = [CHROMIUM, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}",
            f"--host-resolver-rules={rules}", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", "--hide-scrollbars", "about:blank"]
    process = Process.start(args, workdir / "chromium.log")
    try:
        process.wait_ready(lambda: len(port_file.read_text().splitlines()) >= 2
                           if port_file.exists() else False, START_TIMEOUT,
                           "chromium's DevTools port")
        yield Chromium(process, int(port_file.read_text().split()[0]))
    finally:
        process.stop(timeout=5)
