"""Headless Firefox (Debian's `firefox-esr`) driven through WebDriver BiDi over its own
WebSocket: navigate, read the page with a script, click, answer a confirmation, and collect
the page's JavaScript errors and console messages.

`open_firefox(workdir)` starts it on a free loopback port with a fresh profile and yields a
`Firefox`; the process group is killed on exit. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.processes import free_port, wait_until

FIREFOX = "/usr/bin/firefox-esr"
TIMEOUT = 20.0


class Firefox:
    """One BiDi session with one browsing context (tab)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.problems: list[str] = []  # JavaScript errors and console errors or warnings
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.context = ""
        self.run(self._open())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))

    async def _open(self) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.url)
        await self._call("session.new", {"capabilities": {"alwaysMatch": {
            "unhandledPromptBehavior": {"default": "ignore"}}}})
        await self._call("session.subscribe", {"events": [
            "log.entryAdded", "browsingContext.userPromptOpened"]})
        tree = await self._call("browsingContext.getTree", {})
        self.context = tree["contexts"][0]["context"]

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        ident = next(self._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json()
            if message.get("type") == "event":
                await self._event(message)
                continue
            if message.get("id") != ident:
                continue
            if message.get("type") == "error":
                raise RuntimeError(f"{method}: {message.get('error')}: {message.get('message')}")
            return dict(message["result"])

    async def _event(self, message: dict[str, Any]) -> None:
        params = message["params"]
        if message["method"] == "log.entryAdded" and params.get("level") in ("error", "warn"):
            self.problems.append(f"{params.get('type')}: {params.get('text')}")
        elif message["method"] == "browsingContext.userPromptOpened":
            await self._send_only("browsingContext.handleUserPrompt",
                                  {"context": params["context"], "accept": True})

    async def _send_only(self, method: str, params: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_json({"id": next(self._ids), "method": method, "params": params})

    def navigate(self, url: str) -> None:
        self.run(self._call("browsingContext.navigate",
                            {"context": self.context, "url": url, "wait": "complete"}))

    def evaluate(self, expression: str) -> Any:
        """The JSON value of `expression` in the page (passed through JSON.stringify)."""
        result = self.run(self._call("script.evaluate", {
            "expression": f"JSON.stringify({expression})", "awaitPromise": True,
            "target": {"context": self.context}}))
        if result.get("type") == "exception":
            raise RuntimeError(f"script failed: {result.get('exceptionDetails')}")
        return json.loads(result["result"]["value"])

    def settle(self, seconds: float = 1.0) -> None:
        """Let events (a navigation after a submit, console messages) arrive."""
        async def pump() -> None:
            assert self._ws is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    while True:
                        message = await self._ws.receive_json()
                        if message.get("type") == "event":
                            await self._event(message)
        self.run(pump())

    def close(self) -> None:
        async def shut() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()
        with contextlib.suppress(Exception):
            self.run(shut())
        self.loop.close()


@contextlib.contextmanager
def open_firefox(workdir: Path) -> Iterator[Firefox]:
    profile = workdir / "profile"
    profile.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(workdir / "firefox.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [FIREFOX, "--headless", "--no-remote", "--profile", str(profile),
         "--remote-debugging-port", str(port), "about:blank"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MOZ_HEADLESS": "1"})
    try:
        wait_until(lambda: b"WebDriver BiDi listening" in (workdir / "firefox.log").read_bytes()
                   or proc.poll() is not None, 60, "firefox to listen")
        assert proc.poll() is None, (workdir / "firefox.log").read_text()
        browser = Firefox(f"ws://127.0.0.1:{port}/session")
        try:
            yield browser
        finally:
            browser.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()
