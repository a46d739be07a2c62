"""Webhook deliveries: signed CloudEvents, retried in order, one deliverer per bucket, and
nothing lost across a restart."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sshreg.events import webhooks
from sshreg.events.log import EventLog
from sshreg.events.settings import WebhookSettings
from sshreg.events.webhooks import SIGNATURE, Delivery
from tests.http.helpers_api import push_image
from tests.http.test_events import gateway

SECRET = "hook-secret"


class Receiver:
    """An endpoint that refuses its first `refuse` deliveries (or hangs), and keeps the rest."""

    def __init__(self, refuse: int = 0, hang: bool = False) -> None:
        self.refuse = refuse
        self.hang = hang
        self.received: list[dict] = []
        self.attempts = 0
        self.server = TestServer(self._app())

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        return app

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert request.headers[SIGNATURE] == expected
        assert request.content_type == "application/cloudevents+json"
        if self.hang:
            await asyncio.sleep(3600)
        if self.refuse > 0:
            self.refuse -= 1
            return web.Response(status=503)
        self.received.append(json.loads(body))
        return web.Response(status=204)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/hook"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(webhooks, "FIRST_RETRY", 0.05)
    monkeypatch.setattr(webhooks, "RENEW", 0.2)
    monkeypatch.setenv("SSHREG_TEST_HOOK_SECRET", SECRET)


@pytest.fixture
async def receiver():
    hook = Receiver()
    await hook.server.start_server()
    yield hook
    await hook.server.close()


def settings(url: str, **keys) -> WebhookSettings:
    return WebhookSettings(url, secret_env="SSHREG_TEST_HOOK_SECRET", **keys)


@contextlib.asynccontextmanager
async def delivering(events: EventLog, hook: WebhookSettings, owner: str = "box-a"):
    task = asyncio.ensure_future(Delivery(events, hook, owner).run_forever())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def started(events: EventLog, hook: WebhookSettings) -> None:
    """Wait until the deliverer set its cursor (it delivers what comes after)."""
    key = f"events/deliveries/{hook.name}/cursor"
    for _ in range(200):
        if await events.driver.stat(key) is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the delivery did not start")


async def test_refused_deliveries_are_retried_and_arrive_in_order_signed(driver, receiver):
    events = EventLog(driver, "box-a", poll=0.1)
    hook = settings(receiver.url)
    receiver.refuse = 3
    async with delivering(events, hook):
        await started(events, hook)
        written = [await events.append("tag.deleted", repository="team/app", tags=(str(n),))
                   for n in range(5)]
        await until(lambda: len(receiver.received) == 5)
    assert [r["id"] for r in receiver.received] == [e.id for e in written]
    assert receiver.attempts == 8
    first = receiver.received[0]
    assert (first["specversion"], first["type"], first["subject"]) == (
        "1.0", "io.sshreg.tag.deleted", "team/app")
    assert first["data"]["tags"] == ["0"]


async def test_only_the_wanted_events_and_repositories_are_sent(driver, receiver):
    events = EventLog(driver, "box-a", poll=0.1)
    hook = settings(receiver.url, events=("manifest.deleted",), repos=("team/**",))
    async with delivering(events, hook):
        await started(events, hook)
        await events.append("tag.deleted", repository="team/app", tags=("1",))
        await events.append("manifest.deleted", repository="other/app", digest="sha256:" + "a" * 64)
        wanted = await events.append("manifest.deleted", repository="team/x/app",
                                     digest="sha256:" + "b" * 64)
        await until(lambda: len(receiver.received) == 1)
        await asyncio.sleep(0.5)
    assert [r["id"] for r in receiver.received] == [wanted.id]


async def test_with_two_gateways_on_one_bucket_each_event_is_delivered_once(driver, receiver):
    events_a = EventLog(driver, "box-a", poll=0.1)
    events_b = EventLog(driver, "box-b", poll=0.1)
    hook = settings(receiver.url)
    async with delivering(events_a, hook, "box-a"), delivering(events_b, hook, "box-b"):
        await started(events_a, hook)
        written = []
        for n in range(6):
            log = events_a if n % 2 else events_b
            written.append(await log.append("tag.deleted", repository="team/app", tags=(str(n),)))
        await until(lambda: len(receiver.received) == 6)
        await asyncio.sleep(0.5)
    assert sorted(r["id"] for r in receiver.received) == sorted(e.id for e in written)


async def test_events_written_while_no_gateway_delivers_arrive_after_a_restart(driver, receiver):
    events = EventLog(driver, "box-a", poll=0.1)
    hook = settings(receiver.url)
    async with delivering(events, hook):
        await started(events, hook)
        before = await events.append("tag.deleted", repository="team/app", tags=("1",))
        await until(lambda: len(receiver.received) == 1)
    missed = [await events.append("tag.deleted", repository="team/app", tags=(str(n),))
              for n in range(2, 5)]
    async with delivering(EventLog(driver, "box-a2", poll=0.1), hook, "box-a2"):
        await until(lambda: len(receiver.received) >= 4)
    ids = [r["id"] for r in receiver.received]
    assert ids[0] == before.id
    assert [i for i in ids if i != before.id] == [e.id for e in missed]  # none lost


async def test_a_hanging_endpoint_does_not_slow_a_push(driver):
    hanging = Receiver(hang=True)
    await hanging.server.start_server()
    registry, client, events = await gateway(driver, "box-a")
    try:
        quiet = time.monotonic()
        await push_image(client, "team/app", "0", seed="0")
        quiet = time.monotonic() - quiet
        async with delivering(events, settings(hanging.url)):
            await started(events, settings(hanging.url))
            busy = time.monotonic()
            for n in range(1, 4):
                await push_image(client, "team/app", str(n), seed=str(n))
            busy = (time.monotonic() - busy) / 3
            await until(lambda: hanging.attempts >= 1)
    finally:
        await client.close()
        await registry.close()
        await hanging.server.close()
    assert busy < quiet * 3 + 0.2
