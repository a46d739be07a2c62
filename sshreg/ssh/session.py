"""Session channels: `ssh reg.host` prints who you are and how to use the registry."""

from __future__ import annotations

import logging

import asyncssh

from ..access import Identity

log = logging.getLogger("sshreg.ssh")


def help_text(identity: Identity, ssh_target: str, registry_port: int, forwarding: bool) -> str:
    local = 5000
    lines = [
        "sshreg: a container registry reached through SSH",
        "",
        f"You are {identity.comment or '(no comment)'} ({identity.fingerprint}).",
        f"Your rights: {identity.rights.describe()}.",
        "",
    ]
    if forwarding:
        lines += [
            "Open a tunnel (leave it running):",
            f"  ssh -N -L {local}:localhost:{registry_port} {ssh_target}",
            "Then use the registry at localhost:5000, for example:",
            f"  docker push localhost:{local}/team/app:1",
            f"  docker pull localhost:{local}/team/app:1",
            f"If localhost resolves to ::1 on your machine, use 127.0.0.1:{local} instead.",
        ]
    else:
        lines.append("This key may not open tunnels (no-port-forwarding or restrict).")
    return "\r\n".join(lines) + "\r\n"


class HelpSession(asyncssh.SSHServerSession[str]):
    """Answers a shell or `help` with the help text, refuses any other command."""

    def __init__(self, text: str, identity: Identity) -> None:
        self._text = text
        self._identity = identity
        self._chan: asyncssh.SSHServerChannel[str] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        self._chan = chan

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        if command.strip() in ("help", "whoami"):
            return True
        log.warning("refused command %r for key %s (%s)", command, self._identity.fingerprint,
                    self._identity.comment)
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        log.warning("refused subsystem %r for key %s (%s)", subsystem, self._identity.fingerprint,
                    self._identity.comment)
        return False

    def session_started(self) -> None:
        assert self._chan is not None
        self._chan.write(self._text)
        self._chan.exit(0)
