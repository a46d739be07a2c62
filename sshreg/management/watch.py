"""Commands that stay: `events` streams the event log, `wait` blocks until a tag lands.

Both follow the same log as every gateway (`events/log.py`), so an event taken by another
box reaches them within its poll interval. A key sees only the events of repositories it
may pull (the run summaries of garbage collection only with the admin right).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..access import Action, Identity, glob_matches
from ..events.log import Event, EventLog, id_after
from ..settings import ConfigError, parse_duration
from ..storage.base import StorageError
from ..store.registry_store import RegistryStore

Write = Callable[[str], None]
RECHECK = 2.0  # seconds between looks at the tag itself, in case an event is late


class UsageError(Exception):
    """A mistake in the command's arguments (exit status 2)."""


@dataclass
class Follow:
    """A command's output that goes on: `run(out, err)` writes lines until it is done (or
    the client goes away, which cancels it) and returns the exit status."""

    run: Callable[[Write, Write], Awaitable[int]]


def options(args: list[str], names: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """Positional arguments, and the values of `--name VALUE` options."""
    positional, values = [], {}
    items = iter(args)
    for arg in items:
        if arg.startswith("--"):
            if arg[2:] not in names:
                raise UsageError(f"unknown option {arg}")
            value = next(items, None)
            if value is None:
                raise UsageError(f"{arg} needs a value")
            values[arg[2:]] = value
        else:
            positional.append(arg)
    return positional, values


def position(since: str | None, now: float) -> str:
    """Where in the log `--since` starts: a duration back from now, a UTC time
    (2026-12-03T10:00:00Z), or an event id (replay strictly after it)."""
    if since is None:
        return id_after(now)
    if since[:13].isdigit() and len(since) > 13 and since[13] == "-":
        return since  # an event id
    with contextlib.suppress(ConfigError):
        return id_after(now - parse_duration(since, "--since"))
    for pattern in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        with contextlib.suppress(ValueError):
            return id_after(calendar.timegm(time.strptime(since, pattern)))
    raise UsageError(f"--since {since!r}: expected a duration (10m), a UTC time "
                     "(2026-12-03T10:00:00Z) or an event id")


def follow_events(events: EventLog, identity: Identity, args: list[str],
                  as_json: bool) -> Follow:
    """`events [--repo GLOB] [--since DURATION|TIME|ID]`."""
    positional, values = options(args, ("repo", "since"))
    if positional:
        raise UsageError("events takes no arguments besides its options")
    start = position(values.get("since"), time.time())
    glob = values.get("repo")

    def shown(event: Event) -> bool:
        if not event.visible_to(identity):
            return False
        return glob is None or (event.repository is not None
                                and glob_matches(glob, event.repository))

    async def run(out: Write, err: Write) -> int:
        async for event in events.follow(start):
            if shown(event):
                out(json.dumps(event.to_json()) + "\n" if as_json else event.line() + "\n")
        return 0

    return Follow(run)


def wait_for_tag(store: RegistryStore, events: EventLog, identity: Identity, args: list[str],
                 as_json: bool) -> Follow:
    """`wait REPO:TAG [--not DIGEST] [--timeout DURATION]`: the tag's digest once it exists
    (and is not DIGEST), exit 0; exit 1 at the timeout."""
    positional, values = options(args, ("not", "timeout"))
    if len(positional) != 1 or ":" not in positional[0] or "@" in positional[0]:
        raise UsageError("usage: wait REPO:TAG [--not DIGEST] [--timeout DURATION]")
    name, _, tag = positional[0].rpartition(":")
    if not identity.may(Action.PULL, name):
        raise PermissionError(f"denied: this key may not pull {name}")
    try:
        timeout = parse_duration(values.get("timeout", "10m"), "--timeout")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    unwanted = values.get("not")

    async def run(out: Write, err: Write) -> int:
        landed = asyncio.Event()

        async def watch() -> None:
            async for event in events.follow(id_after(time.time() - 1)):
                if event.repository == name and tag in event.tags:
                    landed.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        deadline = time.monotonic() + timeout
        problem = ""
        try:
            while True:
                try:
                    digest = await store.tags.get(name, tag)
                    problem = ""
                except StorageError as exc:  # look again until the timeout
                    digest, problem = None, f" (storage: {exc})"
                if digest is not None and str(digest) != unwanted:
                    out(json.dumps({"digest": str(digest)}) + "\n" if as_json
                        else f"{digest}\n")
                    return 0
                left = deadline - time.monotonic()
                if left <= 0:
                    err(f"wait: {name}:{tag} did not "
                        f"{'move' if unwanted and digest else 'appear'} within {timeout:g}s"
                        f"{problem}\n")
                    return 1
                landed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(RECHECK, left)):
                        await landed.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    return Follow(run)
