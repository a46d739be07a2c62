"""Webhooks: each event POSTed to each endpoint that wants it, signed, in order, at least once.

Deliveries work from the stored log, not from the request that caused the event, so a push
never waits for an endpoint and a gateway that restarts goes on where the log says. For
each webhook one gateway on the bucket delivers: it holds a lease object
(`events/deliveries/<webhook>/lease`, rewritten with If-Match every `RENEW` seconds, taken
over once `STALE` seconds old, as the gc lease is) and keeps a cursor, the id of the last
event delivered, written at most once a second. Events are sent one at a time, so those of
one repository arrive in order; a failing endpoint is retried with exponential backoff for
the webhook's `retry_for`, then the event is given up (and logged), and the next is sent.

A delivery is a CloudEvents 1.0 structured JSON POST (`application/cloudevents+json`): a
vendor-neutral envelope that receivers (Knative, Argo Events, serverless functions) already
parse, where distribution's notification envelope is its own. It is signed like GitHub's:
`X-Sshreg-Signature-256: sha256=<HMAC-SHA256 of the body with the webhook's secret>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from ..access import glob_matches
from ..storage.base import Driver, PreconditionFailed, StorageError
from ..store import paths
from .log import Event, EventLog, id_after
from .settings import WebhookSettings

log = logging.getLogger("sshreg.events")

RENEW = 10.0
STALE = 30.0
FIRST_RETRY = 1.0
MAX_RETRY = 60.0
CURSOR_EVERY = 1.0
SIGNATURE = "X-Sshreg-Signature-256"


def cloudevent(event: Event) -> dict[str, Any]:
    data = event.to_json()
    doc = {"specversion": "1.0", "id": event.id, "source": f"sshreg://{event.gateway}",
           "type": f"io.sshreg.{event.type}", "time": data["time"],
           "datacontenttype": "application/json", "data": data}
    if event.repository:
        doc["subject"] = event.repository
    return doc


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Delivery:
    """Delivering the log to one webhook, whenever this gateway holds its lease."""

    def __init__(self, events: EventLog, hook: WebhookSettings, owner: str,
                 timeout: float = 10.0) -> None:
        self.events = events
        self.driver: Driver = events.driver
        self.hook = hook
        self.owner = owner
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._lease_key = paths.event_delivery(hook.name, "lease")
        self._cursor_key = paths.event_delivery(hook.name, "cursor")
        self._etag: str | None = None

    def wants(self, event: Event) -> bool:
        if event.type not in self.hook.events:
            return False
        return event.repository is None or any(glob_matches(g, event.repository)
                                               for g in self.hook.repos)

    async def run_forever(self) -> None:
        """Take the lease when it is free or stale, deliver while holding it."""
        while True:
            try:
                if await self._take_lease():
                    await self._deliver_while_held()
            except StorageError as exc:
                log.warning("webhook %(path)s: storage: %(error)s",
                            {"path": self.hook.url, "error": str(exc)})
            await asyncio.sleep(RENEW)

    async def _take_lease(self) -> bool:
        body = json.dumps({"owner": self.owner}).encode()
        try:
            self._etag = await self.driver.put(self._lease_key, body, if_none_match=True)
            return True
        except PreconditionFailed:
            pass
        info = await self.driver.stat(self._lease_key)
        if info is None or time.time() - info.modified < STALE:
            return False
        try:
            self._etag = await self.driver.put(self._lease_key, body, if_match=info.etag)
        except PreconditionFailed:
            return False
        log.info("webhook %(path)s: taking over deliveries left %(seconds).0fs ago",
                 {"path": self.hook.url, "seconds": time.time() - info.modified})
        return True

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW)
            try:
                self._etag = await self.driver.put(
                    self._lease_key, json.dumps({"owner": self.owner}).encode(),
                    if_match=self._etag)
            except PreconditionFailed:
                log.error("webhook %(path)s: another gateway took over the deliveries",
                          {"path": self.hook.url})
                return
            except StorageError as exc:
                log.warning("webhook %(path)s: renewing the lease: %(error)s",
                            {"path": self.hook.url, "error": str(exc)})

    async def _deliver_while_held(self) -> None:
        renewing = asyncio.get_running_loop().create_task(self._renew())
        cursor = await self._cursor()
        written, written_at = cursor, time.monotonic()
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as session:
                async for event in self.events.follow(cursor):
                    if renewing.done():
                        return  # the lease is lost: another gateway delivers now
                    if self.wants(event):
                        await self._deliver(session, event, renewing.done)
                        if renewing.done():
                            return  # not delivered here: the new holder starts at `cursor`
                    cursor = event.id
                    if time.monotonic() - written_at >= CURSOR_EVERY:
                        await self.driver.put(self._cursor_key, cursor.encode())
                        written, written_at = cursor, time.monotonic()
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            with contextlib.suppress(StorageError):
                if cursor != written:
                    await self.driver.put(self._cursor_key, cursor.encode())
                await self._release()

    async def _release(self) -> None:
        """Give the lease back (a stop, or a lost lease), so a restart need not wait STALE."""
        current = await self.driver.get(self._lease_key)
        if current is not None and current.etag == self._etag:
            await self.driver.delete(self._lease_key)

    async def _cursor(self) -> str:
        """Where the last holder stopped; for a new webhook, now."""
        obj = await self.driver.get(self._cursor_key)
        if obj is not None:
            return obj.data.decode()
        start = id_after(time.time())
        await self.driver.put(self._cursor_key, start.encode())
        return start

    async def _deliver(self, session: aiohttp.ClientSession, event: Event,
                       lease_lost: Callable[[], bool]) -> None:
        """POST one event until it is taken, `retry_for` runs out, or the lease is lost
        (another gateway then delivers it)."""
        body = json.dumps(cloudevent(event)).encode()
        headers = {"Content-Type": "application/cloudevents+json"}
        if self.hook.secret_env:
            headers[SIGNATURE] = signature(os.environ.get(self.hook.secret_env, ""), body)
        deadline = time.monotonic() + self.hook.retry_for
        delay = FIRST_RETRY
        while True:
            try:
                async with session.post(self.hook.url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        return
                    problem = f"answered {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if lease_lost():
                return
            if time.monotonic() + delay > deadline:
                log.error("webhook %(path)s: giving up event %(operation)s after %(seconds).0fs: "
                          "%(error)s", {"path": self.hook.url, "operation": event.id,
                                       "seconds": self.hook.retry_for, "error": problem})
                return
            log.warning("webhook %(path)s: event %(operation)s %(error)s; retrying in "
                        "%(seconds).0fs", {"path": self.hook.url, "operation": event.id,
                                           "error": problem, "seconds": delay})
            await asyncio.sleep(delay)
            delay = min(MAX_RETRY, delay * 2)
