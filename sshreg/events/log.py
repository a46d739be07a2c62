"""The event log: one small object per event under `events/log/`, named so that keys sort
by time (`<milliseconds>-<gateway>-<sequence>`), shared by every gateway on the bucket.

Writing an event is one small PUT beside a manifest push. Reading is a listing after a
point: `read_after` replays, `EventLog.follow` tails. A gateway lists the log every `poll`
seconds (at once when it wrote an event itself), and looks back `LOOKBACK` seconds each
time, so an event another gateway wrote a little late, or with a clock a little behind, is
still seen; ids already seen are skipped.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import contextlib
import itertools
import json
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..access import Action, Identity
from ..storage.base import Driver, StorageError
from ..store import paths

log = logging.getLogger("sshreg.events")

LOOKBACK = 10.0  # seconds an event may land late and still be followed
ID_TIME = re.compile(r"(\d{13})-")


def gateway_name(worker: int | None = None) -> str:
    """This process as events name it: the host, and the worker's number if any."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()) or "host"
    return f"{host}.{worker}" if worker is not None else f"{host}.{os.getpid()}"


@dataclass(frozen=True)
class Event:
    """One push or delete (or a mirror fill, or a GC run's summary)."""

    id: str
    time: float
    type: str
    gateway: str
    repository: str | None = None
    tags: tuple[str, ...] = ()
    digest: str | None = None
    media_type: str | None = None
    size: int | None = None
    artifact_type: str | None = None
    subject: str | None = None
    fingerprint: str = ""
    comment: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in asdict(self).items() if v not in (None, (), {}, "")}
        doc["tags"] = list(self.tags)
        doc["time"] = _iso(self.time)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Event:
        doc = dict(doc)
        doc["tags"] = tuple(doc.get("tags") or ())
        doc["time"] = _parse_iso(doc["time"])
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})

    def visible_to(self, identity: Identity) -> bool:
        """Repository events to keys that may pull the repository; the rest to admins."""
        if self.repository is None:
            return identity.rights.admin
        return identity.may(Action.PULL, self.repository)

    def line(self) -> str:
        """The event as one table line."""
        what = self.repository or ""
        if self.tags:
            what += ":" + ",".join(self.tags)
        if self.type == "gc.finished":
            what = json.dumps(self.report, sort_keys=True)
        who = self.comment or self.fingerprint
        return f"{_iso(self.time)}  {self.type:<16}  {what}  {self.digest or '-'}  {who}"


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + (
        f".{int(timestamp * 1000) % 1000:03d}Z")


def _parse_iso(text: str) -> float:
    base, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return seconds + (int(fraction.ljust(3, "0")[:3]) / 1000 if fraction else 0.0)


def id_after(timestamp: float) -> str:
    """A position in the log just before every event of `timestamp` or later."""
    return f"{int(timestamp * 1000):013d}"


def id_time(event_id: str) -> float:
    match = ID_TIME.match(event_id)
    return int(match[1]) / 1000 if match else 0.0


class EventLog:
    """This gateway's view of the log: writing its events, reading everyone's."""

    def __init__(self, driver: Driver, gateway: str, poll: float = 1.0) -> None:
        self.driver = driver
        self.gateway = gateway
        self.poll = poll
        self._sequence = itertools.count()
        self._written = asyncio.Event()  # wakes followers on this gateway at once

    async def append(self, type: str, identity: Identity | None = None, **fields: Any
                     ) -> Event | None:
        """Write an event of `identity`'s key (without one, of the gateway: GC, mirror
        fills, which name themselves in `comment`); a storage failure is logged, never
        raised (the push it describes already succeeded)."""
        now = time.time()
        who = {"fingerprint": identity.fingerprint, "comment": identity.comment} if identity else {}
        event = Event(id=f"{id_after(now)}-{self.gateway}-{next(self._sequence):06d}",
                      time=now, type=type, gateway=self.gateway, **{**who, **fields})
        try:
            await self.driver.put(paths.event(event.id), json.dumps(event.to_json()).encode())
        except StorageError as exc:
            log.error("writing event %(operation)s failed: %(error)s",
                      {"operation": event.type, "error": str(exc)})
            return None
        self._written.set()
        return event

    async def read_after(self, position: str) -> AsyncIterator[Event]:
        """Every event after `position` (an event id, or `id_after(time)`), in id order."""
        async for obj in self.driver.list(paths.EVENTS, start_after=paths.event(position)):
            event = await self._read(obj.key)
            if event is not None:
                yield event

    async def read(self, event_id: str) -> Event | None:
        """One event by its id (None if it was pruned)."""
        return await self._read(paths.event(event_id))

    async def latest_ids(self, count: int, within: float = 7 * 86400.0) -> list[str]:
        """The ids of the latest `count` events of the last `within` seconds, oldest first
        (a listing: the events themselves are read by whoever needs them)."""
        newest: collections.deque[str] = collections.deque(maxlen=count)
        async for obj in self.driver.list(paths.EVENTS,
                                          start_after=paths.event(id_after(time.time() - within))):
            newest.append(obj.key[len(paths.EVENTS):])
        return list(newest)

    async def _read(self, key: str) -> Event | None:
        obj = await self.driver.get(key)
        if obj is None:
            return None  # pruned meanwhile
        try:
            return Event.from_json(json.loads(obj.data))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable event %(key)s: %(error)s",
                        {"key": key, "error": str(exc)})
            return None

    async def follow(self, position: str) -> AsyncIterator[Event]:
        """The events after `position`, then each new one as it appears, forever (through
        storage errors, which are logged and retried at the next poll)."""
        seen: dict[str, float] = {}
        newest = id_time(position)
        while True:
            # ids start with their time, so the later of the two strings is the later point
            floor = max(position, id_after(max(0.0, newest - LOOKBACK)))
            try:
                async for obj in self.driver.list(paths.EVENTS, start_after=paths.event(floor)):
                    event_id = obj.key[len(paths.EVENTS):]
                    if event_id <= position or event_id in seen:
                        continue  # listed again for the look back: not read again
                    event = await self._read(obj.key)
                    if event is None:
                        continue
                    seen[event.id] = event.time
                    newest = max(newest, event.time)
                    yield event
            except StorageError as exc:
                # A storage blip ends no follower (an `events` stream, a `wait`, a webhook's
                # deliveries): the next poll lists from the same point again.
                log.warning("following events: %(error)s; trying again in %(seconds)gs",
                            {"error": str(exc), "seconds": self.poll})
            for old in [i for i, t in seen.items() if t < newest - 2 * LOOKBACK]:
                del seen[old]
            self._written.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._written.wait()

    async def prune(self, older_than: float) -> int:
        """Delete the events written before `older_than` (seconds since the epoch)."""
        cutoff = paths.event(id_after(older_than))
        removed = 0
        async for obj in self.driver.list(paths.EVENTS):
            if obj.key >= cutoff:
                break
            await self.driver.delete(obj.key)
            removed += 1
        return removed

