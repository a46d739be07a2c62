"""Session channels: `ssh reg.host` prints who you are; `ssh reg.host CMD` manages.

The commands themselves are not SSH's business: a `CommandRunner` runs them (the
service gives `management.commands.Management`), so nothing here imports them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import asyncssh
from asyncssh.packet import SSHPacket

from ..access import Identity
from .slots import SlotChannel

if TYPE_CHECKING:
    from .bridge import ChannelOwner

log = logging.getLogger("sshreg.ssh")


class Following(Protocol):
    """Output that goes on: `run(out, err)` writes until done and returns the exit status."""

    @property
    def run(self) -> Callable[[Callable[[str], None], Callable[[str], None]], Awaitable[int]]: ...


class CommandResult(Protocol):
    """What a command printed and its exit status, or the output that follows."""

    @property
    def status(self) -> int: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...

    @property
    def follow(self) -> Following | None: ...


class CommandRunner(Protocol):
    """Runs one command line with a key's rights (`ssh reg.host CMD`)."""

    async def run(self, identity: Identity, command_line: str) -> CommandResult: ...


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


class SessionChannel(SlotChannel, asyncssh.SSHServerChannel[str]):
    """A session channel that refuses agent and X11 forwarding itself, to log the refusal
    with the key (asyncssh, configured without them, would refuse them too but log no key).
    It holds one of the connection's channel slots until it is cleaned up."""

    refused: Callable[[str], None]

    @classmethod
    def create(cls, conn: asyncssh.SSHServerConnection,
               refused: Callable[[str], None]) -> SessionChannel:
        chan = conn.create_server_channel()
        chan.__class__ = cls  # the channel asyncssh built, with the handlers below
        assert isinstance(chan, SessionChannel)
        chan.refused = refused
        return chan

    def _process_x11_req_request(self, packet: SSHPacket) -> bool:
        self.refused("X11 forwarding")
        return False

    def _process_auth_agent_req_at_openssh_dot_com_request(self, packet: SSHPacket) -> bool:
        self.refused("agent forwarding")
        return False


class CommandSession(asyncssh.SSHServerSession[str]):
    """A session channel: a shell prints the help text; `ssh host CMD` runs a management
    command (when the gateway has them) with this key's rights; sftp and other subsystems
    are refused."""

    def __init__(self, text: str, identity: Identity, runner: CommandRunner | None,
                 owner: ChannelOwner) -> None:
        self._text = text
        self._identity = identity
        self._runner = runner
        self._owner = owner
        self._command: str | None = None
        self._chan: asyncssh.SSHServerChannel[str] | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        self._chan = chan
        self._owner.channel_opened()

    def shell_requested(self) -> bool:
        log.info("shell for key %(fingerprint)s (%(comment)s): the help text, no shell",
                 {"fingerprint": self._identity.fingerprint, "comment": self._identity.comment})
        return True

    def exec_requested(self, command: str) -> bool:
        if self._runner is None and command.strip() != "help":
            log.warning("refused command %(command)r for key %(fingerprint)s (%(comment)s)",
                        {"command": command, "fingerprint": self._identity.fingerprint,
                         "comment": self._identity.comment})
            return False
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        log.warning("refused subsystem %(subsystem)r for key %(fingerprint)s (%(comment)s)",
                    {"subsystem": subsystem, "fingerprint": self._identity.fingerprint,
                     "comment": self._identity.comment})
        return False

    def session_started(self) -> None:
        assert self._chan is not None
        if self._command is None or self._runner is None:
            self._chan.write(self._text)
            self._chan.exit(0)
            return
        self._task = asyncio.get_running_loop().create_task(self._run(self._command))

    async def _run(self, command: str) -> None:
        assert self._chan is not None and self._runner is not None
        result = await self._runner.run(self._identity, command)
        chan = self._chan
        if self._task is None:  # the channel went away while the command ran
            return
        terminal = bool(chan.get_terminal_type())

        def out(text: str) -> None:
            chan.write(text.replace("\n", "\r\n") if terminal else text)

        if result.stdout:
            out(result.stdout)
        if result.stderr:
            chan.write_stderr(result.stderr)
        status = result.status
        if result.follow is not None:
            try:
                status = await result.follow.run(out, chan.write_stderr)
            except Exception:  # output that goes on must still end, or the client waits forever
                log.exception("command %(command)r failed", {"command": command})
                if self._task is None:
                    return
                chan.write_stderr(f"{command.split()[0]}: internal error, see the server log\n")
                status = 1
        if self._task is None:
            return
        chan.exit(status)

    def eof_received(self) -> bool:
        # The client's stdin ended (ssh sends EOF as soon as it has nothing to send); the
        # answer is still to come, so keep our side of the channel open.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._chan is not None:
            self._owner.channel_closed()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
