"""Offering each client the fastest cipher it can use, without locking others out.

The client's order wins in SSH's negotiation, and OpenSSH lists chacha20-poly1305 and
AES-CTR before AES-GCM, which asyncssh runs far faster (the CPU's AES instructions, no MAC
in Python). Offering AES-GCM alone makes OpenSSH settle on it, and shuts out every client
that has no AES-GCM (`ssh -c chacha20-poly1305@openssh.com`, paramiko, hardened configs).

So the server's first KEXINIT waits for the client's (SSH lets either side send first, and
clients do not wait for the server's): a client that lists an AES-GCM cipher is offered the
fast list (`ciphers.default_ciphers`, which keeps chacha20 first on a CPU without AES
instructions), any other the safe fallbacks (chacha20-poly1305, AES-CTR with an
encrypt-then-MAC MAC). A client that waits for the server after all gets the fallback list
after `WAIT` seconds. This reaches into asyncssh's connection (its `_send_kexinit` and
`process_packet` on the one connection object); tests/integration/test_cipher_offer.py
pins the behaviour with OpenSSH and paramiko.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncssh
from asyncssh.constants import MSG_KEXINIT
from asyncssh.packet import SSHPacket

WAIT = 2.0  # seconds the server's first KEXINIT waits for the client's
FALLBACK = ("chacha20-poly1305@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr")


def client_ciphers(packet: SSHPacket) -> list[bytes]:
    """The client-to-server ciphers of a KEXINIT whose type byte was read (not consumed)."""
    peek = SSHPacket(packet.get_remaining_payload())
    peek.get_bytes(16)  # cookie
    peek.get_namelist()  # kex algorithms
    peek.get_namelist()  # host key algorithms
    return list(peek.get_namelist())


def choose(offered: Sequence[bytes], fast: Sequence[str]) -> list[bytes]:
    """The fast list if the client can use one of it, else fast and the fallbacks."""
    fast_bytes = [c.encode() for c in fast]
    if any(c in offered for c in fast_bytes):
        return fast_bytes
    return fast_bytes + [c.encode() for c in FALLBACK if c.encode() not in fast_bytes]


def offer_after_client(conn: asyncssh.SSHServerConnection, fast: Sequence[str]) -> None:
    """Make `conn` send its first KEXINIT once it knows the client's ciphers."""
    send_kexinit = conn._send_kexinit
    process_packet = conn.process_packet
    state = {"waiting": True}

    def deferred_send() -> None:
        if not state["waiting"]:
            send_kexinit()

    def on_packet(pkttype: int, pktid: int, packet: SSHPacket):  # type: ignore[no-untyped-def]
        if state["waiting"] and pkttype == MSG_KEXINIT:
            state["waiting"] = False
            conn._enc_algs = choose(client_ciphers(packet), fast)
            conn._kexinit_sent = False  # so the KEXINIT handler sends ours as its reply
        return process_packet(pkttype, pktid, packet)

    def give_up_waiting() -> None:
        if state["waiting"] and not conn.is_closed():
            state["waiting"] = False
            conn._enc_algs = choose([], fast)
            send_kexinit()
            conn._kexinit_sent = True

    conn._send_kexinit = deferred_send  # type: ignore[method-assign]
    conn.process_packet = on_packet  # type: ignore[method-assign]
    asyncio.get_running_loop().call_later(WAIT, give_up_waiting)
