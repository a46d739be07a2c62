"""Assembling and running the service: storage, registry and SSH gateway in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from dataclasses import replace
from typing import Any

from aiohttp import web

from .browser.app import Browser
from .config import Config
from .events.log import EventLog, gateway_name
from .events.webhooks import Delivery
from .keys.entries import KeyList
from .keys.local_file import AuthorizedKeys
from .keys.revocation import RevocationError
from .keys.revoked_file import RevokedKeys
from .management.collection import Collection
from .management.commands import Management
from .memory import HeapTrimmer
from .metrics import Metrics
from .mirror.cache import Mirrors
from .ready import log_ready, notify_systemd
from .registry.app import Registry
from .registry.origin import origin_middleware
from .settings import ConfigError, parse_address
from .ssh.hostkey import HostKeyError, load_or_create_host_key
from .ssh.server import Gateway
from .storage.base import Driver
from .storage.factory import open_driver
from .storage.instrumented import InstrumentedDriver
from .store.registry_store import RegistryStore

log = logging.getLogger("sshreg")

STALE_SWEEP_INTERVAL = 3600.0


def open_keys(config: Config) -> KeyList:
    """authorized_keys where the config says: a file, or an object in a bucket (polled)."""
    if config.server.shared_keys:
        from .keys.bucket_file import SharedAuthorizedKeys, open_bucket_file

        source = open_bucket_file(config.server.authorized_keys,
                                  endpoint_url=config.storage.endpoint_url or None,
                                  region=config.storage.region)
        return SharedAuthorizedKeys(source, config.server.authorized_keys_poll)
    return AuthorizedKeys(config.server.authorized_keys_location)



async def _sweep_stale_uploads(driver: Driver, age: float) -> None:
    """On start, then every hour (sooner when uploads count as stale sooner than 4 h)."""
    interval = min(STALE_SWEEP_INTERVAL, max(1.0, age / 4))
    while True:
        try:
            removed = await driver.abort_stale_uploads(age)
            if removed:
                log.info("aborted %(uploads)d abandoned upload(s) older than %(seconds).0fs",
                         {"uploads": removed, "seconds": age})
        except Exception:
            log.exception("sweeping abandoned uploads failed")
        await asyncio.sleep(interval)


class Service:
    """Storage, registry and SSH gateway of one process, started and stopped together."""

    def __init__(self, config: Config, driver: Driver | None = None, *,
                 housekeeping: bool = True) -> None:
        """`housekeeping`: run the sweep of abandoned uploads here (a worker supervisor gives
        it to one worker only)."""
        self.config = config
        self.housekeeping = housekeeping
        try:
            self.host_key = load_or_create_host_key(config.server.keys)
        except (HostKeyError, OSError) as exc:
            raise ConfigError(f"host key: {exc}") from None
        self.keys = open_keys(config)
        try:
            revoked = RevokedKeys(config.server.revoked_keys)
        except (OSError, RevocationError) as exc:
            raise ConfigError(f"server.revoked_keys: {exc}") from None
        self.metrics = Metrics()
        self.driver = driver or open_driver(config.storage, config.limits)
        store = RegistryStore(InstrumentedDriver(self.driver, self.metrics))
        self.heap = HeapTrimmer()
        registry = replace(config.registry, limits=config.limits,
                           part_size=config.storage.part_size if config.storage.is_s3 else None,
                           redirect_expiry=int(config.storage.redirect_expiry))
        self.events = EventLog(store.driver, gateway_name(), config.events.poll)
        mirrors = Mirrors(store, config.mirrors, config.registry.spool, self.metrics,
                          self.events) if config.mirrors else None
        self.collector = Collection(store, config.gc, config.mirrors, self.events,
                                    config.events.keep)
        browser = Browser(store, self.events, config.mirrors, self._gc_dry_run
                          ) if config.registry.browser else None
        self.registry = Registry(store, registry, metrics=self.metrics, heap=self.heap,
                                 mirrors=mirrors, events=self.events, browser=browser)
        self.gateway = Gateway(replace(config.server, limits=config.limits), self.keys, self.host_key,
                               self.registry.server(), self.metrics,
                               commands=Management(store, self.collector, mirrors, self.events),
                               revoked=revoked)
        self.deliveries = [Delivery(self.events, hook, gateway_name()) for hook in config.webhooks]
        self._sweeper: asyncio.Task[None] | None = None
        self._delivering: list[asyncio.Task[None]] = []
        self._metrics_runner: web.AppRunner | None = None

    async def _gc_dry_run(self) -> dict[str, Any]:
        return (await self.collector.run(dry_run=True)).to_dict()

    @property
    def port(self) -> int:
        sockets = self.gateway.sockets
        return sockets[0].getsockname()[1] if sockets else self.config.server.port

    async def start(self, listeners: list[socket.socket] | None = None,
                    metrics_socket: str | None = None) -> None:
        """Serve SSH on `listeners` (bound by a supervisor) or on the configured address;
        /metrics and /health on the configured loopback port, or for a supervisor on the
        Unix socket `metrics_socket`."""
        await self.keys.start()
        await self.registry.start()
        try:
            await self.gateway.start(listeners)
        except OSError as exc:
            await self.registry.close()
            await self.driver.close()
            raise ConfigError(f"cannot listen on {self.config.server.listen}: {exc.strerror or exc}"
                              ) from None
        if self.housekeeping:
            self._sweeper = asyncio.create_task(
                _sweep_stale_uploads(self.driver, self.config.storage.stale_upload_age))
            self._delivering = [asyncio.create_task(d.run_forever()) for d in self.deliveries]
        if metrics_socket is not None:
            await self._start_metrics(web.UnixSite, metrics_socket)
        elif self.config.metrics.listen:
            host, port = parse_address(self.config.metrics.listen, "metrics.listen")
            bound = await self._start_metrics(web.TCPSite, host, port)
            log.info("metrics on http://%(host)s:%(port)d/metrics",
                     {"host": bound[0], "port": bound[1]})

    def ready_fields(self) -> dict[str, Any]:
        """What the ready line says about this server."""
        return {"host": self.config.server.host, "port": self.port, "storage": str(self.driver),
                "host_key": self.host_key.get_fingerprint("sha256"),
                "keys": len(self.keys.entries())}

    async def _start_metrics(self, site: type[web.BaseSite], *where: object) -> Any:
        """/metrics (Prometheus, and its JSON snapshot for a supervisor) and /health; they
        need no key, so they are only ever on loopback or a private Unix socket."""
        app = web.Application(middlewares=[origin_middleware(self.registry.origin)])
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/metrics.json", self._serve_metrics_snapshot)
        app.router.add_get("/health", self._serve_health)
        self._metrics_runner = web.AppRunner(app, access_log=None)
        await self._metrics_runner.setup()
        try:
            await site(self._metrics_runner, *where).start()  # type: ignore[call-arg]
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.config.metrics.listen or where[0]} for "
                              f"metrics: {exc.strerror or exc}") from None
        return self._metrics_runner.addresses[0]  # where it listens

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_runner.addresses[0][1] if self._metrics_runner else None

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain",
                            charset="utf-8", headers={"Cache-Control": "no-store"})

    async def _serve_metrics_snapshot(self, request: web.Request) -> web.Response:
        return web.json_response(self.metrics.snapshot())

    async def _serve_health(self, request: web.Request) -> web.Response:
        """200 when storage answers within 5 seconds, 503 otherwise."""
        try:
            async with asyncio.timeout(5):
                await self.registry.store.health_check()
        except Exception as exc:  # any failure means unhealthy; say which
            log.warning("health check failed: %(error)s", {"error": str(exc)})
            return web.json_response({"status": "unhealthy", "storage": str(exc) or
                                      type(exc).__name__}, status=503)
        return web.json_response({"status": "ok", "storage": repr(self.driver),
                                  "connections": len(self.gateway.connections),
                                  "uploads": len(self.registry.sessions)})

    def stop_on_signals(self) -> asyncio.Event:
        """SIGTERM and SIGINT set the event returned (the caller then `stop`s); SIGHUP
        re-reads authorized_keys."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.keys.reload_if_changed)
        return stop

    async def stop(self, grace: float = 60.0) -> None:
        """Stop accepting, let running requests finish for `grace` seconds, then close all."""
        log.info("stopping: no new connections; waiting up to %(seconds).0fs for %(requests)d "
                 "request(s)", {"seconds": grace, "requests": self.registry.in_flight})
        self.gateway.stop_accepting()
        if not await self.registry.drain(grace):
            log.warning("%(requests)d request(s) still running at shutdown; aborting them",
                        {"requests": self.registry.in_flight})
        for task in [t for t in (self._sweeper, *self._delivering) if t is not None]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.gateway.close()
        await self.registry.close()
        await self.heap.close()
        await self.keys.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        await self.driver.close()
        log.info("stopped")


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads authorized_keys."""
    service = Service(config)
    await service.start()
    log_ready(service.ready_fields(), workers=1)
    stop = service.stop_on_signals()
    notify_systemd("READY=1")
    await stop.wait()
    notify_systemd("STOPPING=1")
    await service.stop(config.server.shutdown_grace)
