"""Assembling and running the service: storage, registry and SSH gateway in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

from .config import Config, ConfigError
from .registry.app import Registry, RegistrySettings
from .ssh.authorized_keys import AuthorizedKeys
from .ssh.hostkey import HostKeyError, load_or_create_host_key
from .ssh.server import Gateway, GatewaySettings
from .storage.base import Driver
from .storage.filesystem import FilesystemDriver
from .storage.store import RegistryStore

log = logging.getLogger("sshreg")

STALE_SWEEP_INTERVAL = 3600.0
SHUTDOWN_GRACE = 60.0


def open_driver(config: Config) -> Driver:
    """The storage backend `config.storage` names: a folder or an s3:// URL."""
    if config.is_s3:
        from .storage.s3 import S3Driver

        return S3Driver.from_url(
            config.storage,
            endpoint_url=config.endpoint_url or None,
            region=config.region,
            part_size=config.part_size,
            part_concurrency=config.part_concurrency,
        )
    return FilesystemDriver(Path(config.storage))


def registry_settings(config: Config) -> RegistrySettings:
    return RegistrySettings(
        max_manifest_size=config.max_manifest_size,
        upload_idle_timeout=config.upload_idle_timeout,
        part_size=config.part_size if config.is_s3 else None,
        redirect_expiry=int(config.redirect_expiry),
    )


def gateway_settings(config: Config) -> GatewaySettings:
    return GatewaySettings(
        host=config.listen_host,
        port=config.listen_port,
        registry_port=config.registry_port,
        public_name=config.public_name,
        ciphers=config.ciphers,
        login_timeout=config.login_timeout,
        keepalive_interval=config.keepalive_interval,
    )


def notify_systemd(state: str) -> None:
    """sd_notify without libsystemd: a datagram to $NOTIFY_SOCKET, if systemd gave one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


async def _sweep_stale_uploads(driver: Driver, age: float) -> None:
    while True:
        try:
            removed = await driver.abort_stale_uploads(age)
            if removed:
                log.info("aborted %d abandoned upload(s) older than %.0fs", removed, age)
        except Exception:
            log.exception("sweeping abandoned uploads failed")
        await asyncio.sleep(STALE_SWEEP_INTERVAL)


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads authorized_keys."""
    try:
        host_key = load_or_create_host_key(config.keys)
    except (HostKeyError, OSError) as exc:
        raise ConfigError(f"host key: {exc}") from None
    keys = AuthorizedKeys(config.keys / "authorized_keys")
    driver = open_driver(config)
    registry = Registry(RegistryStore(driver), registry_settings(config))
    gateway = Gateway(gateway_settings(config), keys, host_key, registry.server())
    await registry.start()
    try:
        await gateway.start()
    except OSError as exc:
        await registry.close()
        await driver.close()
        raise ConfigError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
    sweeper = asyncio.create_task(_sweep_stale_uploads(driver, config.stale_upload_age))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, keys.reload_if_changed)

    port = gateway.sockets[0].getsockname()[1] if gateway.sockets else config.listen_port
    log.info("sshreg ready: ssh on %s:%d, storage %s, host key %s, %d authorized key(s)",
             config.listen_host, port, driver, host_key.get_fingerprint("sha256"),
             len(keys.entries()))
    notify_systemd("READY=1")
    await stop.wait()

    log.info("stopping: no new connections; waiting up to %.0fs for %d request(s)",
             SHUTDOWN_GRACE, registry.in_flight)
    notify_systemd("STOPPING=1")
    gateway.stop_accepting()
    if not await registry.drain(SHUTDOWN_GRACE):
        log.warning("%d request(s) still running at shutdown; aborting them", registry.in_flight)
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await gateway.close()
    await registry.close()
    await driver.close()
    log.info("stopped")
