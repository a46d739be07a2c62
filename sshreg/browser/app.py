"""The browser's routes: what each page gathers, and the guards around them.

    GET  /                         -> /ui/
    GET  /ui/?q=FILTER&page=N      repositories the key may pull, 50 a page
    GET  /ui/r/NAME                a repository's tags
    POST /ui/r/NAME/delete         delete a tag (the delete right, a confirmation, a token)
    GET  /ui/m/NAME@DIGEST         a manifest: layers and configuration, or platforms
    GET  /ui/storage[?dry_run=1]   bytes per repository; for admins, garbage collection

Requests reach this only after the registry's origin check (`registry/origin.py`): the Host
must name the loopback, and a browser's Origin and Sec-Fetch-Site must say the request comes
from these pages (a link from another site is refused too). The delete form also carries a
token bound to the key, repository and tag, keyed by a secret of this process. Responses
forbid framing and any script but their own (Content-Security-Policy with a nonce).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from ..access import Action, Identity
from ..events.log import Event, EventLog
from ..inspection import Unreadable, describe_manifest, human_size, usage
from ..mirror.names import by_prefix
from ..mirror.settings import MirrorSettings
from ..references import Digest, is_valid_name, is_valid_tag
from ..store.lru import Lru
from ..store.registry_store import RegistryStore
from . import chart, pages

log = logging.getLogger("sshreg.browser")
audit_log = logging.getLogger("sshreg.audit")

PER_PAGE = 50
RECENT = 200  # the latest events read for the recent pushes and the "pushed by" column
CHART_ROWS = 30


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Redirect(Exception):
    def __init__(self, location: str, status: int) -> None:
        super().__init__(location)
        self.location = location
        self.status = status


class Browser:
    """The pages, over one store (and the event log, mirrors and a GC dry run, if any)."""

    def __init__(self, store: RegistryStore, events: EventLog | None = None,
                 mirrors: tuple[MirrorSettings, ...] = (),
                 dry_run: Callable[[], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.store = store
        self.events = events
        self.mirrors = mirrors
        self.dry_run = dry_run
        self._secret = secrets.token_bytes(32)
        self._event_cache: Lru[str, Event] = Lru(4 * RECENT)

    async def handle(self, request: web.BaseRequest, identity: Identity) -> web.StreamResponse:
        nonce = secrets.token_urlsafe(16)
        try:
            if request.path == "/":
                raise Redirect("/ui/", 302)
            title, body = await self._route(request, identity)
            status = 200
        except Redirect as exc:
            return web.Response(status=exc.status, headers={"Location": exc.location,
                                                            **_security_headers(nonce)})
        except PageError as exc:
            title, body, status = str(exc.status), pages.error_page(exc.status, str(exc)), exc.status
        who = f"{identity.comment or identity.fingerprint} · {identity.rights.describe()}"
        return web.Response(status=status, text=pages.layout(title, body, nonce, who),
                            content_type="text/html", headers=_security_headers(nonce))

    async def _route(self, request: web.BaseRequest, identity: Identity) -> tuple[str, str]:
        path = unquote(request.rel_url.raw_path)
        method = request.method
        if path == "/ui/" and method == "GET":
            return "Repositories", await self._repositories(request, identity)
        if path == "/ui/storage" and method == "GET":
            return "Storage", await self._storage(request, identity)
        if path.startswith("/ui/r/"):
            name = path[len("/ui/r/"):]
            if name.endswith("/delete") and method == "POST":
                return await self._delete_tag(request, identity, name[:-len("/delete")])
            if method == "GET":
                return name, await self._repository(request, identity, name)
        if path.startswith("/ui/m/") and method == "GET":
            name, _, digest = path[len("/ui/m/"):].rpartition("@")
            return f"{name}@{digest[:19]}", await self._manifest(identity, name, digest)
        raise PageError(404, "There is no such page.")

    # -- pages -----------------------------------------------------------------------

    async def _repositories(self, request: web.BaseRequest, identity: Identity) -> str:
        query = request.query.get("q", "")[:200]
        try:
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            page = 1
        names = [n for n in await self.store.repositories.names()
                 if identity.may(Action.PULL, n) and query.lower() in n]
        pages_count = (len(names) + PER_PAGE - 1) // PER_PAGE
        shown = names[(page - 1) * PER_PAGE: page * PER_PAGE]
        rows = []
        for name in shown:
            entries = [e async for e in self.store.tags.entries(name)]
            rows.append({"name": name, "tags": len(entries),
                         "last_push": max((w for _, _, w in entries), default=None),
                         "bytes": await self._size(name), "mirror": self._mirror_of(name)})
        recent = [e for e in reversed(await self._recent()) if e.repository
                  and identity.may(Action.PULL, e.repository)][:10]
        return pages.repositories_page(rows, query, page, pages_count, len(names),
                                       [_event_row(e) for e in recent])

    async def _repository(self, request: web.BaseRequest, identity: Identity, name: str) -> str:
        self._require(identity, Action.PULL, name)
        entries = [e async for e in self.store.tags.entries(name)]
        if not entries and not await self.store.repositories.exists(name):
            raise PageError(404, f"There is no repository {name} you may see.")
        pushed_by = {}
        for event in await self._recent():
            if event.repository == name and event.type in ("manifest.pushed", "mirror.filled"):
                for tag in event.tags:
                    pushed_by[tag] = event.comment or event.fingerprint
        tags = []
        for tag, digest, written in entries:
            info = await self._describe(name, digest)
            tags.append({"tag": tag, "digest": str(digest), "pushed": written,
                         "by": pushed_by.get(tag, ""),
                         "media_type": info["mediaType"] if info else "?",
                         "platforms": [m["platform"] for m in info.get("manifests", [])]
                         if info else [],
                         "size": await self._image_size(name, info),
                         "referrers": info["referrers"] if info else []})
        host = request.headers.get("Host", "localhost:5000")
        return pages.repository_page(name, self._mirror_of(name), tags, host,
                                     identity.may(Action.DELETE, name),
                                     lambda tag: self._token(identity, name, tag))

    async def _manifest(self, identity: Identity, name: str, digest_text: str) -> str:
        self._require(identity, Action.PULL, name)
        try:
            digest = Digest.parse(digest_text)
        except ValueError:
            raise PageError(404, "That is not a digest.") from None
        info = await self._describe(name, digest)
        if info is None:
            raise PageError(404, f"There is no manifest {digest_text} in {name} you may see.")
        config = None
        if "config" in info:
            config = await self._config(name, Digest.parse(info["config"]["digest"]),
                                        info["config"]["size"])
        return pages.manifest_page(name, info, config)

    async def _storage(self, request: web.BaseRequest, identity: Identity) -> str:
        names = [n for n in await self.store.repositories.names()
                 if identity.may(Action.PULL, n)]
        rows = sorted(await usage(self.store, names), key=lambda r: -r["bytes"])
        svg = chart.bars([(r["repository"], r["bytes"], r["shared"]) for r in rows[:CHART_ROWS]],
                         human_size)
        gc = dry = None
        if identity.rights.admin:
            runs = [e for e in await self._recent() if e.type == "gc.finished"]
            gc = {"time": runs[-1].time, "report": runs[-1].report} if runs else None
            if request.query.get("dry_run") == "1" and self.dry_run is not None:
                dry = await self.dry_run()
        return pages.storage_page(svg, rows, gc, dry, identity.rights.admin)

    async def _delete_tag(self, request: web.BaseRequest, identity: Identity,
                          name: str) -> tuple[str, str]:
        self._require(identity, Action.DELETE, name)
        form = await request.post()
        tag, token = str(form.get("tag", "")), str(form.get("token", ""))
        if not is_valid_tag(tag) or not hmac.compare_digest(token, self._token(identity, name,
                                                                               tag)):
            log.warning("refused a tag delete from the browser for key %(fingerprint)s: "
                        "%(reason)s", {"fingerprint": identity.fingerprint,
                                       "reason": "no valid token (a stale page, or a forged form)"})
            raise PageError(403, "This form is stale or was not made by this page: reload "
                                 "the repository page and try again.")
        if not await self.store.tags.delete(name, tag):
            raise PageError(404, f"{name} has no tag {tag}.")
        audit_log.info({"time": round(time.time(), 3), "command": "browser delete tag",
                        "repository": name, "reference": tag, **identity.log_fields()})
        if self.events is not None:
            await self.events.append("tag.deleted", identity, repository=name, tags=(tag,))
        raise Redirect(f"/ui/r/{quote(name)}", 303)

    # -- data ------------------------------------------------------------------------

    def _require(self, identity: Identity, action: Action, name: str) -> None:
        if not is_valid_name(name) or not identity.may(action, name):
            # the same answer as a repository that does not exist: no name leaks
            raise PageError(404 if action is Action.PULL else 403,
                            f"There is no repository {name} you may see." if action is
                            Action.PULL else f"This key may not {action.value} in {name}.")

    def _token(self, identity: Identity, name: str, tag: str) -> str:
        message = f"{identity.fingerprint}\0{name}\0{tag}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:40]

    def _mirror_of(self, name: str) -> str | None:
        found = by_prefix(self.mirrors, name)
        return found.mirror.upstream if found else None

    async def _size(self, name: str) -> int:
        total = 0
        for digest in await self.store.inventory.linked(name):
            record = await self.store.blobs.record_for_reading(digest)
            total += record.size if record else 0
        return total

    async def _describe(self, name: str, digest: Digest) -> dict[str, Any] | None:
        try:
            return await describe_manifest(self.store, name, digest)
        except Unreadable:
            return None

    async def _image_size(self, name: str, info: dict[str, Any] | None) -> int:
        """Compressed bytes a pull downloads: an image's, or every platform's of an index."""
        if info is None:
            return 0
        if "totalSize" in info:
            return int(info["totalSize"])
        total = int(info["size"])
        for child in info.get("manifests", []):
            described = await self._describe(name, Digest.parse(child["digest"]))
            total += int(described["totalSize"]) if described and "totalSize" in described else 0
        return total

    async def _config(self, name: str, digest: Digest, size: int) -> dict[str, Any] | None:
        if size > 1 << 20 or not await self.store.repositories.is_blob_linked(name, digest):
            return None
        record = await self.store.blobs.record_for_reading(digest)
        if record is None:
            return None
        try:
            doc = json.loads(await self.store.blobs.read_all(record))
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    async def _recent(self) -> list[Event]:
        """The latest events of the log, oldest first (cached: events never change)."""
        if self.events is None:
            return []
        keys = await self.events.latest_ids(RECENT)
        found = []
        for event_id in keys:
            event = self._event_cache.get(event_id)
            if event is None:
                event = await self.events.read(event_id)
                if event is None:
                    continue
                self._event_cache.put(event_id, event)
            found.append(event)
        return found


def _event_row(event: Event) -> dict[str, Any]:
    return {"time": event.time, "type": event.type, "repository": event.repository or "",
            "tags": event.tags, "comment": event.comment, "fingerprint": event.fingerprint}


def _security_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (f"default-src 'none'; style-src 'nonce-{nonce}'; "
                                    f"script-src 'nonce-{nonce}'; img-src 'self' data:; "
                                    "form-action 'self'; frame-ancestors 'none'; "
                                    "base-uri 'none'"),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        # Not "no-referrer": under it a browser sends `Origin: null` with the pages' own
        # POSTs (the delete form), which the origin check must refuse. "same-origin" still
        # gives no other site a page's address.
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }

