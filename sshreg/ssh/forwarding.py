"""Where a tunnel may go: the registry's own address, and only as the key's line allows.

Anything else would make the gateway an open proxy into the box's network, so a
`direct-tcpip` request is refused unless it names the registry by a loopback name and
its port, and the key's line lets it forward there (`port-forwarding`, `permitopen=`).
"""

from __future__ import annotations

from ..keys.entries import KeyEntry

REGISTRY_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})


def forward_refusal(entry: KeyEntry, host: str, port: int, registry_port: int
                    ) -> tuple[str, str] | None:
    """None if `entry`'s key may forward to host:port; else why not, as (what the log
    says was refused, what the client is told)."""
    target = f"{host}:{port}"
    if not entry.port_forwarding:
        return (f"forwarding to {target} (key may not forward)",
                "port forwarding is not permitted for this key")
    if (host.lower() not in REGISTRY_HOSTS or port != registry_port
            or not entry.may_open(host, port)):
        return (f"forwarding to {target}",
                f"only the registry at localhost:{registry_port} can be reached through "
                "this server")
    return None
