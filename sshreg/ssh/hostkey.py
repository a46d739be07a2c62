"""The server's host key: generated once (ed25519, mode 0600), never silently replaced.

asyncssh is imported when a key is read or made, not with this module: the worker
supervisor only needs it on the first start, to make the key before any worker exists."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncssh

log = logging.getLogger("sshreg.ssh")

HOST_KEY_NAME = "ssh_host_ed25519_key"


class HostKeyError(Exception):
    """The host key exists but cannot be used."""


def load_or_create_host_key(keys_dir: Path) -> asyncssh.SSHKey:
    import asyncssh

    path = keys_dir / HOST_KEY_NAME
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise HostKeyError(f"{path} is readable by others (mode {mode:o}); run chmod 600")
        try:
            return asyncssh.read_private_key(path)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise HostKeyError(f"{path} is not a usable private key: {exc}") from None
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="sshreg host key")
    # O_EXCL: if another process created it meanwhile, fail rather than overwrite.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    (keys_dir / f"{HOST_KEY_NAME}.pub").write_bytes(key.export_public_key())
    log.info("generated a new host key in %(file)s", {"file": str(path)})
    return key
