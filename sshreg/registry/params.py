"""Request parameters turned into validated values, or into the spec's error."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote

from aiohttp import web

from ..references import Digest
from .errors import Code, RegistryError

# ASCII digits only: `str.isdigit()` and `\d` also take `²` or `٣`, which `int()` refuses
# (a 500) or reads (a number the client never wrote in ASCII).
_PAGE_SIZE_RE = re.compile(r"[0-9]{1,9}")


def digest_param(text: str | None, *, what: str = "digest") -> Digest:
    if not text:
        raise RegistryError(Code.DIGEST_INVALID, f"missing {what}")
    try:
        return Digest.parse(text)
    except ValueError as exc:
        raise RegistryError(Code.DIGEST_INVALID, str(exc)) from None


def page_params(query: Mapping[str, str], max_page: int) -> tuple[int | None, str]:
    """`n` and `last` of a paginated list; n=None means everything."""
    raw = query.get("n")
    n: int | None = None
    if raw is not None and raw != "":
        if _PAGE_SIZE_RE.fullmatch(raw) is None:
            raise RegistryError(Code.SIZE_INVALID, "n must be a non-negative integer",
                                message="invalid pagination size")
        n = min(int(raw), max_page)
    return n, query.get("last", "")


def next_link(path: str, n: int, last: str, extra: Mapping[str, str] | None = None) -> str:
    """The `Link` header pointing at the page after `last`."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in (extra or {}).items())
    query = (query + "&" if query else "") + f"n={n}&last={quote(last, safe='')}"
    return f'<{path}?{query}>; rel="next"'


def blob_location(name: str, digest: Digest) -> str:
    return f"/v2/{name}/blobs/{digest}"


def manifest_location(name: str, digest: Digest) -> str:
    return f"/v2/{name}/manifests/{digest}"


async def body_chunks(request: web.BaseRequest, idle_timeout: float,
                      code: Code = Code.BLOB_UPLOAD_INVALID) -> AsyncIterator[bytes]:
    """The request body as it arrives; a body that sends nothing for `idle_timeout` seconds
    is cut off with 408 (the connection is then closed), so a stalled client cannot hold a
    handler and its upload forever. A body aiohttp cannot decode (broken chunked framing,
    a `Content-Encoding` that is not what it says) is 400 with `code`."""
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await request.content.readany()
        except TimeoutError:
            raise RegistryError(code, f"no request body data for {idle_timeout:g}s",
                                status=408, message="request body stalled") from None
        except web.RequestPayloadError as exc:
            cause = exc.__cause__ or exc
            raise RegistryError(code, f"unreadable request body: {type(cause).__name__}"
                                ) from None
        if not chunk:
            return
        yield chunk
