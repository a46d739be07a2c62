"""The events the registry's writes make: a manifest pushed, a manifest or a tag deleted.

Written after the handler succeeded, before the answer goes: one small storage write per
manifest PUT or DELETE. Blob uploads make no event; the manifest that uses them does.
"""

from __future__ import annotations

from aiohttp import web

from ..events.log import EventLog
from ..references import Digest, is_digest
from .context import Context

MANIFESTS = "/v2/{name}/manifests/{reference}"


async def after_write(events: EventLog, request: web.BaseRequest, ctx: Context,
                      response: web.StreamResponse) -> None:
    if ctx.route.path != MANIFESTS:
        return
    if request.method == "PUT" and response.status == 201:
        digest = Digest.parse(response.headers["Docker-Content-Digest"])
        link = await ctx.store.manifests.link(ctx.name, digest)
        if link is None:  # deleted between the PUT and now: nothing to announce
            return
        tags = tuple(t for t in ctx.reference.split(", ")[1:] if t)
        await events.append(
            "manifest.pushed", ctx.identity, repository=ctx.name, tags=tags,
            digest=str(digest), media_type=link.media_type, size=link.size,
            artifact_type=link.artifact_type,
            subject=str(link.subject) if link.subject else None)
    elif request.method == "DELETE" and response.status == 202:
        reference = ctx.params["reference"]
        if is_digest(reference):
            await events.append("manifest.deleted", ctx.identity, repository=ctx.name,
                                digest=reference)
        else:
            await events.append("tag.deleted", ctx.identity, repository=ctx.name,
                                tags=(reference,))
