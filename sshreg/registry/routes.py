"""The whole API surface on one screen: every route, its handler and who may call it.

`Access.PULL/PUSH/DELETE` are checked against the repository in the path before the
handler runs; `Access.ANY_KEY` routes only need an authenticated key (the catalog filters
its answer by the key's pull rights; mounts check pull on their source themselves).
"""

from __future__ import annotations

import re

from aiohttp import web

from . import blobs, catalog, manifests, referrers, tags, uploads
from .context import Access, Context, Route
from .errors import Code, RegistryError


async def api_version(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    """`GET /v2/`: the registry speaks the distribution API and the key is accepted."""
    return web.json_response({})


ROUTES = [
    Route("GET",    "/v2/",                               Access.ANY_KEY, api_version),
    Route("GET",    "/v2/_catalog",                       Access.ANY_KEY, catalog.list_repositories),
    Route("GET",    "/v2/{name}/tags/list",               Access.PULL,    tags.list_tags),
    Route("GET",    "/v2/{name}/manifests/{reference}",   Access.PULL,    manifests.get_manifest),
    Route("HEAD",   "/v2/{name}/manifests/{reference}",   Access.PULL,    manifests.get_manifest),
    Route("PUT",    "/v2/{name}/manifests/{reference}",   Access.PUSH,    manifests.put_manifest),
    Route("DELETE", "/v2/{name}/manifests/{reference}",   Access.DELETE,  manifests.delete_manifest),
    Route("POST",   "/v2/{name}/blobs/uploads/",          Access.PUSH,    uploads.start_upload),
    Route("GET",    "/v2/{name}/blobs/uploads/{session}", Access.PUSH,    uploads.upload_status),
    Route("PATCH",  "/v2/{name}/blobs/uploads/{session}", Access.PUSH,    uploads.append_chunk),
    Route("PUT",    "/v2/{name}/blobs/uploads/{session}", Access.PUSH,    uploads.finish_upload),
    Route("DELETE", "/v2/{name}/blobs/uploads/{session}", Access.PUSH,    uploads.cancel_upload),
    Route("GET",    "/v2/{name}/blobs/{digest}",          Access.PULL,    blobs.get_blob),
    Route("HEAD",   "/v2/{name}/blobs/{digest}",          Access.PULL,    blobs.get_blob),
    Route("DELETE", "/v2/{name}/blobs/{digest}",          Access.DELETE,  blobs.delete_blob),
    Route("GET",    "/v2/{name}/referrers/{digest}",      Access.PULL,    referrers.list_referrers),
]  # fmt: skip


def _compile(path: str) -> re.Pattern[str]:
    pattern = re.escape(path).replace(r"\{name\}", "(?P<name>.+?)")
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", pattern)
    if path.endswith("/") and path != "/v2/":
        pattern += "?"  # `/blobs/uploads` with or without the trailing slash
    return re.compile(pattern)


_TABLE = [(_compile(path), [r for r in ROUTES if r.path == path])
          for path in dict.fromkeys(r.path for r in ROUTES)]


def resolve(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """Find the route for a decoded request path; raise the spec's error if there is none."""
    if path == "/v2":
        path = "/v2/"
    allowed: set[str] = set()
    for pattern, routes in _TABLE:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        for route in routes:
            if route.method == method:
                return route, match.groupdict()
        allowed.update(r.method for r in routes)
    if allowed:
        raise RegistryError(Code.UNSUPPORTED, f"{method} is not allowed here",
                            headers={"Allow": ", ".join(sorted(allowed))})
    raise RegistryError(Code.UNSUPPORTED, "no such endpoint", status=404,
                        message="the requested endpoint does not exist")
