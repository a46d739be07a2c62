"""The forward policy: a tunnel reaches the registry's own port by a loopback name, and
only as far as the key's authorized_keys line lets it (`restrict`, `no-port-forwarding`,
`permitopen=`); anything else is refused with a reason for the log and one for the client."""

from __future__ import annotations

import asyncssh
import pytest

from sshreg.keys.entries import parse_line
from sshreg.ssh.forwarding import forward_refusal

KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
REGISTRY_PORT = 80


def refusal(options: str, host: str = "localhost", port: int = REGISTRY_PORT):
    entry = parse_line(f"{options} {KEY}".strip(), 1)
    return forward_refusal(entry, host, port, REGISTRY_PORT)


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "127.0.0.1", "::1",
                                  "ip6-localhost"])
def test_a_plain_key_may_forward_to_the_registry_by_any_loopback_name(host: str) -> None:
    assert refusal("", host) is None


@pytest.mark.parametrize(("host", "port"), [
    ("localhost", 22), ("localhost", 81), ("127.0.0.2", 80), ("10.0.0.1", 80),
    ("example.com", 80), ("localhost.example.com", 80), ("", 80),
])
def test_any_other_destination_is_refused_and_the_client_told_where_to_go(
        host: str, port: int) -> None:
    assert refusal("", host, port) == (
        f"forwarding to {host}:{port}",
        "only the registry at localhost:80 can be reached through this server")


@pytest.mark.parametrize("options", ["restrict", "no-port-forwarding",
                                     'restrict,permitopen="localhost:80"'])
def test_a_key_that_may_not_forward_is_refused_even_to_the_registry(options: str) -> None:
    assert refusal(options) == ("forwarding to localhost:80 (key may not forward)",
                                "port forwarding is not permitted for this key")


@pytest.mark.parametrize("options", ['permitopen="localhost:80"', 'permitopen="localhost:*"',
                                     'restrict,port-forwarding,permitopen="localhost:80"'])
def test_permitopen_naming_the_registry_lets_the_tunnel_through(options: str) -> None:
    assert refusal(options) is None


@pytest.mark.parametrize(("options", "host"), [
    ('permitopen="127.0.0.1:80"', "localhost"),  # sshd compares names, it resolves nothing
    ('permitopen="localhost:80"', "127.0.0.1"),
    ('permitopen="localhost:8080"', "localhost"),
    ('permitopen="localhost:80",permitopen="::1:80"', "ip6-localhost"),
])
def test_permitopen_refuses_the_registry_by_a_name_or_port_it_does_not_list(
        options: str, host: str) -> None:
    assert refusal(options, host) == (
        f"forwarding to {host}:80",
        "only the registry at localhost:80 can be reached through this server")


def test_permitopen_may_name_the_registry_by_a_bracketed_ipv6_address() -> None:
    assert refusal('permitopen="[::1]:80"', "::1") is None
    assert refusal('permitopen="[::1]:*"', "::1") is None
    assert refusal('permitopen="[::1]:80"', "localhost") == (
        "forwarding to localhost:80",
        "only the registry at localhost:80 can be reached through this server")
