"""`[server] revoked_keys`: the revocation file, re-read whenever it changes.

Read at start (a file that cannot be read then stops the start: the operator asked for
revocation), and again whenever its inode, mtime or size changes, checked every few
seconds by the gateway. A later read that fails keeps the list in force and says so
(`keys/revocation.py` explains what fails a read).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .revocation import RevocationError, RevocationList

log = logging.getLogger("sshreg.keys")


class RevokedKeys:
    """What is revoked now: nothing without a path."""

    def __init__(self, path: str = "") -> None:
        self.path = Path(path) if path else None
        self.current = RevocationList()
        self._signature: tuple[int, int, int] | None = None
        if self.path is not None:
            self.current = RevocationList.parse(self.path.read_bytes())
            self._signature = self._stat()
            log.info("loaded revoked keys from %(source)s", {"source": str(self.path)})

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        st = self.path.stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    def reload_if_changed(self) -> bool:
        if self.path is None:
            return False
        try:
            signature = self._stat()
            if signature == self._signature:
                return False
            revoked = RevocationList.parse(self.path.read_bytes())
        except (OSError, RevocationError) as exc:
            log.error("cannot read %(source)s, the revocations read before stay in force: "
                      "%(error)s", {"source": str(self.path), "error": str(exc)})
            return False
        self.current, self._signature = revoked, signature
        log.info("loaded revoked keys from %(source)s", {"source": str(self.path)})
        return True
