"""Configuration: embedded defaults, then a TOML file, then command-line flags.

Every key of the file, with its default (sizes accept `32MiB`-style strings, durations
`90s`, `10m`, `24h`, `7d` or plain seconds):

    [server]
    listen = "0.0.0.0:2222"       # address and port of the SSH server
    keys = "keys"                 # folder with authorized_keys and the host key
    authorized_keys = ""          # default KEYS/authorized_keys; or a shared path, or
                                  # s3://BUCKET/KEY: one file for several gateways
    authorized_keys_poll = "10s"  # how often an s3:// authorized_keys is checked for changes
    public_name = ""              # host name shown in the help text (default: hostname)
    registry_port = 80            # the port users forward to: ssh -L 5000:localhost:80
    ciphers = []                  # SSH ciphers; default from the CPU's AES support
    login_timeout = "30s"
    keepalive_interval = "30s"
    shutdown_grace = "60s"        # on SIGTERM, running requests get this long to finish
    proxy_protocol = []           # TCP load balancers (addresses or networks) whose PROXY
                                  # protocol v2 header names the client; [] = none

    [storage]
    url = "data"                  # a folder, or s3://BUCKET[/PREFIX] for R2/S3
    endpoint_url = ""             # S3 endpoint; else AWS_ENDPOINT_URL(_S3)
    region = "auto"
    part_size = "32MiB"           # fixed multipart part size (R2: all parts equal)
    part_concurrency = 4          # parts uploaded in parallel per blob
    parts_in_flight = 8           # parts being uploaded at once, all blobs together
    redirect_expiry = "0s"        # >0: blob pulls redirect to presigned URLs valid this long
    stale_upload_age = "24h"      # multipart uploads older than this are aborted
    connect_timeout = "5s"        # S3: connecting to the endpoint
    read_timeout = "20s"          # S3: any wait for the service (an answer, sending a part)
    max_attempts = 3              # S3: tries per call (5xx, throttling, timeouts); with the
                                  # timeouts, bounds a call to a dead service (78 s by default)

    [registry]
    max_manifest_size = "4MiB"
    max_manifest_descriptors = 1000  # distinct digests one manifest names: config, layers,
                                  # subject, index entries (real images: far fewer)
    upload_idle_timeout = "10m"   # an upload session untouched this long is aborted
    body_idle_timeout = "2m"      # a request body that sends nothing this long is cut off
    header_timeout = "60s"        # a connection must send its next request's headers within
                                  # this long of opening or of its last answer (slowloris)
    hosts = []                    # Host names accepted besides localhost, 127.0.0.0/8 and
                                  # [::1] (any port), e.g. a name mapped in /etc/hosts

    [limits]
    max_connections = 256         # SSH connections in total
    max_connections_per_key = 64     # a CI fleet may share one key
    max_auth_attempts = 6         # keys tried on one connection
    max_auth_failures_per_minute = 20   # per source address, then refused for a minute
    max_channels_per_connection = 64    # concurrent channels: tunnels and commands
    max_pending_per_address = 64  # connections of one address not logged in yet
    max_pending = 64              # connections not logged in yet, all addresses (keep it
                                  # below max_connections); IPv6 counts per /64
    idle_timeout = "1h"           # an SSH connection without open channels this long is closed
    max_uploads_per_key = 100     # blob upload sessions one key may have open (then 429)
    max_uploads = 1000            # blob upload sessions open in total (then 429)
    upload_buffer_budget = "512MiB"  # S3: part buffers of all uploads together (then 429);
                                  # at least part_size x (parts_in_flight + 1)

    [metrics]
    listen = ""                   # loopback HOST:PORT for /metrics and /health, e.g. 127.0.0.1:9419

    [gc]
    grace = "6h"                  # nothing written more recently than this is collected
    safety = "60s"                # pause before deleting, then a second look at new pushes
    keep_untagged = false         # true: manifests without a tag are kept (and their blobs)

    [[retention]]                 # any number of policies; none by default
    repositories = "team/*"       # glob (see access rights)
    keep_last = 10                # keep the 10 most recently written tags...
    keep_tags = "v[0-9.]+"        # ...plus every tag matching this regex...
    max_age = "90d"               # ...and drop other tags older than this

    [log]
    level = "info"
    format = "text"               # text, json or logfmt

Secrets (S3 keys) never live here: they come from the environment or AWS profiles.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .management.retention import RetentionPolicy


class ConfigError(Exception):
    """A configuration problem, explained in one line."""


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_HOST_NAME = re.compile(r"[a-zA-Z0-9_]([a-zA-Z0-9_-]*[a-zA-Z0-9_])?"
                        r"(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]*[a-zA-Z0-9_])?)*")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match[2].lower() not in _SIZE_UNITS:
        raise ConfigError(f"{what}: {value!r} is not a size (like 32MiB)")
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def parse_duration(value: Any, what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
    if not match:
        raise ConfigError(f"{what}: {value!r} is not a duration (like 90s, 10m, 24h)")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"listen: {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class Config:
    listen_host: str = "0.0.0.0"
    listen_port: int = 2222
    keys: Path = Path("keys")
    authorized_keys: str = ""
    authorized_keys_poll: float = 10.0
    public_name: str = ""
    registry_port: int = 80
    ciphers: tuple[str, ...] = ()
    login_timeout: float = 30.0
    keepalive_interval: float = 30.0
    shutdown_grace: float = 60.0
    proxy_protocol: tuple[str, ...] = ()

    storage: str = "data"
    endpoint_url: str = ""
    region: str = "auto"
    part_size: int = 32 << 20
    part_concurrency: int = 4
    parts_in_flight: int = 8
    redirect_expiry: float = 0.0
    stale_upload_age: float = 86400.0
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    max_attempts: int = 3

    max_manifest_size: int = 4 << 20
    max_manifest_descriptors: int = 1000
    upload_idle_timeout: float = 600.0
    body_idle_timeout: float = 120.0
    header_timeout: float = 60.0
    registry_hosts: tuple[str, ...] = ()

    max_connections: int = 256
    max_connections_per_key: int = 64
    max_auth_attempts: int = 6
    max_auth_failures_per_minute: int = 20
    max_channels_per_connection: int = 64
    max_pending_per_address: int = 64
    max_pending: int = 64
    idle_timeout: float = 3600.0
    max_uploads_per_key: int = 100
    max_uploads: int = 1000
    upload_buffer_budget: int = 512 << 20

    metrics_listen: str = ""

    gc_grace: float = 6 * 3600.0
    gc_safety: float = 60.0
    gc_keep_untagged: bool = False
    retention: tuple[RetentionPolicy, ...] = ()

    log_level: str = "info"
    log_format: str = "text"

    source: str = field(default="defaults", compare=False)

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def is_s3(self) -> bool:
        return self.storage.startswith("s3://")

    @property
    def authorized_keys_location(self) -> str:
        """Where authorized_keys is: a path, or an s3://BUCKET/KEY URL."""
        return self.authorized_keys or str(self.keys / "authorized_keys")

    @property
    def shared_keys(self) -> bool:
        """Whether authorized_keys lives in a bucket (polled, not re-read on login)."""
        return self.authorized_keys.startswith("s3://")


# (section, key) in the file -> (Config field, parser)
_FILE_KEYS: dict[tuple[str, str], tuple[str, Any]] = {
    ("server", "keys"): ("keys", lambda v, w: Path(_str(v, w))),
    ("server", "authorized_keys"): ("authorized_keys", lambda v, w: _str(v, w)),
    ("server", "authorized_keys_poll"): ("authorized_keys_poll", parse_duration),
    ("server", "public_name"): ("public_name", lambda v, w: _str(v, w)),
    ("server", "registry_port"): ("registry_port", lambda v, w: _port(v, w)),
    ("server", "ciphers"): ("ciphers", lambda v, w: _str_tuple(v, w)),
    ("server", "login_timeout"): ("login_timeout", parse_duration),
    ("server", "keepalive_interval"): ("keepalive_interval", parse_duration),
    ("server", "shutdown_grace"): ("shutdown_grace", parse_duration),
    ("server", "proxy_protocol"): ("proxy_protocol", lambda v, w: _str_tuple(v, w)),
    ("storage", "url"): ("storage", lambda v, w: _str(v, w)),
    ("storage", "endpoint_url"): ("endpoint_url", lambda v, w: _str(v, w)),
    ("storage", "region"): ("region", lambda v, w: _str(v, w)),
    ("storage", "part_size"): ("part_size", parse_size),
    ("storage", "part_concurrency"): ("part_concurrency", lambda v, w: _positive(v, w)),
    ("storage", "parts_in_flight"): ("parts_in_flight", lambda v, w: _positive(v, w)),
    ("storage", "redirect_expiry"): ("redirect_expiry", parse_duration),
    ("storage", "stale_upload_age"): ("stale_upload_age", parse_duration),
    ("storage", "connect_timeout"): ("connect_timeout", parse_duration),
    ("storage", "read_timeout"): ("read_timeout", parse_duration),
    ("storage", "max_attempts"): ("max_attempts", lambda v, w: _positive(v, w)),
    ("registry", "max_manifest_size"): ("max_manifest_size", parse_size),
    ("registry", "max_manifest_descriptors"):
        ("max_manifest_descriptors", lambda v, w: _positive(v, w)),
    ("registry", "upload_idle_timeout"): ("upload_idle_timeout", parse_duration),
    ("registry", "body_idle_timeout"): ("body_idle_timeout", parse_duration),
    ("registry", "header_timeout"): ("header_timeout", parse_duration),
    ("registry", "hosts"): ("registry_hosts", lambda v, w: _host_names(v, w)),
    ("limits", "max_connections"): ("max_connections", lambda v, w: _positive(v, w)),
    ("limits", "max_connections_per_key"): ("max_connections_per_key", lambda v, w: _positive(v, w)),
    ("limits", "max_auth_attempts"): ("max_auth_attempts", lambda v, w: _positive(v, w)),
    ("limits", "max_auth_failures_per_minute"):
        ("max_auth_failures_per_minute", lambda v, w: _positive(v, w)),
    ("limits", "max_channels_per_connection"):
        ("max_channels_per_connection", lambda v, w: _positive(v, w)),
    ("limits", "max_pending_per_address"):
        ("max_pending_per_address", lambda v, w: _positive(v, w)),
    ("limits", "max_pending"): ("max_pending", lambda v, w: _positive(v, w)),
    ("limits", "idle_timeout"): ("idle_timeout", parse_duration),
    ("limits", "max_uploads_per_key"): ("max_uploads_per_key", lambda v, w: _positive(v, w)),
    ("limits", "max_uploads"): ("max_uploads", lambda v, w: _positive(v, w)),
    ("limits", "upload_buffer_budget"): ("upload_buffer_budget", parse_size),
    ("metrics", "listen"): ("metrics_listen", lambda v, w: _str(v, w)),
    ("gc", "grace"): ("gc_grace", parse_duration),
    ("gc", "safety"): ("gc_safety", parse_duration),
    ("gc", "keep_untagged"): ("gc_keep_untagged", lambda v, w: _bool(v, w)),
    ("log", "level"): ("log_level", lambda v, w: _choice(v, w, ("debug", "info", "warning", "error"))),
    ("log", "format"): ("log_format", lambda v, w: _choice(v, w, ("text", "json", "logfmt"))),
}


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what}: expected a string, got {value!r}")
    return value


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what}: expected a list of strings")
    return tuple(value)


def _host_names(value: Any, what: str) -> tuple[str, ...]:
    names = _str_tuple(value, what)
    for name in names:
        if not _HOST_NAME.fullmatch(name):
            raise ConfigError(f"{what}: {name!r} is not a host name (no port, no wildcard)")
    return tuple(name.lower() for name in names)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what}: expected true or false, got {value!r}")
    return value


def _retention(value: Any, what: str) -> tuple[RetentionPolicy, ...]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{what}: use [[retention]] tables")
    policies = []
    for i, table in enumerate(value):
        where = f"{what}[{i}]"
        unknown = set(table) - {"repositories", "keep_last", "keep_tags", "max_age"}
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
        if "repositories" not in table:
            raise ConfigError(f"{where}: repositories is required")
        keep_tags = table.get("keep_tags")
        if keep_tags is not None:
            try:
                re.compile(_str(keep_tags, f"{where}.keep_tags"))
            except re.error as exc:
                raise ConfigError(f"{where}.keep_tags: invalid regex: {exc}") from None
        policies.append(RetentionPolicy(
            repositories=_str(table["repositories"], f"{where}.repositories"),
            keep_last=_positive(table["keep_last"], f"{where}.keep_last")
            if "keep_last" in table else None,
            keep_tags=keep_tags,
            max_age=parse_duration(table["max_age"], f"{where}.max_age")
            if "max_age" in table else None,
        ))
    return tuple(policies)


def _positive(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what}: expected a positive integer, got {value!r}")
    return value


def _port(value: Any, what: str) -> int:
    port = _positive(value, what)
    if port > 65535:
        raise ConfigError(f"{what}: {port} is not a port")
    return port


def _choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{what}: {value!r} is not one of {', '.join(choices)}")
    return value


def load_config(path: Path | None = None, **overrides: Any) -> Config:
    """Defaults, then the TOML file (if any), then non-None `overrides` (the CLI flags)."""
    config = Config()
    if path is not None:
        config = _apply_file(config, path)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "listen" in changes:
        host, port = parse_listen(changes.pop("listen"))
        changes.update(listen_host=host, listen_port=port)
    if "keys" in changes:
        changes["keys"] = Path(changes["keys"])
    known = {f.name for f in fields(Config)}
    unknown = set(changes) - known
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    config = replace(config, **changes)
    validate(config)
    return config


def _apply_file(config: Config, path: Path) -> Config:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    changes: dict[str, Any] = {}
    for section, table in doc.items():
        if section == "retention":
            changes["retention"] = _retention(table, f"{path}: retention")
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section!r} must be a [section]")
        for key, value in table.items():
            what = f"{path}: {section}.{key}"
            if (section, key) == ("server", "listen"):
                host, port = parse_listen(_str(value, what))
                changes.update(listen_host=host, listen_port=port)
                continue
            spec = _FILE_KEYS.get((section, key))
            if spec is None:
                raise ConfigError(f"{what}: unknown setting")
            name, parse = spec
            changes[name] = parse(value, what)
    return replace(config, source=str(path), **changes)


def validate(config: Config) -> None:
    if config.metrics_listen:
        host, _ = parse_listen(config.metrics_listen)
        if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127."):
            raise ConfigError(f"metrics.listen: {config.metrics_listen!r} must be a loopback "
                              "address (metrics are not authenticated)")
    if config.is_s3 and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?", config.storage):
        raise ConfigError(f"storage: {config.storage!r} is not s3://BUCKET[/PREFIX]")
    if config.shared_keys and not re.fullmatch(
            r"s3://[a-z0-9][a-z0-9.-]{1,62}/[^/](.*[^/])?", config.authorized_keys):
        raise ConfigError(f"server.authorized_keys: {config.authorized_keys!r} is not "
                          "s3://BUCKET/KEY")
    for balancer in config.proxy_protocol:
        try:
            ipaddress.ip_network(balancer, strict=False)
        except ValueError:
            raise ConfigError(f"server.proxy_protocol: {balancer!r} is not an address or "
                              "network") from None
    if not 1 <= config.authorized_keys_poll <= 3600:
        raise ConfigError("server.authorized_keys_poll must be between 1s and 1h")
    if not 5 << 20 <= config.part_size <= 5 << 30:
        raise ConfigError("storage.part_size must be between 5MiB and 5GiB (R2 and S3 limits)")
    if config.connect_timeout <= 0 or config.read_timeout <= 0:
        raise ConfigError("storage.connect_timeout and storage.read_timeout must be positive")
    if config.max_manifest_size < 4 << 20:
        raise ConfigError("registry.max_manifest_size must be at least 4MiB (OCI requirement)")
    if config.is_s3 and config.upload_buffer_budget < config.part_size * (
            config.parts_in_flight + 1):
        raise ConfigError("limits.upload_buffer_budget must be at least storage.part_size x "
                          "(storage.parts_in_flight + 1)")
