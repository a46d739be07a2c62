"""The [server] section: what the SSH gateway is configured with, and where its keys are
(the service opens them and stops within shutdown_grace)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..access import Rights
from ..limits import Limits
from ..settings import (
    Address,
    ConfigError,
    parse_address,
    parse_bool,
    parse_duration,
    parse_networks,
    parse_path,
    parse_port,
    parse_positive,
    parse_section,
    parse_str,
    parse_str_list,
    path_or_s3,
    setting,
)

MAX_WORKERS = 64


def parse_workers(value: Any, what: str) -> int:
    """`auto` (one per CPU this process may run on), or a count (a string of digits from
    the command line too)."""
    if value == "auto":  # the CPUs this process may run on (all of them where the OS cannot say)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return min(MAX_WORKERS, cpus or 1)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    workers = parse_positive(value, what)
    if workers > MAX_WORKERS:
        raise ConfigError(f"{what}: at most {MAX_WORKERS} workers, got {workers}")
    return workers


@dataclass(frozen=True)
class GatewaySettings:
    listen: Address = setting("0.0.0.0:2222", "address and port of the SSH server", parse_address)
    keys: Path = setting("keys", "folder with authorized_keys and the host key", parse_path)
    authorized_keys: str = setting(
        "", "default KEYS/authorized_keys; or a shared path, or s3://BUCKET/KEY: one file for "
        "several gateways", path_or_s3("s3://BUCKET/KEY", r"/[^/](.*[^/])?"))
    authorized_keys_poll: float = setting(
        "10s", "how often an s3:// authorized_keys is checked for changes", parse_duration,
        low="1s", high="1h")
    public_name: str = setting("", "host name shown in the help text (default: hostname)",
                               parse_str)
    registry_port: int = setting(80, "the port users forward to: ssh -L 5000:localhost:80",
                                 parse_port)
    ciphers: tuple[str, ...] = setting([], "SSH ciphers; default from the CPU's AES support",
                                       parse_str_list)
    login_timeout: float = setting("30s", "a connection must log in within this long",
                                   parse_duration)
    keepalive_interval: float = setting(
        "30s", "an SSH keepalive this often; 4 unanswered close the connection", parse_duration)
    shutdown_grace: float = setting(
        "60s", "on SIGTERM, running requests get this long to finish", parse_duration)
    proxy_protocol: tuple[str, ...] = setting(
        [], "TCP load balancers (addresses or networks) whose PROXY protocol v2 header names "
        "the client; [] = none", parse_networks)
    workers: int = setting(
        "auto", "processes serving SSH connections on the one port; auto: one per CPU",
        parse_workers)
    revoked_keys: str = setting(
        "", "OpenSSH KRL (ssh-keygen -k) or public keys, one per line: revoked keys and "
        "certificates; re-read when it changes", parse_str)
    limits: Limits = field(default_factory=Limits)  # the [limits] section, given by the service
    # the [principals] table: certificate principal -> the rights it brings
    principals: tuple[tuple[str, Rights], ...] = ()

    @property
    def host(self) -> str:
        return self.listen.host

    @property
    def port(self) -> int:
        return self.listen.port

    @property
    def authorized_keys_location(self) -> str:
        """Where authorized_keys is: a path, or an s3://BUCKET/KEY URL."""
        return self.authorized_keys or str(self.keys / "authorized_keys")

    @property
    def shared_keys(self) -> bool:
        """Whether authorized_keys lives in a bucket (polled, not re-read on login)."""
        return self.authorized_keys.startswith("s3://")


@dataclass(frozen=True)
class PrincipalRights:
    """One `[principals.NAME]` table: what a certificate for that principal may do."""

    pull: tuple[str, ...] = setting([], "globs it may pull", parse_str_list, example=["ml/**"])
    push: tuple[str, ...] = setting([], "globs it may push (and pull)", parse_str_list,
                                    example=["ml/*"])
    delete: tuple[str, ...] = setting([], "globs it may delete in", parse_str_list)
    admin: bool = setting(False, "garbage collection and host-wide management", parse_bool)

    def rights(self) -> Rights:
        return Rights(pull=self.pull, push=self.push, delete=self.delete, admin=self.admin)


def parse_principals(value: Any, what: str) -> tuple[tuple[str, Rights], ...]:
    """The [principals] table: a [principals.NAME] table per certificate principal."""
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise ConfigError(f"{what}: use [principals.NAME] tables")
    return tuple((name, parse_section(PrincipalRights, table, f"{what}.{name}").rights())
                 for name, table in value.items())
