"""Requests for mirrored repositories: the cache makes the content stored, then the
registry's own handlers serve it; blobs still being copied in are served from their fill.

`route` is asked for every request naming a repository. A name under a mirror's prefix is
mirrored; so is a pull of a name that is no local repository when a mirror is the default
(docker's `registry-mirrors` asks for `library/alpine`). Such a name is stored, and its
rights are checked, under the prefix (`docker.io/library/alpine`), whichever way it was
asked for. Pushes and deletes under a prefix are refused: the mirror is read-only.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import replace

from aiohttp import web

from ..mirror.cache import Mirrors
from ..mirror.fills import FillFailed, FillReader
from ..mirror.names import Mirrored
from ..mirror.upstream import UpstreamMissing, UpstreamUnavailable
from ..oci import OCI_INDEX
from ..references import Digest, is_valid_name
from . import blobs, manifests, referrers, tags
from .context import Context, Handler
from .errors import Code, RegistryError
from .params import digest_param, next_link, page_params

PULLS = frozenset({"GET", "HEAD"})


async def route(ctx: Context, mirrors: Mirrors) -> Context:
    """`ctx` unchanged for a local repository; for a mirrored one, with the name it is
    stored under and the handler that fills the cache first."""
    name = ctx.params.get("name")
    if name is None or not is_valid_name(name):  # refused by the rights check next
        return ctx
    target = await mirrors.target(name, pulling=ctx.route.method in PULLS)
    if target is None:
        return ctx
    handler = _HANDLERS.get((ctx.route.method, ctx.route.handler), _read_only)

    async def mirrored(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
        return await handler(request, ctx, target, mirrors)

    return replace(ctx, route=replace(ctx.route, handler=mirrored),
                   params={**ctx.params, "name": target.name})


async def _read_only(request: web.BaseRequest, ctx: Context, target: Mirrored,
                     mirrors: Mirrors) -> web.StreamResponse:
    raise RegistryError(Code.UNSUPPORTED, f"{target.mirror.prefix}/ is a read-only mirror of "
                        f"{target.mirror.upstream}", message="pushing to a mirror is unsupported")


async def _manifest(request: web.BaseRequest, ctx: Context, target: Mirrored,
                    mirrors: Mirrors) -> web.StreamResponse:
    reference = ctx.params["reference"]
    try:
        await mirrors.ensure_manifest(target, reference)
    except UpstreamMissing:
        raise RegistryError(Code.MANIFEST_UNKNOWN, {"reference": reference,
                                                    "upstream": target.mirror.upstream}) from None
    except UpstreamUnavailable as exc:
        raise _unavailable(target, exc) from None
    return await manifests.get_manifest(request, ctx)


async def _blob(request: web.BaseRequest, ctx: Context, target: Mirrored,
                mirrors: Mirrors) -> web.StreamResponse:
    digest = digest_param(ctx.params["digest"])
    if await ctx.store.repositories.blob_for_reading(target.name, digest) is not None:
        mirrors.hit(target)
        return await blobs.get_blob(request, ctx)
    try:
        if request.method == "HEAD":
            size = await mirrors.blob_size(target, digest)
            headers = _blob_headers(digest)
            if size is not None:
                headers["Content-Length"] = str(size)
            return web.Response(headers=headers)
        found = await mirrors.open_blob(target, digest, ctx.settings.body_idle_timeout)
        if not isinstance(found, FillReader):
            return await blobs.get_blob(request, ctx)
        size = await _size(found)
        if "Range" in request.headers:
            # a part of a blob being filled: served from storage once the fill is done
            async for _ in found.chunks():
                pass
            return await blobs.get_blob(request, ctx)
    except UpstreamMissing:
        raise RegistryError(Code.BLOB_UNKNOWN, {"digest": str(digest)}) from None
    except (UpstreamUnavailable, FillFailed) as exc:
        raise _unavailable(target, exc) from None
    return await _stream_fill(request, found, digest, size)


async def _size(reader: FillReader) -> int | None:
    try:
        return await reader.size()
    except BaseException:
        reader.close()
        raise


async def _stream_fill(request: web.BaseRequest, reader: FillReader, digest: Digest,
                       size: int | None) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=_blob_headers(digest))
    if size is not None:
        response.content_length = size
    await response.prepare(request)
    try:
        async for chunk in reader.chunks():
            await response.write(chunk)
    except FillFailed:
        # Headers are gone: a short body and a closed connection tell the client (the
        # fill logged why, once).
        response.force_close()
        return response
    await response.write_eof()
    return response


def _blob_headers(digest: Digest) -> dict[str, str]:
    return {"Docker-Content-Digest": str(digest), "Content-Type": "application/octet-stream",
            "ETag": f'"{digest}"'}


async def _tags(request: web.BaseRequest, ctx: Context, target: Mirrored,
                mirrors: Mirrors) -> web.StreamResponse:
    """The upstream's tags (its paging), or the stored ones when it cannot answer."""
    try:
        doc = await mirrors.tags(target, request.query_string)
    except UpstreamUnavailable:
        return await tags.list_tags(request, ctx)
    if doc is None:
        raise RegistryError(Code.NAME_UNKNOWN, {"name": ctx.params["name"]})
    listed = [t for t in doc.get("tags") or [] if isinstance(t, str)]
    response = web.json_response({"name": ctx.params["name"], "tags": listed})
    n, _ = page_params(request.query, ctx.settings.max_page)
    if n and len(listed) == n:  # a full page: there may be more
        response.headers["Link"] = next_link(request.path, n, listed[-1])
    return response


async def _referrers(request: web.BaseRequest, ctx: Context, target: Mirrored,
                     mirrors: Mirrors) -> web.StreamResponse:
    """The upstream's referrers when it offers the API, else those stored here."""
    digest = digest_param(ctx.params["digest"])
    try:
        index = await mirrors.referrers(target, digest)
    except UpstreamUnavailable:
        index = None
    if index is None:
        return await referrers.list_referrers(request, ctx)
    return web.Response(body=json.dumps(index).encode(), headers={"Content-Type": OCI_INDEX})


def _unavailable(target: Mirrored, exc: Exception) -> RegistryError:
    return RegistryError(Code.UNAVAILABLE, {"upstream": target.mirror.upstream,
                                            "error": str(exc)},
                         message="the mirror's upstream is unavailable",
                         headers={"Retry-After": "10"})


MirroredHandler = Callable[[web.BaseRequest, Context, Mirrored, Mirrors],
                           Awaitable[web.StreamResponse]]
_HANDLERS: dict[tuple[str, Handler], MirroredHandler] = {
    ("GET", manifests.get_manifest): _manifest,
    ("HEAD", manifests.get_manifest): _manifest,
    ("GET", blobs.get_blob): _blob,
    ("HEAD", blobs.get_blob): _blob,
    ("GET", tags.list_tags): _tags,
    ("GET", referrers.list_referrers): _referrers,
}
