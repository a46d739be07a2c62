"""`GET /v2/<name>/referrers/<digest>`: manifests whose subject is the digest, as an index."""

from __future__ import annotations

import json

from aiohttp import web

from ..oci import OCI_INDEX
from .context import Context
from .params import digest_param


async def list_referrers(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    subject = digest_param(ctx.params["digest"])
    descriptors = await ctx.store.referrers.descriptors(ctx.name, subject)
    artifact_type = request.query.get("artifactType")
    headers = {}
    if artifact_type is not None:
        descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
        headers["OCI-Filters-Applied"] = "artifactType"
    descriptors.sort(key=lambda d: d["digest"])
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    # Exactly the media type, without the `; charset=utf-8` json_response would add: the spec
    # (and its conformance suite) compare the Content-Type header as a whole.
    headers["Content-Type"] = OCI_INDEX
    return web.Response(body=json.dumps(index).encode(), headers=headers)
