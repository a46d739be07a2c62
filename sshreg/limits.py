"""The [limits] section: how much one address, key or connection may take of the gateway,
how many uploads may be open, and how much memory their part buffers may hold.

A leaf module: the SSH gateway, the registry and the storage factory each take it."""

from __future__ import annotations

from dataclasses import dataclass

from .settings import parse_duration, parse_positive, parse_size, setting


@dataclass(frozen=True)
class Limits:
    max_connections: int = setting(256, "SSH connections in total", parse_positive)
    max_connections_per_key: int = setting(64, "a CI fleet may share one key", parse_positive)
    max_auth_attempts: int = setting(
        6, "keys tried on one connection (as OpenSSH's MaxAuthTries)", parse_positive)
    max_auth_failures_per_minute: int = setting(
        20, "per source address, then refused for a minute", parse_positive)
    max_channels_per_connection: int = setting(
        64, "concurrent channels: tunnels and commands", parse_positive)
    max_pending_per_address: int = setting(
        64, "connections of one address (IPv6: of one /64) not logged in yet", parse_positive)
    max_pending: int = setting(
        64, "connections not logged in yet, all addresses (keep it below max_connections)",
        parse_positive)
    idle_timeout: float = setting(
        "1h", "an SSH connection without open channels this long is closed", parse_duration)
    max_uploads_per_key: int = setting(
        100, "blob upload sessions one key may have open (then 429)", parse_positive)
    max_uploads: int = setting(1000, "blob upload sessions open in total (then 429)",
                               parse_positive)
    upload_buffer_budget: int = setting(
        "512MiB", "S3: part buffers of all uploads together (then 429); at least part_size x "
        "(parts_in_flight + 1)", parse_size)
