"""Management commands run over SSH exec: `ssh reg.host tags team/app`.

Each command is authorized by the key's rights: reading commands need pull on the
repository (and only show repositories the key may pull), `rm` needs delete, `gc` needs
admin. Output is a human-readable table, or JSON with `--json`. A refusal or a mistake is
a short message and a non-zero exit status, never a stack trace. Strings pushers wrote
(media and artifact types, platforms) are shown with control characters escaped, so a
manifest cannot drive the terminal of whoever inspects it.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..access import Action, Identity
from ..controls import visible
from ..events.log import EventLog
from ..inspection import Unreadable, describe_manifest, human_size, usage
from ..mirror.cache import Mirrors
from ..mirror.names import by_prefix
from ..references import Digest, is_valid_name, is_valid_tag
from ..store.registry_store import RegistryStore
from .collection import Collection
from .gc import GarbageCollector, GcBusy
from .watch import Follow, UsageError, follow_events, wait_for_tag

log = logging.getLogger("sshreg.management")
audit_log = logging.getLogger("sshreg.audit")

USAGE = """\
commands:
  whoami                   your key and what it may do
  repos                    repositories you may pull from
  tags REPO                tags of a repository, with digests and times
  inspect REPO:TAG|REPO@DIGEST   manifest summary and sizes
  rm REPO:TAG|REPO@DIGEST  delete a tag, or a manifest with its tags
  du [REPO]                stored and shared bytes per repository
  mirrors                  pull-through mirrors: hits, misses, bytes fetched, last error
  events [--repo GLOB] [--since DURATION|TIME|ID]   pushes and deletes, live
  wait REPO:TAG [--not DIGEST] [--timeout DURATION]  until the tag exists (or moves)
  gc [--dry-run]           collect garbage (admin)
  help                     this text
add --json to any command for machine-readable output
"""


class CommandError(Exception):
    """A refusal or a usage mistake: its message is shown to the user."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Result:
    status: int
    stdout: str = ""
    stderr: str = ""
    follow: Follow | None = None  # output that goes on after stdout (events, wait)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines) + "\n"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def split_reference(text: str) -> tuple[str, str, bool]:
    """`repo:tag` or `repo@digest` -> (repo, reference, is_digest)."""
    if "@" in text:
        name, _, ref = text.partition("@")
        try:
            Digest.parse(ref)
        except ValueError as exc:
            raise CommandError(f"invalid digest: {exc}", 2) from None
        is_digest = True
    else:
        name, sep, ref = text.rpartition(":")
        if not sep or "/" in ref:
            raise CommandError(f"expected REPO:TAG or REPO@DIGEST, got {text!r}", 2)
        if not is_valid_tag(ref):
            raise CommandError(f"invalid tag {ref!r}", 2)
        is_digest = False
    if not is_valid_name(name):
        raise CommandError(f"invalid repository name {name!r}", 2)
    return name, ref, is_digest


class Management:
    """The commands, over one store and collector."""

    def __init__(self, store: RegistryStore, collector: GarbageCollector | Collection,
                 mirrors: Mirrors | None = None, events: EventLog | None = None) -> None:
        self.store = store
        self.collector = collector
        self.mirrors = mirrors
        self.events = events
        self._commands: dict[str, Callable[[Identity, list[str], bool], Awaitable[Any]]] = {
            "whoami": self.whoami, "repos": self.repos, "tags": self.tags,
            "inspect": self.inspect, "rm": self.rm, "du": self.du, "gc": self.gc,
            "mirrors": self.list_mirrors, "events": self.follow_events, "wait": self.wait,
        }

    async def run(self, identity: Identity, command_line: str) -> Result:
        try:
            argv = shlex.split(command_line)
        except ValueError as exc:
            return Result(2, stderr=f"cannot parse command: {exc}\n")
        as_json = "--json" in argv
        argv = [a for a in argv if a != "--json"]
        if not argv or argv[0] in ("help", "--help", "-h"):
            return Result(0, stdout=USAGE)
        handler = self._commands.get(argv[0])
        if handler is None:
            log.warning("refused command %(command)r for key %(fingerprint)s (%(comment)s)",
                        {"command": command_line, "fingerprint": identity.fingerprint,
                         "comment": identity.comment})
            return Result(2, stderr=f"unknown command {argv[0]!r}\n{USAGE}")
        try:
            try:
                output = await handler(identity, argv[1:], as_json)
            except UsageError as exc:
                raise CommandError(str(exc), 2) from None
            except PermissionError as exc:
                raise CommandError(str(exc)) from None
        except CommandError as exc:
            if exc.status == 1:
                log.warning("refused %(command)r for key %(fingerprint)s (%(comment)s): %(error)s",
                            {"command": command_line, "fingerprint": identity.fingerprint,
                             "comment": identity.comment, "error": str(exc)})
            return Result(exc.status, stderr=f"{argv[0]}: {exc}\n")
        except Exception:
            log.exception("command %(command)r failed", {"command": command_line})
            return Result(1, stderr=f"{argv[0]}: internal error, see the server log\n")
        if isinstance(output, Follow):
            return Result(0, follow=output)
        if as_json:
            return Result(0, stdout=json.dumps(output, indent=2, sort_keys=True) + "\n")
        return Result(0, stdout=output if isinstance(output, str) else str(output))

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def _require(identity: Identity, action: Action, name: str) -> None:
        if not identity.may(action, name):
            raise CommandError(f"denied: this key may not {action.value} {name}")

    @staticmethod
    def _args(args: list[str], most: int, least: int = 0, flags: tuple[str, ...] = ()) -> list[str]:
        positional = [a for a in args if a not in flags]
        unknown = [a for a in positional if a.startswith("-")]
        if unknown:
            raise CommandError(f"unknown option {unknown[0]}", 2)
        if not least <= len(positional) <= most:
            raise CommandError("wrong number of arguments; see `help`", 2)
        return positional

    async def _readable_repositories(self, identity: Identity) -> list[str]:
        return [n for n in await self.store.repositories.names() if identity.may(Action.PULL, n)]

    def _audit(self, identity: Identity, command: str, **fields: object) -> None:
        audit_log.info({"time": round(time.time(), 3), "command": command,
                        **identity.log_fields(), **fields})

    # -- commands ----------------------------------------------------------------------

    async def whoami(self, identity: Identity, args: list[str], as_json: bool) -> Any:
        self._args(args, 0)
        rights = identity.rights
        cert = identity.certificate
        if as_json:
            doc = {"fingerprint": identity.fingerprint, "comment": identity.comment,
                   "peer": identity.peer, "pull": list(rights.pull), "push": list(rights.push),
                   "delete": list(rights.delete), "admin": rights.admin}
            if cert is not None:
                doc["certificate"] = {"key_id": cert.key_id, "serial": cert.serial,
                                      "ca": cert.ca, "principals": list(cert.principals)}
            return doc
        text = (f"key      {identity.fingerprint}\ncomment  {visible(identity.comment)}\n"
                f"from     {identity.peer}\nrights   {rights.describe()}\n")
        if cert is not None:
            text += (f"certificate  key ID {visible(cert.key_id)}, serial {cert.serial}, "
                     f"CA {cert.ca}, principals {visible(', '.join(cert.principals))}\n")
        return text

    async def repos(self, identity: Identity, args: list[str], as_json: bool) -> Any:
        """The names, each mirrored one followed by the upstream it mirrors (text only)."""
        self._args(args, 0)
        names = await self._readable_repositories(identity)
        if as_json:
            return names
        mirrors = self.mirrors.settings if self.mirrors else ()
        lines = []
        for name in names:
            found = by_prefix(mirrors, name)
            lines.append(f"{name}  (mirror of {found.mirror.upstream})\n" if found else f"{name}\n")
        return "".join(lines)

    async def list_mirrors(self, identity: Identity, args: list[str], as_json: bool) -> Any:
        """Each mirror with this gateway process's hits, misses, upstream bytes and errors."""
        self._args(args, 0)
        rows = self.mirrors.describe() if self.mirrors else []
        if as_json:
            return rows
        if not rows:
            return "no mirrors are configured\n"
        return _table([[r["prefix"], r["upstream"], "yes" if r["default"] else "",
                        str(r["hits"]), str(r["misses"]), human_size(r["bytes_fetched"]),
                        str(r["errors"]), visible(r["last_error"]) or "-"] for r in rows],
                      ["PREFIX", "UPSTREAM", "DEFAULT", "HITS", "MISSES", "FETCHED", "ERRORS",
                       "LAST ERROR"])

    async def tags(self, identity: Identity, args: list[str], as_json: bool) -> Any:
        (name,) = self._args(args, 1, 1)
        if not is_valid_name(name):
            raise CommandError(f"invalid repository name {name!r}", 2)
        self._require(identity, Action.PULL, name)
        if not await self.store.repositories.exists(name):
            raise CommandError(f"no repository {name}", 3)
        entries = [(tag, str(d), written) async for tag, d, written in self.store.tags.entries(name)]
        if as_json:
            return [{"tag": t, "digest": d, "written": w} for t, d, w in entries]
        return _table([[t, d, _when(w)] for t, d, w in entries], ["TAG", "DIGEST", "WRITTEN (UTC)"])

    async def inspect(self, identity: Identity, args: list[str], as_json: bool) -> Any:
        (ref_text,) = self._args(args, 1, 1)
        name, ref, is_digest = split_reference(ref_text)
        self._require(identity, Action.PULL, name)
        digest = Digest.parse(ref) if is_digest else await self.store.tags.get(name, ref)
        try:
            info = await describe_manifest(self.store, name, digest) if digest else None
        except Unreadable as exc:
            raise CommandError(str(exc)) from None
        if info is None:
            raise CommandError(f"no manifest {ref_text}", 3)
        return info if as_json else _describe(info)

    async def rm(self, identity: Identity, args: list[str], as_json: bool) -> Any:
        (ref_text,) = self._args(args, 1, 1)
        name, ref, is_digest = split_reference(ref_text)
        self._require(identity, Action.DELETE, name)
        if is_digest:
            deleted = await self.store.manifests.delete(name, Digest.parse(ref)) is not None
        else:
            deleted = await self.store.tags.delete(name, ref)
        if not deleted:
            raise CommandError(f"no manifest {ref_text}", 3)
        self._audit(identity, "rm", repository=name, reference=ref)
        if self.events is not None:
            if is_digest:
                await self.events.append("manifest.deleted", identity, repository=name,
                                         digest=ref)
            else:
                await self.events.append("tag.deleted", identity, repository=name, tags=(ref,))
        return {"deleted": ref_text} if as_json else f"deleted {ref_text}\n"

    async def du(self, identity: Identity, args: list[str], as_json: bool) -> Any:
        names = self._args(args, 1)
        if names:
            self._require(identity, Action.PULL, names[0])
        readable = await self._readable_repositories(identity)
        if names and names[0] not in readable:
            raise CommandError(f"no repository {names[0]}", 3)
        usage_rows = await usage(self.store, readable)
        rows = [u for u in usage_rows if not names or u["repository"] == names[0]]
        if as_json:
            return rows
        return _table([[u["repository"], human_size(u["bytes"]), human_size(u["shared"]),
                        str(u["blobs"])] for u in rows],
                      ["REPOSITORY", "STORED", "SHARED", "BLOBS"])

    async def follow_events(self, identity: Identity, args: list[str], as_json: bool) -> Any:
        return follow_events(self._event_log(), identity, args, as_json)

    async def wait(self, identity: Identity, args: list[str], as_json: bool) -> Any:
        return wait_for_tag(self.store, self._event_log(), identity, args, as_json)

    def _event_log(self) -> EventLog:
        if self.events is None:
            raise CommandError("this gateway keeps no event log")
        return self.events

    async def gc(self, identity: Identity, args: list[str], as_json: bool) -> Any:
        self._args(args, 0, flags=("--dry-run",))
        if not identity.rights.admin:
            raise CommandError("denied: garbage collection needs the admin right")
        dry_run = "--dry-run" in args
        try:
            report = await self.collector.run(dry_run=dry_run)
        except GcBusy as exc:
            raise CommandError(str(exc), 4) from None
        if not dry_run:
            self._audit(identity, "gc", **report.to_dict())  # the audit log has it all
        # Collection is host-wide, but the names listed are only those this key may pull.
        tags = [t for t in report.tags if identity.may(Action.PULL, t.partition(":")[0])]
        manifests = [m for m in report.manifests
                     if identity.may(Action.PULL, m.partition("@")[0])]
        if as_json:
            return {**report.to_dict(), "tags": tags, "manifests": manifests}
        verb = "would remove" if dry_run else "removed"
        lines = [f"{verb} {len(report.tags)} tag(s), {len(report.manifests)} manifest(s), "
                 f"{report.blobs} blob(s) and {report.orphans} leftover object(s): "
                 f"{human_size(report.bytes_reclaimed)}"]
        lines += [f"  tag {t}" for t in tags]
        lines += [f"  manifest {m}" for m in manifests]
        hidden = len(report.tags) + len(report.manifests) - len(tags) - len(manifests)
        if hidden:
            lines.append(f"  ({hidden} more in repositories this key may not pull)")
        return "\n".join(lines) + "\n"


def _describe(info: dict[str, Any]) -> str:
    lines = [f"{info['repository']}@{info['digest']}", f"  type    {visible(info['mediaType'])}"]
    if "artifactType" in info:
        lines.append(f"  artifact {visible(info['artifactType'])}")
    if "subject" in info:
        lines.append(f"  subject {info['subject']}")
    if "manifests" in info:
        lines += [f"  {visible(m['platform']) or '-':<16} {m['digest']}  {human_size(m['size'])}"
                  for m in info["manifests"]]
    else:
        lines.append(f"  config  {info['config']['digest']}  {human_size(info['config']['size'])}")
        lines += [f"  layer   {layer['digest']}  {human_size(layer['size'])}"
                  for layer in info["layers"]]
        lines.append(f"  total   {human_size(info['totalSize'])}")
    lines += [f"  referrer {r['digest']}  {visible(str(r['artifactType'] or ''))}".rstrip()
              for r in info["referrers"]]
    return "\n".join(lines) + "\n"
