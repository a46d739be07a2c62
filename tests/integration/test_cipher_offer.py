"""Each client gets the fastest cipher it can use: AES-GCM for a default OpenSSH, and the
safe fallbacks for clients without AES-GCM (chacha20 or AES-CTR only, paramiko), which the
GCM-only offer used to lock out."""

from __future__ import annotations

import re
import socket
import subprocess
import time

import paramiko
import pytest

from sshreg.ssh.cipher_offer import FALLBACK, WAIT
from tests.support.sshreg_server import ClientKey, SshregServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[SshregServer, ClientKey]:
    workdir = tmp_path_factory.mktemp("ciphers")
    key = ClientKey.generate(workdir, "alice")
    server = SshregServer(workdir / "server")
    server.authorize(key.line())
    server.start()
    yield server, key
    server.stop()


def negotiated(server: SshregServer, key: ClientKey, *options: str) -> tuple[str, str]:
    """(the cipher ssh settled on, what `whoami` printed)."""
    command = server.ssh_command(key, *options, "user@127.0.0.1", "whoami", log_level="DEBUG1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    found = re.search(r"kex: client->server cipher: (\S+)", result.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    return (found[1] if found else ""), result.stdout


def test_a_default_openssh_client_gets_aes_gcm(served):
    cipher, out = negotiated(*served)
    assert cipher in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") and "key" in out


@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes256-ctr", "aes128-ctr"])
def test_a_client_without_aes_gcm_gets_a_safe_fallback(served, cipher):
    chosen, out = negotiated(*served, "-c", cipher)
    assert chosen == cipher and "key" in out


@pytest.mark.parametrize("without_gcm", [True, False])
def test_paramiko_opens_the_tunnel_and_reads_v2(served, without_gcm):
    """Older paramiko has no AES-GCM (5.x has): both kinds get a tunnel."""
    server, key = served
    gcm = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a throwaway server
    client.connect("127.0.0.1", port=server.port, username="ci", key_filename=str(key.path),
                   look_for_keys=False, allow_agent=False, timeout=30,
                   disabled_algorithms={"ciphers": gcm} if without_gcm else None)
    try:
        transport = client.get_transport()
        assert transport is not None
        assert (transport.remote_cipher in gcm) is not without_gcm
        channel = transport.open_channel("direct-tcpip", ("localhost", 80), ("127.0.0.1", 0))
        channel.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        channel.settimeout(30)
        while chunk := channel.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        client.close()


def test_a_client_that_waits_for_the_servers_kexinit_gets_it_after_the_wait(served):
    server, _ = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"SSH-2.0-WaitsForTheServer\r\n")
        started = time.monotonic()
        received = b""
        while b"chacha20-poly1305@openssh.com" not in received:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            received += chunk
        waited = time.monotonic() - started
    assert WAIT - 0.5 <= waited <= WAIT + 3
    assert all(c.encode() in received for c in FALLBACK)  # the full list: it knows nothing
