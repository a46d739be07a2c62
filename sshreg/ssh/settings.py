"""What the SSH gateway is configured with."""

from __future__ import annotations

from dataclasses import dataclass, field

from .limits import Limits


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "0.0.0.0"
    port: int = 2222
    registry_port: int = 80
    public_name: str = ""  # how users reach this box, for the help text; hostname if empty
    ciphers: tuple[str, ...] = ()  # empty: chosen from the CPU's AES support
    login_timeout: float = 30.0
    keepalive_interval: float = 30.0
    limits: Limits = field(default_factory=Limits)
    proxy_protocol: tuple[str, ...] = ()  # balancers whose PROXY v2 headers are believed
