"""An sshreg deployment as the client tests use it: one server, a few users' keys with their
rights on the key lines, and the storage (a folder, or a fresh prefix on a SeaweedFS bucket).

`deploy(workdir, "s3", keys, s3=seaweedfs, config={...})` starts it and stops it on exit; on S3
it then checks R2's part rule on every blob object the server completed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.seaweedfs import SeaweedFS
from tests.support.sshreg_server import ClientKey, Config, S3Store, SshregServer, Tunnel

# Who the client tests act as, and the authorized_keys options that give them their rights.
KEY_OPTIONS = {
    "alice": "",  # full access
    "reader": 'sshreg-pull="**"',  # read-only
    "team": 'sshreg-push="team/*"',  # push (and so pull) team/*, nothing else
}


def unique(prefix: str) -> str:
    """A name no other test uses (repositories, tags, image names)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"



def generate_keys(directory: Path, names: tuple[str, ...] = tuple(KEY_OPTIONS)
                  ) -> dict[str, ClientKey]:
    directory.mkdir(parents=True, exist_ok=True)
    return {name: ClientKey.generate(directory, name) for name in names}


@dataclass
class Deployment:
    """A running sshreg with its users' keys and, on S3, a view of its bucket prefix."""

    kind: str  # "filesystem" or "s3"
    server: SshregServer
    keys: dict[str, ClientKey]
    store: S3Store | None

    def tunnel(self, who: str = "alice", port: int | None = None
               ) -> contextlib.AbstractContextManager[Tunnel]:
        """`ssh -N -L` as `who`, on `port` if given (to reopen a tunnel where it was)."""
        return self.server.tunnel(self.keys[who], port)


@contextlib.contextmanager
def deploy(workdir: Path, kind: str, keys: Mapping[str, ClientKey], *,
           s3: SeaweedFS | None = None, config: Config | None = None,
           options: Mapping[str, str] = KEY_OPTIONS, metrics: bool = True,
           env: Mapping[str, str] | None = None) -> Iterator[Deployment]:
    """Start sshreg on `kind` storage with `keys` authorized (rights from `options`), with
    `env` added to its environment (a mirror's `password_env`)."""
    store = None
    if kind == "s3":
        assert s3 is not None, "S3 storage needs a SeaweedFS"
        store = S3Store.fresh(s3, workdir.name)
    elif kind != "filesystem":
        raise ValueError(f"unknown storage kind {kind!r}")
    server = SshregServer(workdir, store.url if store else None,
                          env={**(store.env if store else {}), **(env or {})}, config=config,
                          metrics=metrics)
    server.authorize(*(key.line(options.get(name, "")) for name, key in keys.items()))
    server.start()
    try:
        yield Deployment(kind, server, dict(keys), store)
    finally:
        server.stop()
    if store is not None:
        store.check_r2_parts()
