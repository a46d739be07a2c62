"""`GET /v2/<name>/tags/list`: tags in lexical order, paginated with `n`, `last` and `Link`."""

from __future__ import annotations

from aiohttp import web

from .context import Context
from .errors import Code, RegistryError
from .params import next_link, page_params


async def list_tags(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    n, last = page_params(request.query, ctx.settings.max_page)
    if not await ctx.store.repositories.exists(ctx.name):
        raise RegistryError(Code.NAME_UNKNOWN, {"name": ctx.name})
    tags: list[str] = []
    more = False
    if n != 0:
        async for tag in ctx.store.tags.names(ctx.name, last):
            if n is not None and len(tags) == n:
                more = True
                break
            tags.append(tag)
    response = web.json_response({"name": ctx.name, "tags": tags})
    if more and n:
        response.headers["Link"] = next_link(f"/v2/{ctx.name}/tags/list", n, tags[-1])
    return response
