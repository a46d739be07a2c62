"""The ciphers the gateway offers when `[server] ciphers` does not name them."""

from __future__ import annotations

from pathlib import Path

AES_GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
CHACHA = ("chacha20-poly1305@openssh.com",)


def cpu_has_aes() -> bool:
    """Whether the CPU has AES instructions (x86 `aes` flag, ARM `aes` feature)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and "aes" in value.split():
            return True
    return False


def default_ciphers(has_aes: bool | None = None) -> tuple[str, ...]:
    """The client's order wins. OpenSSH lists chacha20, then AES-CTR (which needs a separate
    MAC, computed in Python by asyncssh), then AES-GCM: offering only AES-GCM is what makes
    it settle on the fast one where the CPU has AES instructions. Without them chacha20 is
    faster, so it goes first. `[server] ciphers` can add aes128-ctr for clients older than
    OpenSSH 6.2."""
    if has_aes if has_aes is not None else cpu_has_aes():
        return AES_GCM
    return CHACHA + AES_GCM
