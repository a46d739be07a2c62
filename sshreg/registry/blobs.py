"""Blob GET/HEAD (with ranges, streamed without sendfile) and DELETE."""

from __future__ import annotations

import logging

from aiohttp import web

from ..storage.base import StorageError
from .context import Context
from .errors import Code, RegistryError
from .params import digest_param
from .ranges import parse_range

log = logging.getLogger("sshreg.blobs")


async def get_blob(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    digest = digest_param(ctx.params["digest"])
    record = await ctx.store.repositories.blob_for_reading(ctx.name, digest)
    if record is None:
        raise RegistryError(Code.BLOB_UNKNOWN, {"digest": str(digest)})
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(record.size)
        return web.Response(status=200, headers=headers)

    byte_range = parse_range(request.headers.get("Range"), record.size)
    if ctx.settings.redirect_expiry > 0 and byte_range is None:
        current = await ctx.store.blobs.get(digest)  # a URL must name bytes that are there
        if current is None:
            raise RegistryError(Code.BLOB_UNKNOWN, {"digest": str(digest)})
        url = await ctx.store.blobs.presign(current, ctx.settings.redirect_expiry)
        if url is not None:
            return web.Response(status=307, headers={"Location": url, **headers})

    start, end = byte_range or (0, record.size - 1)
    status = 200
    if byte_range is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{record.size}"
    length = end - start + 1 if record.size else 0

    chunks = ctx.store.blobs.read(record, start, end + 1)
    try:  # read the first chunk before answering, so a vanished blob is still a 404
        first = await anext(chunks) if length else b""
    except FileNotFoundError:
        raise RegistryError(Code.BLOB_UNKNOWN, {"digest": str(digest)}) from None

    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    await response.prepare(request)
    try:
        if first:
            await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    except (StorageError, FileNotFoundError) as exc:
        # Headers are gone: the only honest signal left is a short body and a closed connection.
        log.error("reading blob %(digest)s failed mid-stream: %(error)s",
                  {"digest": str(digest), "error": str(exc)})
        response.force_close()
        return response
    finally:
        await chunks.aclose()
    await response.write_eof()
    return response


async def delete_blob(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    """Unlink a blob from the repository; the bytes go when garbage collection finds them unused."""
    digest = digest_param(ctx.params["digest"])
    if not await ctx.store.repositories.is_blob_linked(ctx.name, digest):
        raise RegistryError(Code.BLOB_UNKNOWN, {"digest": str(digest)})
    await ctx.store.repositories.unlink_blob(ctx.name, digest)
    ctx.reference = str(digest)
    return web.Response(status=202)
