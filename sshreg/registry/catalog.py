"""`GET /v2/_catalog`: the repositories this key may pull from, paginated like tags."""

from __future__ import annotations

from aiohttp import web

from ..access import Action
from .context import Context
from .params import next_link, page_params


async def list_repositories(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    n, last = page_params(request.query, ctx.settings.max_page)
    names = [
        name for name in await ctx.store.repositories.names()
        if name > last and ctx.may(Action.PULL, name)
    ]
    page = names if n is None else names[:n]
    response = web.json_response({"repositories": page})
    if n and len(names) > n:
        response.headers["Link"] = next_link("/v2/_catalog", n, page[-1])
    return response
