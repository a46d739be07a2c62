"""`GET /v2/<name>/referrers/<digest>`: manifests whose subject is the digest, as an index."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..oci import OCI_INDEX
from .params import digest_param

if TYPE_CHECKING:
    from .app import Context


async def list_referrers(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    subject = digest_param(ctx.params["digest"])
    descriptors = await ctx.store.referrers(ctx.name, subject)
    artifact_type = request.query.get("artifactType")
    headers = {}
    if artifact_type is not None:
        descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
        headers["OCI-Filters-Applied"] = "artifactType"
    descriptors.sort(key=lambda d: d["digest"])
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    response = web.json_response(index, headers=headers)
    response.content_type = OCI_INDEX
    return response
